package relay

import (
	"log/slog"
	"strconv"
	"strings"
	"sync"
)

// HeaderPrefix starts the name of every header the relay adds for itself
// (x-relay-lsn, x-relay-error, ...), on every broker.
const HeaderPrefix = "x-relay-"

// The relay's own headers, the same on every broker (OwnHeaders).
const (
	// HeaderLSN is the commit LSN of the row's transaction, e.g. 0/16B3748.
	HeaderLSN = "x-relay-lsn"
	// HeaderIndex is the row's index within its transaction, from 0; with
	// HeaderLSN the row's position, by which consumers group a
	// transaction's events.
	HeaderIndex = "x-relay-index"
	// HeaderReplay is the id of the relay replay that published the row
	// again.
	HeaderReplay = "x-relay-replay"
	// HeaderError, HeaderTable and HeaderPayloadOmitted are a dead
	// letter's: why the row could not be published, its table, and the
	// size of a payload left out.
	HeaderError          = "x-relay-error"
	HeaderTable          = "x-relay-table"
	HeaderPayloadOmitted = "x-relay-payload-omitted"
)

// OwnHeaders appends the relay's own headers of ev to dst, in the order
// every sink sends them, last: HeaderLSN, HeaderIndex (JSON, a number),
// HeaderReplay in a replayed message, and in a dead letter HeaderError,
// HeaderTable and HeaderPayloadOmitted. A sink only converts them into
// its client's type, so that every broker carries the same headers. The
// position's two values share one allocation: this runs for every event.
func OwnHeaders(dst []Header, ev *Event) []Header {
	var scratch [maxLSNLen + 20]byte
	b := AppendLSN(scratch[:0], ev.CommitLSN)
	n := len(b)
	b = strconv.AppendInt(b, int64(ev.Index), 10)
	pos := string(b)
	dst = append(dst,
		Header{Key: HeaderLSN, Value: pos[:n]},
		Header{Key: HeaderIndex, Value: pos[n:], JSON: true},
	)
	if ev.Replay != "" {
		dst = append(dst, Header{Key: HeaderReplay, Value: ev.Replay})
	}
	if ev.DeadLetter != "" {
		dst = append(dst,
			Header{Key: HeaderError, Value: ev.DeadLetter},
			Header{Key: HeaderTable, Value: ev.Table},
		)
		if ev.OmittedPayload > 0 {
			dst = append(dst, Header{Key: HeaderPayloadOmitted, Value: strconv.Itoa(ev.OmittedPayload) + " bytes"})
		}
	}
	return dst
}

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
