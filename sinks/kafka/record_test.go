package kafka

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/relay"
)

// naiveRecord is record as written before it shared one buffer: the
// reference the faster one must match exactly.
func naiveRecord(ev *relay.Event, topic string, f format) (*kgo.Record, error) {
	if ev.DeadLetter != "" {
		f = format{}
	}
	fheaders, value, err := f.apply(ev)
	if err != nil {
		return nil, err
	}
	var headers []kgo.RecordHeader
	for _, h := range ev.Headers {
		if h.Key == relay.HeaderDestination && ev.DeadLetter == "" {
			continue
		}
		headers = append(headers, kgo.RecordHeader{Key: h.Key, Value: []byte(h.Value)})
	}
	headers = append(headers, fheaders...)
	headers = append(headers,
		kgo.RecordHeader{Key: "id", Value: []byte(ev.ID)},
		kgo.RecordHeader{Key: "event_type", Value: []byte(ev.EventType)},
		kgo.RecordHeader{Key: "aggregate_type", Value: []byte(ev.AggregateType)},
		kgo.RecordHeader{Key: "x-relay-lsn", Value: []byte(ev.CommitLSN.String())},
		kgo.RecordHeader{Key: "x-relay-index", Value: []byte(strconv.Itoa(ev.Index))},
	)
	if ev.Replay != "" {
		headers = append(headers, kgo.RecordHeader{Key: "x-relay-replay", Value: []byte(ev.Replay)})
	}
	if ev.DeadLetter != "" {
		headers = append(headers,
			kgo.RecordHeader{Key: "x-relay-error", Value: []byte(ev.DeadLetter)},
			kgo.RecordHeader{Key: "x-relay-table", Value: []byte(ev.Table)},
		)
		if ev.OmittedPayload > 0 {
			headers = append(headers, kgo.RecordHeader{Key: "x-relay-payload-omitted", Value: []byte(strconv.Itoa(ev.OmittedPayload) + " bytes")})
		}
	}
	return &kgo.Record{Topic: topic, Key: []byte(ev.AggregateID), Value: value, Headers: headers, Timestamp: ev.CreatedAt}, nil
}

func TestRecordMatchesTheEventExactly(t *testing.T) {
	base := func() *relay.Event {
		return &relay.Event{
			ID: "0190a6a0-1d2e-7f3a-8b4c-5d6e7f8a9b0c", Table: "public.outbox", AggregateType: "order", AggregateID: "421",
			EventType: "placed", Payload: []byte(`{"n": 1}`), ContentType: relay.ContentTypeJSON,
			Headers:   []relay.Header{{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
			CreatedAt: time.Date(2026, 11, 23, 12, 0, 0, 123_000_000, time.UTC), CommitLSN: 0x16B3748, Index: 7,
		}
	}
	many := base()
	for i := range 12 {
		many.Headers = append(many.Headers, relay.Header{Key: "h" + strconv.Itoa(i), Value: strconv.Itoa(i * 1000)})
	}
	dead := base()
	dead.DeadLetter = "routing key: row has no column"
	dest := base()
	dest.Headers = append(dest.Headers, relay.Header{Key: relay.HeaderDestination, Value: "elsewhere"})
	deadDest := base()
	deadDest.Headers, deadDest.DeadLetter = dest.Headers, "bad"
	empty := &relay.Event{}
	replayed := base()
	replayed.Replay, replayed.Index = "r-1", 123456
	omitted := base()
	omitted.DeadLetter, omitted.Payload, omitted.OmittedPayload = "too large", nil, 2<<20
	tests := []struct {
		name string
		ev   *relay.Event
		f    format
	}{
		{"typical", base(), format{}},
		{"more headers than the inline room", many, format{}},
		{"dead letter", dead, format{}},
		{"destination header dropped", dest, format{}},
		{"destination header kept in a dead letter", deadDest, format{}},
		{"empty event", empty, format{}},
		{"replayed, a large index", replayed, format{}},
		{"dead letter without its payload", omitted, format{}},
		{"cloudevents", base(), format{mode: relay.FormatCloudEvents, source: "/relay/test"}},
		{"cloudevents structured", base(), format{mode: relay.FormatCloudEventsStructured, source: "/relay/test"}},
	}
	for _, lsn := range []relay.LSN{0, 0x16B3748, 0xABCDEF01_23456789, 1<<64 - 1} {
		for _, tt := range tests {
			t.Run(tt.name+"/"+lsn.String(), func(t *testing.T) {
				tt.ev.CommitLSN = lsn
				got, gerr := record(tt.ev, "topic", tt.f)
				want, werr := naiveRecord(tt.ev, "topic", tt.f)
				if (gerr == nil) != (werr == nil) {
					t.Fatalf("error %v, want %v", gerr, werr)
				}
				if gerr != nil {
					return
				}
				if got.Topic != want.Topic || !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Value, want.Value) || !got.Timestamp.Equal(want.Timestamp) {
					t.Errorf("record %+v, want %+v", got, want)
				}
				if !slices.EqualFunc(got.Headers, want.Headers, func(a, b kgo.RecordHeader) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
					t.Errorf("headers %q, want %q", got.Headers, want.Headers)
				}
				// Values the sink makes share a buffer; appending to one
				// must not write into the next.
				for i := range got.Headers {
					if strings.HasPrefix(got.Headers[i].Key, cloudEventsPrefix) || got.Headers[i].Key == contentTypeHeader {
						continue // made by format.apply
					}
					if cap(got.Headers[i].Value) != len(got.Headers[i].Value) {
						t.Errorf("header %s has spare capacity", got.Headers[i].Key)
					}
				}
			})
		}
	}
}

// BenchmarkRecord is the sink's work to turn an event into a record.
func BenchmarkRecord(b *testing.B) {
	ev := &relay.Event{
		ID: "0190a6a0-1d2e-7f3a-8b4c-5d6e7f8a9b0c", Table: "public.outbox", AggregateType: "order", AggregateID: "421",
		EventType: "placed", Payload: []byte(`{"n": 1}`), ContentType: relay.ContentTypeJSON,
		Headers:   []relay.Header{{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
		CreatedAt: time.Now(), CommitLSN: 0x1A2B3C4D5E,
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := record(ev, "outbox.event.order", format{}); err != nil {
			b.Fatal(err)
		}
	}
}
