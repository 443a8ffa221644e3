// No net/http: the runtime probes exist, the net/http ones do not.
package main

import "os"

func main() {
	done := make(chan struct{})
	go func() { close(done) }()
	<-done
	os.Stdout.WriteString("hello\n")
}
