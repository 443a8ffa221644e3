// One hop of a test call chain in Go, standard library only: the Go row of
// SPEC section D. Like hop.py: GET /anything -> "<pod>" or
// "<pod> -> <answer of --next>"; the pod name comes from TAGGER_POD.
//
// The app copies NO header onto its calls, and makes them through one
// shared http.Client whose Transport pools keep-alive connections (each
// request is written by the connection's writeLoop goroutine, not the
// handler's). With --next given twice, the handler calls both at once from
// two goroutines it starts (sync.WaitGroup fan-out) and answers
// "<pod> -> [<first> | <second>]". With --late URL, a request whose query
// has late=1 also makes a call from a goroutine that outlives the request
// (after the answer is sent), to URL + "late".
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

type urls []string

func (u *urls) String() string     { return strings.Join(*u, ",") }
func (u *urls) Set(v string) error { *u = append(*u, v); return nil }

var client = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
}

// get fetches url + path (path without its leading slash) and returns the body.
func get(url, path string) string {
	resp, err := client.Get(url + strings.TrimPrefix(path, "/"))
	if err != nil {
		return fmt.Sprintf("ERROR(%v)", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Sprintf("ERROR(%v)", err)
	}
	return string(body)
}

func main() {
	port := flag.Int("port", 8080, "port to serve on")
	echoQuery := flag.Bool("echo-query", false, "append (<query>) to the pod name")
	late := flag.String("late", "", "URL a goroutine calls after the answer, for late=1")
	var next urls
	flag.Var(&next, "next", "URL of the next hop (twice: fan out)")
	flag.Parse()
	name := os.Getenv("TAGGER_POD")
	if name == "" {
		name = "hop"
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		answer := name
		if *echoQuery {
			answer += "(" + r.URL.RawQuery + ")"
		}
		path := r.URL.RequestURI()
		switch len(next) {
		case 0:
		case 1:
			answer += " -> " + get(next[0], path)
		default:
			answers := make([]string, len(next))
			var wg sync.WaitGroup
			for i, url := range next {
				wg.Add(1)
				go func(i int, url string) {
					defer wg.Done()
					answers[i] = get(url, path)
				}(i, url)
			}
			wg.Wait()
			answer += " -> [" + strings.Join(answers, " | ") + "]"
		}
		if *late != "" && r.URL.Query().Get("late") == "1" {
			done := make(chan struct{})
			go func() {
				<-done
				time.Sleep(50 * time.Millisecond)
				get(*late, "late")
			}()
			defer close(done)
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, answer)
	}
	http.HandleFunc("/", handler)
	if err := http.ListenAndServe(fmt.Sprintf("0.0.0.0:%d", *port), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
