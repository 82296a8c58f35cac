package relay

import (
	"context"
	"testing"
)

// benchSource sends n rows in transactions of txn rows, each
// transaction's mark with the next row, then waits until the core has
// published them all.
type benchSource struct {
	n, txn int
	events []Event
}

func (s *benchSource) Stream(ctx context.Context, out chan<- Item, pos *Progress) error {
	defer close(out)
	var mark LSN
	for i := 0; i < s.n; i++ {
		ev := &s.events[i%len(s.events)]
		*ev = Event{ID: "id", Table: "public.outbox", CommitLSN: LSN(i/s.txn + 1), Index: i % s.txn}
		select {
		case out <- Item{Mark: mark, Event: ev}:
		case <-ctx.Done():
			return ctx.Err()
		}
		mark = 0
		if (i+1)%s.txn == 0 {
			mark = LSN(i/s.txn + 2) // with the next row, as pgsource does
		}
	}
	select {
	case out <- Item{Mark: mark}:
	case <-ctx.Done():
		return ctx.Err()
	}
	return pos.WaitMark(ctx, mark)
}

// ackSink confirms every event from one goroutine, in order, as a broker's
// confirms arrive.
type ackSink struct{ acks chan *Event }

func (s *ackSink) Publish(_ context.Context, ev *Event) error {
	s.acks <- ev
	return nil
}

func (s *ackSink) Close(context.Context) error { return nil }

// BenchmarkCore is the core's cost per row: the source's send, admission,
// the sink's Done and the confirmed position, with a sink that confirms at
// once. Run it with GOMAXPROCS=1, as the relay runs.
func BenchmarkCore(b *testing.B) {
	for _, txn := range []int{1, 1000} {
		b.Run(map[int]string{1: "txn1", 1000: "txn1000"}[txn], func(b *testing.B) {
			sink := &ackSink{acks: make(chan *Event, 4096)}
			go func() {
				for ev := range sink.acks {
					ev.Done(nil)
				}
			}()
			defer close(sink.acks)
			src := &benchSource{n: b.N, txn: txn, events: make([]Event, 2*4096+2*itemBuffer)}
			r := New(Config{Source: src, Sink: sink})
			b.ReportAllocs()
			b.ResetTimer()
			if err := r.session(context.Background()); err != nil && err.Error() != "replication stream ended" {
				b.Fatal(err)
			}
		})
	}
}
