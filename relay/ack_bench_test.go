package relay

import (
	"testing"
)

// BenchmarkTracker is the tracker's work per event in a drain: Add, a
// mark per transaction of txn events, and the sink's Done, confirmed in
// order from another goroutine as a broker's confirms are.
func BenchmarkTracker(b *testing.B) {
	for _, txn := range []int{1, 1000} {
		b.Run(map[int]string{1: "txn1", 1000: "txn1000"}[txn], func(b *testing.B) {
			const window = 4096
			tr := testTracker(window, 64<<20, 0)
			// Twice the window: an event is reused only after its Done.
			evs := make([]Event, 2*window)
			acks := make(chan *Event, window)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ev := range acks {
					ev.Done(nil)
				}
			}()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				ev := &evs[i%len(evs)]
				*ev = Event{ID: "0190a6a0-1d2e-7f3a-8b4c-5d6e7f8a9b0c", Payload: make([]byte, 0)}
				for !tr.Add(ev) {
					<-tr.Space()
				}
				i++
				if i%txn == 0 {
					tr.Mark(LSN(i))
				}
				acks <- ev
			}
			close(acks)
			<-done
		})
	}
}
