//go:build pprof

package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// Built with -tags pprof (make bench-profile), the relay serves
// net/http/pprof on a loopback port of its own and names it on stderr, for
// profiling under load. The default build has no such endpoint and no
// setting for one.
func init() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprof:", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	fmt.Fprintf(os.Stderr, "pprof listening on http://%s\n", ln.Addr())
	go http.Serve(ln, mux)
}
