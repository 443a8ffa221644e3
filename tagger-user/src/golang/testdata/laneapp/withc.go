//go:build withc

// Built with -tags withc and CGO_ENABLED=1: a real cgo binary, linked by
// the external linker against libc.
package main

// static int tagger_extra(void) { return 1; }
import "C"

func extra() int { return int(C.tagger_extra()) }
