// A server as the Go propagation issue describes it: each request's handler
// calls UPSTREAM through one shared http.Client (pooled keep-alive
// connections, written by persistConn's writeLoop goroutine) and fans out
// to goroutines (go func + WaitGroup) that call it too.
package main

import (
	"io"
	"net/http"
	"os"
	"sync"
)

var client = &http.Client{}

func call(url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	return int(n)
}

func handler(w http.ResponseWriter, r *http.Request) {
	up := os.Getenv("UPSTREAM")
	total := call(up)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := call(up)
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "ok\n")
	_ = total + extra()
}

func main() {
	http.HandleFunc("/", handler)
	_ = http.ListenAndServe(os.Getenv("ADDR"), nil)
}
