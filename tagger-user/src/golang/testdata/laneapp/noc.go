//go:build !withc

package main

func extra() int { return 0 }
