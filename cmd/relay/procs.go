package main

import "runtime"

// oneProc runs the relay's Go code on one core unless GOMAXPROCS says
// otherwise: the walsender caps the stream below what one core handles,
// and with more cores the pipeline's handoffs become wake-ups of other
// threads and spinning on cores PostgreSQL and the broker need
// (docs/benchmarks.md, commit 1c6a5b8).
func oneProc(environ map[string]string) {
	if _, ok := environ["GOMAXPROCS"]; !ok {
		runtime.GOMAXPROCS(1)
	}
}
