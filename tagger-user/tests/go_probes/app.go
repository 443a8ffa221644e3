// The Go program of tests/go_probes.rs, on 127.0.0.1 only.
//
//	app backend        serves /back?id=N&sub=K, answering "id=N&sub=K"
//	app front ADDR     serves /front?id=N[&fan=1]: calls ADDR's /back once
//	                   through one shared http.Client (keep-alive pool), or
//	                   with fan=1 twice concurrently from two goroutines;
//	                   answers "ok N" when every answer echoes its call.
//
// Each prints its port on the first line of stdout.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	switch os.Args[1] {
	case "backend":
		panic(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.URL.RawQuery)
		})))
	case "front":
		backend := os.Args[2]
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		call := func(id string, sub int) bool {
			want := fmt.Sprintf("id=%s&sub=%d", id, sub)
			resp, err := client.Get("http://" + backend + "/back?" + want)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			return err == nil && string(body) == want
		}
		panic(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.URL.Query().Get("id")
			ok := true
			if r.URL.Query().Get("fan") == "1" {
				var wg sync.WaitGroup
				results := make([]bool, 2)
				for i := 0; i < 2; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						results[i] = call(id, i)
					}(i)
				}
				wg.Wait()
				ok = results[0] && results[1]
			} else {
				ok = call(id, 0)
			}
			if !ok {
				w.WriteHeader(500)
			}
			io.WriteString(w, "ok "+id)
		})))
	}
}
