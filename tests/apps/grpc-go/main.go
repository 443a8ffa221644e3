// One hop of a gRPC test call chain in Go (grpc-go), the gRPC twin of
// tests/apps/go/hop.go and tests/apps/grpc_hop.py: any unary method
// `/lanes.Hop/<Name>` answers "<pod>" or "<pod> -> <answer of --next>",
// the leaf "<pod>(<request>)". Messages are raw bytes (a codec registered
// under the name "proto", so no .proto file and no generated code).
//
// A method whose name ends in "Stream" is server-streaming: the leaf
// answers three messages "<pod>(<request>)#<k>", a hop relays each message
// of its own streaming call as "<pod> -> <message>".
//
// The hop makes its calls through ONE client connection (every call of
// every lane multiplexed on it) with the method it was called with. It
// copies no metadata unless --copy-metadata names a key to copy.
//
// With --port given twice it serves both ports (the bench reaches one
// through tagger and the other directly). Built offline by the test harness (tests/src/goapps.rs) against
// Debian's golang-google-grpc-dev in GOPATH mode.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
)

// rawCodec passes messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	if b, ok := v.(*[]byte); ok {
		return *b, nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	if b, ok := v.(*[]byte); ok {
		*b = append((*b)[:0], data...)
		return nil
	}
	return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
}

// "proto" is what grpc-go asks for by default on both sides.
func (rawCodec) Name() string { return "proto" }

type keys []string

func (k *keys) String() string     { return strings.Join(*k, ",") }
func (k *keys) Set(v string) error { *k = append(*k, v); return nil }

type ports []int

func (p *ports) String() string { return fmt.Sprint(*p) }
func (p *ports) Set(v string) error {
	n, err := strconv.Atoi(v)
	*p = append(*p, n)
	return err
}

func main() {
	var listen ports
	flag.Var(&listen, "port", "port to serve on (repeatable; default 8080)")
	next := flag.String("next", "", "host:port of the next hop")
	var copied keys
	flag.Var(&copied, "copy-metadata", "a metadata key to copy onto the next call (repeatable)")
	flag.Parse()
	encoding.RegisterCodec(rawCodec{})
	name := os.Getenv("TAGGER_POD")
	if name == "" {
		name = "hop"
	}
	var conn *grpc.ClientConn
	if *next != "" {
		var err error
		// Dial is lazy: the connection opens at the first call.
		conn, err = grpc.Dial(*next, grpc.WithInsecure())
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			os.Exit(1)
		}
	}
	handler := func(_ interface{}, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		var request []byte
		if err := stream.RecvMsg(&request); err != nil {
			return err
		}
		if strings.HasSuffix(method, "Stream") {
			return serveStream(name, conn, method, copied, request, stream)
		}
		answer := name
		if conn == nil {
			answer += "(" + string(request) + ")"
		} else {
			ctx, cancel := context.WithTimeout(stream.Context(), 10*time.Second)
			defer cancel()
			in, _ := metadata.FromIncomingContext(stream.Context())
			for _, key := range copied {
				for _, v := range in.Get(key) {
					ctx = metadata.AppendToOutgoingContext(ctx, key, v)
				}
			}
			var reply []byte
			if err := conn.Invoke(ctx, method, &request, &reply); err != nil {
				answer += fmt.Sprintf(" -> ERROR(%v)", err)
			} else {
				answer += " -> " + string(reply)
			}
		}
		out := []byte(answer)
		return stream.SendMsg(&out)
	}
	if len(listen) == 0 {
		listen = ports{8080}
	}
	server := grpc.NewServer(grpc.UnknownServiceHandler(handler))
	failed := make(chan error)
	for _, port := range listen {
		listener, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			os.Exit(1)
		}
		go func() { failed <- server.Serve(listener) }()
	}
	fmt.Fprintln(os.Stderr, "serve:", <-failed)
	os.Exit(1)
}

// serveStream answers a server-streaming call (see the top of the file).
func serveStream(name string, conn *grpc.ClientConn, method string, copied keys, request []byte, stream grpc.ServerStream) error {
	if conn == nil {
		for k := 1; k <= 3; k++ {
			out := []byte(fmt.Sprintf("%s(%s)#%d", name, request, k))
			if err := stream.SendMsg(&out); err != nil {
				return err
			}
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(stream.Context(), 10*time.Second)
	defer cancel()
	in, _ := metadata.FromIncomingContext(stream.Context())
	for _, key := range copied {
		for _, v := range in.Get(key) {
			ctx = metadata.AppendToOutgoingContext(ctx, key, v)
		}
	}
	next, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err == nil {
		err = next.SendMsg(&request)
	}
	if err == nil {
		err = next.CloseSend()
	}
	for err == nil {
		var message []byte
		if err = next.RecvMsg(&message); err == nil {
			out := []byte(name + " -> " + string(message))
			err = stream.SendMsg(&out)
		}
	}
	if err == io.EOF {
		return nil
	}
	out := []byte(fmt.Sprintf("%s -> ERROR(%v)", name, err))
	return stream.SendMsg(&out)
}
