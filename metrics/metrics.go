// Package metrics holds the relay's Prometheus metrics. Every part of the
// relay records into one *Metrics; a nil *Metrics records nothing, so
// libraries and tests need not set one up.
//
// The names are a public contract: dashboards and alerts under deploy/
// use them, and a test checks that every name used there is exported here.
package metrics

import (
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relay-dev/relay/relay"
)

// The core reports through its own interface; Metrics is its one
// implementation.
var _ relay.Observer = (*Metrics)(nil)

// Metrics are the relay's collectors.
type Metrics struct {
	sink string

	published *prometheus.CounterVec
	// publishedBy caches published's counters by table and destination:
	// WithLabelValues hashes three labels under a lock for every event.
	// Written under publishedMu, copied on write; read without a lock.
	publishedBy     atomic.Pointer[map[[2]string]prometheus.Counter]
	publishedMu     sync.Mutex
	publishErrors   *prometheus.CounterVec
	retries         prometheus.Counter
	inFlight        prometheus.Gauge
	deadLettered    *prometheus.CounterVec
	confirmedLSN    prometheus.Gauge
	walEnd          prometheus.Gauge
	lagBytes        prometheus.Gauge
	retainedWAL     prometheus.Gauge
	safeWAL         prometheus.Gauge
	commitToAck     prometheus.Histogram
	transactions    prometheus.Counter
	splits          prometheus.Counter
	lastPublish     prometheus.Gauge
	leader          prometheus.Gauge
	heartbeats      prometheus.Counter
	blocked         prometheus.Gauge
	sessionRestarts prometheus.Counter
	headersDropped  *prometheus.CounterVec
}

// New registers the relay's collectors, and Go and process collectors,
// with reg. sink labels what this process publishes to.
func New(reg prometheus.Registerer, sink string) *Metrics {
	m := &Metrics{
		sink: sink,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_events_published_total",
			Help: "Events the broker confirmed, by sink, source table and destination (exchange or topic).",
		}, []string{"sink", "table", "destination"}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_publish_errors_total",
			Help: "Failed publishes, by sink, source table and reason (too_large, bad_row, permanent, transient, canceled).",
		}, []string{"sink", "table", "reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_publish_retries_total",
			Help: "Events published again: after a nack, a return, a lost connection or a session restart (RabbitMQ), or records the producer sent again after a retriable error (Kafka).",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_events_in_flight",
			Help: "Events handed to the broker and not yet confirmed.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_dead_lettered_total",
			Help: "Rows that could not be published and went to the dead-letter destination, by source table.",
		}, []string{"table"}),
		confirmedLSN: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_confirmed_lsn",
			Help: "Last LSN confirmed to PostgreSQL (flushed), as a number.",
		}),
		walEnd: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_server_wal_end_lsn",
			Help: "The server's WAL end as last reported on the replication connection, as a number.",
		}),
		lagBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_replication_lag_bytes",
			Help: "Server WAL end minus the confirmed LSN.",
		}),
		retainedWAL: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_slot_retained_wal_bytes",
			Help: "WAL the slot holds back (pg_current_wal_lsn() - restart_lsn, from pg_replication_slots).",
		}),
		safeWAL: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_slot_safe_wal_bytes",
			Help: "WAL PostgreSQL may still write before the slot passes max_slot_wal_keep_size and is invalidated (pg_replication_slots.safe_wal_size); -1 when max_slot_wal_keep_size is unlimited.",
		}),
		commitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_commit_to_ack_seconds",
			Help:    "Time from the source transaction's commit to the broker's acknowledgement of its event.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_transactions_total",
			Help: "Source transactions with outbox rows that were streamed.",
		}),
		splits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_transactions_split_total",
			Help: "Source transactions too large for one Kafka transaction (RELAY_KAFKA_MAX_TRANSACTION_EVENTS or the in-flight window) that read_committed consumers saw in parts.",
		}),
		lastPublish: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_last_publish_timestamp_seconds",
			Help: "Unix time of the last broker acknowledgement.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_leader",
			Help: "1 while this instance holds the leader lock and streams, 0 while it waits as a standby.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_heartbeats_total",
			Help: "Heartbeat messages written to the WAL (RELAY_HEARTBEAT_INTERVAL).",
		}),
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_blocked",
			Help: "1 while the stream is stopped at a row that cannot be published (see /readyz and the logs).",
		}),
		sessionRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_session_restarts_total",
			Help: "Replication sessions that ended with an error and were started again.",
		}),
		headersDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_headers_dropped_total",
			Help: "Headers-column keys left out of a message because they would repeat or forge a header the relay sets itself, by key.",
		}, []string{"header"}),
	}
	// Unknown until the leader reads it, and 0 would mean "about to be lost".
	m.safeWAL.Set(-1)
	reg.MustRegister(m.collectors()...)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.published, m.publishErrors, m.retries, m.inFlight, m.deadLettered,
		m.confirmedLSN, m.walEnd, m.lagBytes, m.retainedWAL, m.safeWAL, m.commitToAck,
		m.transactions, m.splits, m.lastPublish, m.leader, m.heartbeats, m.blocked,
		m.sessionRestarts, m.headersDropped,
	}
}

// Names returns the name of every relay_ metric, sorted; histograms also
// give their _bucket, _sum and _count series.
func Names() []string {
	m := New(prometheus.NewRegistry(), "")
	var names []string
	for _, c := range m.collectors() {
		ch := make(chan *prometheus.Desc, 4)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			// Desc has no accessor for its name; its String form is stable.
			s := d.String()
			_, rest, _ := strings.Cut(s, `fqName: "`)
			name, _, _ := strings.Cut(rest, `"`)
			names = append(names, name)
			if _, ok := c.(prometheus.Histogram); ok {
				names = append(names, name+"_bucket", name+"_sum", name+"_count")
			}
		}
	}
	sort.Strings(names)
	return names
}

// Published counts an event of table (relay.Event.Table) the broker
// confirmed, committed at commit.
func (m *Metrics) Published(table, destination string, commit time.Time) {
	if m == nil {
		return
	}
	m.publishedCounter(table, destination).Inc()
	now := time.Now()
	if !commit.IsZero() {
		m.commitToAck.Observe(max(now.Sub(commit).Seconds(), 0))
	}
	m.lastPublish.Set(float64(now.UnixNano()) / 1e9)
}

// publishedCounter returns the relay_events_published_total counter of
// table and destination.
func (m *Metrics) publishedCounter(table, destination string) prometheus.Counter {
	key := [2]string{table, destination}
	if by := m.publishedBy.Load(); by != nil {
		if c, ok := (*by)[key]; ok {
			return c
		}
	}
	m.publishedMu.Lock()
	defer m.publishedMu.Unlock()
	next := map[[2]string]prometheus.Counter{}
	if by := m.publishedBy.Load(); by != nil {
		for k, c := range *by {
			next[k] = c
		}
	}
	c, ok := next[key]
	if !ok {
		c = m.published.WithLabelValues(m.sink, table, destination)
		next[key] = c
		m.publishedBy.Store(&next)
	}
	return c
}

// reasons are the only values of relay_publish_errors_total's reason
// label: the core's.
var reasons = []string{relay.ReasonTooLarge, relay.ReasonBadRow, relay.ReasonPermanent, relay.ReasonTransient, relay.ReasonCanceled}

// PublishError counts a failed publish of an event of table; reason is one
// of the relay.Reason constants.
func (m *Metrics) PublishError(table, reason string) {
	if m == nil {
		return
	}
	m.publishErrors.WithLabelValues(m.sink, table, reason).Inc()
}

// Retried counts n events published again.
func (m *Metrics) Retried(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.retries.Add(float64(n))
}

// InFlight sets the events awaiting the broker's confirm.
func (m *Metrics) InFlight(n int) {
	if m == nil {
		return
	}
	m.inFlight.Set(float64(n))
}

// Tables starts the dead-letter and publish-error counts of each source
// table at 0. A series that appears only with its first event would show
// Prometheus no increase (it has no earlier sample), so an alert on it
// would miss the first of each table, and absent() could not tell a
// healthy relay from a missing one.
func (m *Metrics) Tables(tables ...string) {
	if m == nil {
		return
	}
	for _, t := range tables {
		m.deadLettered.WithLabelValues(t)
		for _, r := range reasons {
			m.publishErrors.WithLabelValues(m.sink, t, r)
		}
	}
}

// DeadLettered counts a row of table sent to the dead-letter destination.
func (m *Metrics) DeadLettered(table string) {
	if m == nil {
		return
	}
	m.deadLettered.WithLabelValues(table).Inc()
}

// Positions records the confirmed LSN and the server's WAL end.
func (m *Metrics) Positions(confirmed, walEnd uint64) {
	if m == nil {
		return
	}
	m.confirmedLSN.Set(float64(confirmed))
	if walEnd > 0 {
		m.walEnd.Set(float64(walEnd))
		if walEnd >= confirmed {
			m.lagBytes.Set(float64(walEnd - confirmed))
		} else {
			m.lagBytes.Set(0)
		}
	}
}

// RetainedWAL records the WAL the slot holds back.
func (m *Metrics) RetainedWAL(bytes int64) {
	if m == nil {
		return
	}
	m.retainedWAL.Set(float64(bytes))
}

// SafeWAL records what may still be written before the slot is
// invalidated; -1 for no limit.
func (m *Metrics) SafeWAL(bytes int64) {
	if m == nil {
		return
	}
	m.safeWAL.Set(float64(bytes))
}

// Transaction counts a streamed source transaction.
func (m *Metrics) Transaction() {
	if m == nil {
		return
	}
	m.transactions.Inc()
}

// TransactionSplit counts a source transaction whose events went out in
// more than one Kafka transaction.
func (m *Metrics) TransactionSplit() {
	if m == nil {
		return
	}
	m.splits.Inc()
}

// Leader records whether this instance streams.
func (m *Metrics) Leader(on bool) {
	if m == nil {
		return
	}
	m.leader.Set(b2f(on))
}

// Heartbeat counts a heartbeat written to the WAL.
func (m *Metrics) Heartbeat() {
	if m == nil {
		return
	}
	m.heartbeats.Inc()
}

// Blocked records whether the stream is stopped at a bad row.
func (m *Metrics) Blocked(on bool) {
	if m == nil {
		return
	}
	m.blocked.Set(b2f(on))
}

// SessionRestart counts a replication session started again after an error.
func (m *Metrics) SessionRestart() {
	if m == nil {
		return
	}
	m.sessionRestarts.Inc()
}

// HeaderDropped counts a headers-column key left out of a message because
// the relay sets that header itself. The keys are the relay's own header
// names, so the label's values are few.
func (m *Metrics) HeaderDropped(key string) {
	if m == nil {
		return
	}
	m.headersDropped.WithLabelValues(key).Inc()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
