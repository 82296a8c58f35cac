package relay

import "time"

// Event is one committed outbox row on its way to a broker.
//
// An event's position in the stream is (CommitLSN, Index): rows of one
// transaction can share WAL positions (multi-row INSERT, COPY), so a per-row
// LSN would not identify a row across restarts.
type Event struct {
	// ID is the outbox row's id, the dedup key consumers use.
	ID string
	// Table is the schema-qualified source table, e.g. public.outbox.
	Table         string
	AggregateType string
	AggregateID   string
	EventType     string
	// Payload is the message body: the payload column's bytes, unchanged
	// (bytea decoded from its text form).
	Payload []byte
	// ContentType is application/json for json and jsonb payloads, empty otherwise.
	ContentType string
	// Headers are the keys of the headers column, sorted by key.
	Headers []Header
	// CreatedAt is the created_at column, or the commit time when the table has none.
	CreatedAt time.Time
	// CommitLSN is the LSN of the commit record of the row's transaction.
	CommitLSN LSN
	// CommitTime is when the source transaction committed.
	CommitTime time.Time
	// Index is the row's position within its transaction, from 0.
	Index int
	// Row holds every column of the row in text form, for routing templates.
	Row Row
	// To is the row's own destination, from the destination column; see
	// Route.
	To string

	// Invalid is set by the source on a row it could not read as an
	// event (a RowError); the relay dead-letters or stops at it.
	Invalid error
	// DeadLetter, when set, sends the event to the sink's dead-letter
	// destination with this reason.
	DeadLetter string
	// Destination is set by the sink: the exchange or topic the event went to.
	Destination string
	// Replay, when set, is the id of the `relay replay` that publishes
	// the row again; sinks send it in the x-relay-replay header, so that
	// consumers can tell a replayed message from the first delivery.
	Replay string
	// OmittedPayload is, in a dead letter, the size of the payload left
	// out because the broker refused the row for it; sinks say so in the
	// x-relay-payload-omitted header.
	OmittedPayload int

	seq  uint64
	size int
	done func(*Event, error)
	// of is, in a dead letter, the row it stands for; stage is how far a
	// row that cannot be published has gone (session.refused).
	of    *Event
	stage uint8
}

// Header is one key of the outbox headers column.
type Header struct {
	Key   string
	Value string
	// JSON marks a value that is not a JSON string in the headers column
	// (a number, true, false, null, an array or an object): Value is
	// then its compact JSON text, the same whichever path read the row.
	// A sink whose broker has typed headers sends it as the matching type
	// (RabbitMQ); the others send the text (Kafka).
	JSON bool
}

// Row is a decoded row: column names (shared by all rows of a relation) and
// their text values; a nil value is SQL NULL.
type Row struct {
	Names  []string
	Values [][]byte
}

// Get returns the text value of the named column.
func (r Row) Get(name string) (string, bool) {
	for i, n := range r.Names {
		if n == name && i < len(r.Values) && r.Values[i] != nil {
			return string(r.Values[i]), true
		}
	}
	return "", false
}

// Field resolves a template placeholder: the logical outbox fields first
// (id, aggregate_type, aggregate_id, event_type, table), then any column of
// the row by its own name.
func (e *Event) Field(name string) (string, bool) {
	switch name {
	case "id":
		return e.ID, true
	case "aggregate_type":
		return e.AggregateType, true
	case "aggregate_id":
		return e.AggregateID, true
	case "event_type":
		return e.EventType, true
	case "table":
		return e.Table, true
	}
	return e.Row.Get(name)
}

// Route is where the row asked to be sent, overriding the routing
// template: the destination column, else the headers column's
// "destination" key; empty when the row names none. What it means is the
// sink's to say (a topic; a routing key, exchange/routing-key or /queue).
func (e *Event) Route() string {
	if e.To != "" {
		return e.To
	}
	v, _ := e.Header(HeaderDestination)
	return v
}

// Done reports the broker's verdict on the event: nil once the broker has
// confirmed it, or the error that stops the stream. A sink calls it exactly
// once per published event, from any goroutine.
func (e *Event) Done(err error) {
	if e.done != nil {
		e.done(e, err)
	}
}

// OnDone installs the function Done calls. The core installs its own;
// tests of sinks install theirs.
func (e *Event) OnDone(f func(*Event, error)) { e.done = f }

// DeadLettered reports whether the row went, or is going, to the
// dead-letter destination instead of its own (in OnPublished: it went).
func (e *Event) DeadLettered() bool { return e.stage != stageNone }

// Size is the event's approximate memory footprint, for the in-flight byte budget.
func (e *Event) Size() int {
	n := len(e.ID) + len(e.Table) + len(e.AggregateType) + len(e.AggregateID) + len(e.EventType) + len(e.Payload) + len(e.To) + 256
	for _, h := range e.Headers {
		n += len(h.Key) + len(h.Value) + 32
	}
	for _, v := range e.Row.Values {
		n += len(v) + 24
	}
	return n
}

// ContentTypeJSON is the content type of json and jsonb payloads.
const ContentTypeJSON = "application/json"
