package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-dev/relay/metrics"
)

// fakeSource streams its events, one transaction each, then waits for the
// tracker to make everything safe or fail.
type fakeSource struct {
	events []*Event
	safe   chan LSN
}

func (s *fakeSource) Stream(ctx context.Context, out chan<- *Event, tr *Tracker) error {
	defer close(out)
	for _, ev := range s.events {
		for !tr.Add(ev) {
			select {
			case <-tr.Space():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		tr.Mark(ev.CommitLSN + 1)
		out <- ev
	}
	end := s.events[len(s.events)-1].CommitLSN + 1
	for {
		if tr.Safe() >= end {
			s.safe <- tr.Safe()
			<-ctx.Done()
			return ctx.Err()
		}
		select {
		case <-tr.Failed():
			return tr.Err()
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// fakeSink confirms every event, except that refuse decides, for each
// publish, whether the broker refuses it as a bad row; it records what it
// was given.
type fakeSink struct {
	refuse func(ev *Event) error
	mu     sync.Mutex
	got    []Event
}

func (s *fakeSink) Publish(_ context.Context, ev *Event) error {
	ev.Destination = "events"
	if ev.DeadLetter != "" {
		ev.Destination = "dead"
	}
	s.mu.Lock()
	s.got = append(s.got, *ev)
	s.mu.Unlock()
	go ev.Done(s.refuse(ev))
	return nil
}

func (s *fakeSink) Close(context.Context) error { return nil }

func (s *fakeSink) published() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.got...)
}

// TestARefusedDeadLetterGoesBare: a row the broker refuses is
// dead-lettered; when the broker refuses its dead letter too, a bare dead
// letter, without payload and headers and saying why, takes its place and
// the stream goes on; a refused bare dead letter stops the stream at the
// row.
func TestARefusedDeadLetterGoesBare(t *testing.T) {
	refused := func(ev *Event) error { return BadRow(ev, errors.New("the broker refuses it")) }
	tests := []struct {
		name string
		// refuse is the broker: nil accepts.
		refuse func(ev *Event) error
		// want are the dead letters of row "bad", by payload; "" a bare one.
		wantDeadLetters []string
		wantErr         string
	}{
		{
			name: "dead letter accepted",
			refuse: func(ev *Event) error {
				if ev.ID == "bad" && ev.DeadLetter == "" {
					return refused(ev)
				}
				return nil
			},
			wantDeadLetters: []string{"payload"},
		},
		{
			name: "dead letter refused, bare one accepted",
			refuse: func(ev *Event) error {
				if ev.ID == "bad" && len(ev.Payload) > 0 {
					return refused(ev)
				}
				return nil
			},
			wantDeadLetters: []string{"payload", ""},
		},
		{
			name: "bare one refused too",
			refuse: func(ev *Event) error {
				if ev.ID == "bad" {
					return refused(ev)
				}
				return nil
			},
			wantDeadLetters: []string{"payload", ""},
			wantErr:         "the broker refuses it",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := []*Event{
				{ID: "before", Payload: []byte("payload"), CommitLSN: 10},
				{ID: "bad", Payload: []byte("payload"), Headers: []Header{{Key: "h", Value: "v"}}, CommitLSN: 20},
				{ID: "after", Payload: []byte("payload"), CommitLSN: 30},
			}
			src := &fakeSource{events: evs, safe: make(chan LSN, 1)}
			sink := &fakeSink{refuse: tt.refuse}
			r := New(Config{Source: src, Sink: sink, DeadLetter: true, BlockedRetry: time.Hour})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()

			if tt.wantErr != "" {
				deadline := time.Now().Add(5 * time.Second)
				for r.Blocked() == nil {
					if time.Now().After(deadline) {
						t.Fatalf("the stream is not stopped at the row; published %v", sink.published())
					}
					time.Sleep(time.Millisecond)
				}
				if b := r.Blocked(); b.ID != "bad" || !strings.Contains(b.Err.Error(), tt.wantErr) {
					t.Errorf("blocked at %s: %v, want row bad: %s", b.ID, b.Err, tt.wantErr)
				}
			} else {
				select {
				case lsn := <-src.safe:
					if lsn != 31 {
						t.Errorf("safe at %d, want 31", lsn)
					}
				case <-ctx.Done():
					t.Fatalf("the stream did not get past the row; published %v", sink.published())
				}
			}
			cancel()
			<-done

			var deadLetters []string
			for _, ev := range sink.published() {
				if ev.ID != "bad" || ev.DeadLetter == "" {
					continue
				}
				deadLetters = append(deadLetters, string(ev.Payload))
				if len(ev.Payload) == 0 {
					if len(ev.Headers) != 0 || ev.OmittedPayload != len("payload") || !strings.Contains(ev.DeadLetter, "refused too") {
						t.Errorf("bare dead letter: headers %v, omitted %d, reason %q", ev.Headers, ev.OmittedPayload, ev.DeadLetter)
					}
				}
			}
			if fmt.Sprint(deadLetters) != fmt.Sprint(tt.wantDeadLetters) {
				t.Errorf("dead letters of row bad (by payload) %q, want %q", deadLetters, tt.wantDeadLetters)
			}
		})
	}
}

// TestADeadLetterCountsWhereItWent: a dead-lettered row is counted as
// published to the dead-letter destination, not to the destination it
// could not reach.
func TestADeadLetterCountsWhereItWent(t *testing.T) {
	evs := []*Event{
		{ID: "good", Table: "public.outbox", CommitLSN: 10},
		{ID: "bad", Table: "public.outbox", CommitLSN: 20},
	}
	src := &fakeSource{events: evs, safe: make(chan LSN, 1)}
	sink := &fakeSink{refuse: func(ev *Event) error {
		if ev.ID == "bad" && ev.DeadLetter == "" {
			return BadRow(ev, errors.New("no"))
		}
		return nil
	}}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	r := New(Config{Source: src, Sink: sink, DeadLetter: true, Metrics: m})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-src.safe:
	case <-ctx.Done():
		t.Fatal("the stream did not get past the bad row")
	}
	cancel()
	<-done
	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "relay_events_published_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "destination" {
					got[l.GetValue()] += s.GetCounter().GetValue()
				}
			}
		}
	}
	if got["events"] != 1 || got["dead"] != 1 {
		t.Errorf("published by destination %v, want events 1 (the good row) and dead 1 (the bad row's dead letter)", got)
	}
}
