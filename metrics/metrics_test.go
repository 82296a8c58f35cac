package metrics

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNamesListsTheContract(t *testing.T) {
	names := Names()
	for _, want := range []string{
		"relay_events_published_total", "relay_publish_errors_total", "relay_publish_retries_total",
		"relay_events_in_flight", "relay_dead_lettered_total", "relay_confirmed_lsn",
		"relay_server_wal_end_lsn", "relay_replication_lag_bytes", "relay_slot_retained_wal_bytes",
		"relay_commit_to_ack_seconds", "relay_commit_to_ack_seconds_bucket", "relay_transactions_total",
		"relay_transactions_split_total",
		"relay_last_publish_timestamp_seconds", "relay_leader",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() lacks %s; it has %v", want, names)
		}
	}
}

// TestNilMetricsRecordNothing calls every method of a nil *Metrics, found
// by reflection so that a method added later is covered too, and expects
// each to return without panicking: the package promises that a nil
// *Metrics records nothing, so that libraries and tests need not set one up.
func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	v := reflect.ValueOf(m)
	typ := v.Type()
	if typ.NumMethod() < 10 {
		t.Fatalf("*Metrics has %d exported methods; reflection found too few to be testing anything", typ.NumMethod())
	}
	for i := range typ.NumMethod() {
		method := typ.Method(i)
		t.Run(method.Name, func(t *testing.T) {
			fn := v.Method(i)
			in := make([]reflect.Value, 0, fn.Type().NumIn())
			for j := range fn.Type().NumIn() {
				if fn.Type().IsVariadic() && j == fn.Type().NumIn()-1 {
					break
				}
				in = append(in, reflect.Zero(fn.Type().In(j)))
			}
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("(*Metrics)(nil).%s panics: %v", method.Name, r)
				}
			}()
			fn.Call(in)
		})
	}
}

// TestCountersAreLabelledByTable: with several outbox tables, published
// events, errors and dead letters are counted per source table.
func TestCountersAreLabelledByTable(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, "rabbitmq")
	m.Tables("sales.outbox", "billing.outbox")
	m.Published("sales.outbox", "outbox", time.Now())
	m.Published("sales.outbox", "outbox", time.Now())
	m.Published("billing.outbox", "billing", time.Now())
	m.PublishError("billing.outbox", "bad_row")
	m.DeadLettered("billing.outbox")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			if s.GetCounter() == nil {
				continue
			}
			labels := []string{}
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			got[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = s.GetCounter().GetValue()
		}
	}
	for series, want := range map[string]float64{
		"relay_events_published_total{destination=outbox,sink=rabbitmq,table=sales.outbox}":    2,
		"relay_events_published_total{destination=billing,sink=rabbitmq,table=billing.outbox}": 1,
		"relay_publish_errors_total{reason=bad_row,sink=rabbitmq,table=billing.outbox}":        1,
		"relay_dead_lettered_total{table=billing.outbox}":                                      1,
		"relay_dead_lettered_total{table=sales.outbox}":                                        0,
		// Every reason of every table exists from the start, at 0.
		"relay_publish_errors_total{reason=too_large,sink=rabbitmq,table=sales.outbox}": 0,
		"relay_publish_errors_total{reason=bad_row,sink=rabbitmq,table=sales.outbox}":   0,
		"relay_publish_errors_total{reason=permanent,sink=rabbitmq,table=sales.outbox}": 0,
		"relay_publish_errors_total{reason=transient,sink=rabbitmq,table=sales.outbox}": 0,
		"relay_publish_errors_total{reason=canceled,sink=rabbitmq,table=sales.outbox}":  0,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v, want %v; have %v", series, got[series], want, got)
		}
	}
}
