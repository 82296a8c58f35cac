package relay

import (
	"log/slog"
	"strings"
	"sync"
)

// HeaderPrefix starts the name of every header the relay adds for itself
// (x-relay-lsn, x-relay-error, ...), on every broker.
const HeaderPrefix = "x-relay-"

// HeaderGuard keeps a headers column from repeating or forging a sink's
// own headers: a key a consumer could mistake for the relay's (the dedup
// key id, the event type, the position, a CloudEvents attribute) is left
// out, so the relay's header appears once, with the relay's value. On
// Kafka, whose headers may repeat, a forged id would otherwise reach the
// many consumers that read the first value of a header.
type HeaderGuard struct {
	own     func(key string) bool
	metrics interface{ HeaderDropped(key string) }
	log     *slog.Logger
	logged  sync.Map // keys already logged: once per key, not per row
}

// NewHeaderGuard returns a guard for a sink whose own headers are those
// own reports, and every name starting with HeaderPrefix.
func NewHeaderGuard(own func(key string) bool, m interface{ HeaderDropped(key string) }, log *slog.Logger) *HeaderGuard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &HeaderGuard{own: own, metrics: m, log: log}
}

// Drop reports whether the headers-column key of ev names one of the
// sink's own headers, and so must be left out of the message. It counts
// every such key and logs each the first time. A nil guard drops nothing.
func (g *HeaderGuard) Drop(ev *Event, key string) bool {
	if g == nil || !strings.HasPrefix(key, HeaderPrefix) && (g.own == nil || !g.own(key)) {
		return false
	}
	if g.metrics != nil {
		g.metrics.HeaderDropped(key)
	}
	if _, seen := g.logged.LoadOrStore(key, struct{}{}); !seen {
		g.log.Warn("a headers-column key repeats a header the relay sets itself; the relay's value is sent, the row's left out (logged once per key)",
			"header", key, "event_id", ev.ID)
	}
	return true
}
