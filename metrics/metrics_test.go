package metrics

import (
	"slices"
	"testing"
	"time"
)

func TestNamesListsTheContract(t *testing.T) {
	names := Names()
	for _, want := range []string{
		"relay_events_published_total", "relay_publish_errors_total", "relay_publish_retries_total",
		"relay_events_in_flight", "relay_dead_lettered_total", "relay_confirmed_lsn",
		"relay_server_wal_end_lsn", "relay_replication_lag_bytes", "relay_slot_retained_wal_bytes",
		"relay_commit_to_ack_seconds", "relay_commit_to_ack_seconds_bucket", "relay_transactions_total",
		"relay_last_publish_timestamp_seconds", "relay_leader",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() lacks %s; it has %v", want, names)
		}
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.Published("x", time.Time{})
	m.PublishError("x")
	m.Positions(1, 2)
	m.Leader(true)
}
