package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkPublished is the metrics' cost per confirmed event.
func BenchmarkPublished(b *testing.B) {
	m := New(prometheus.NewRegistry(), "kafka")
	commit := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		m.Published("public.outbox", "outbox.event.order", commit)
	}
}
