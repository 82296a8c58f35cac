package main

import "runtime"

// oneProc runs the relay's Go code on one core unless GOMAXPROCS says
// otherwise. The relay is a pipeline of a few goroutines handing each
// event on (source, publisher, the broker client's writer and reader), fed
// by a single-threaded walsender whose decoding caps the stream well below
// what one core of the relay handles. With more cores the handoffs become
// wake-ups of other threads, and the scheduler spins looking for work on
// cores PostgreSQL and the broker need. Measured on two cores shared with
// both (make bench, docs/benchmarks.md): the same drain rate for less CPU,
// and live latency at 1k and 3k events/s several times lower.
func oneProc(environ map[string]string) {
	if _, ok := environ["GOMAXPROCS"]; !ok {
		runtime.GOMAXPROCS(1)
	}
}
