package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/relay"
)

// Exactly-once mode. Events are produced inside Kafka transactions; each
// transaction also writes, to a compacted checkpoint topic, the stream
// position of its last event. A read_committed consumer therefore sees an
// event exactly when the checkpoint covering it is committed, and a relay
// that restarts (after a crash at any moment) reads the checkpoint and
// skips every event at or before it: those were committed once already,
// although the slot, confirmed only after the commit, may not show it.

// position orders events in the stream: rows of one transaction share its
// commit LSN and are told apart by their index within it.
type position struct {
	LSN   relay.LSN
	Index int
}

func positionOf(ev *relay.Event) position { return position{ev.CommitLSN, ev.Index} }

func (p position) after(q position) bool {
	return p.LSN > q.LSN || (p.LSN == q.LSN && p.Index > q.Index)
}

// checkpoint is the value written to the checkpoint topic, keyed by the
// transactional id. Owner names the relay process that wrote it: each one
// commits a checkpoint on start (its claim), which is how a fenced relay
// tells a takeover from a coordinator that merely bumped its epoch.
type checkpoint struct {
	LSN   string `json:"lsn"`
	Index int    `json:"index"`
	Owner string `json:"owner,omitempty"`
}

func (p position) checkpoint(owner string) []byte {
	b, _ := json.Marshal(checkpoint{LSN: p.LSN.String(), Index: p.Index, Owner: owner})
	return b
}

// parseCheckpoint reads a checkpoint. One a relay cannot have written (the
// LSN or the index missing, a negative index) is refused, so readCheckpoint
// passes over it: a missing index read as 0 would skip an event.
func parseCheckpoint(b []byte) (position, string, error) {
	var c struct {
		LSN   *string `json:"lsn"`
		Index *int    `json:"index"`
		Owner string  `json:"owner"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return position{}, "", err
	}
	if c.LSN == nil || c.Index == nil || *c.Index < 0 {
		return position{}, "", fmt.Errorf("checkpoint %q: want an lsn and an index from 0", b)
	}
	lsn, err := relay.ParseLSN(*c.LSN)
	if err != nil {
		return position{}, "", err
	}
	return position{lsn, *c.Index}, c.Owner, nil
}

// txn is the state of exactly-once producing. Publish, Boundary and the
// linger timer all end transactions, so mu serialises them; Publish waits
// while a transaction commits, which is what bounds the stream to one open
// transaction, as Kafka requires of a transactional id.
//
// A Kafka transaction ends only where a database transaction ends (the
// core's Boundary), so that a read_committed consumer sees each database
// transaction whole or not at all. It holds whole database transactions
// until it has target events or has lingered, or the stream is idle; one
// database transaction that reaches maxEvents on its own, or fills the
// relay's in-flight window (Stalled), is split there: the window cannot
// admit the rest until the part before is confirmed.
type txn struct {
	s          *Sink
	id         string
	owner      string // this process, in the checkpoints it writes
	topic      string // checkpoint topic
	maxEvents  int
	target     int
	linger     time.Duration
	split      func() // counts a database transaction split
	readCommit func(ctx context.Context) (position, string, bool, error)
	// newClient makes a transactional producer. The one in use, cl, is
	// replaced when the coordinator fenced it without another relay
	// taking over: kgo cannot recover a fenced producer.
	newClient func() (*kgo.Client, error)
	cl        *kgo.Client // under mu

	failMu sync.Mutex
	// failed is set when a record of the open transaction failed; under
	// failMu, as promises run while Flush holds mu.
	failed error
	// unsettled counts records whose promise has not run. Flush does not
	// wait for all of them: kgo fails a record it never buffered (outside
	// a transaction, client closed) in a promise of its own, and a commit
	// that did not wait for it would confirm an event that is not there.
	unsettled atomic.Int64

	mu      sync.Mutex
	open    bool
	started time.Time
	from    position // the open transaction's first event
	// gap: the transaction from gapFrom failed; nothing after gapFrom is
	// produced until the core replays it (a new session starts).
	gap       bool
	gapFrom   position
	events    []*relay.Event // produced in the open transaction
	waiters   []*relay.Event // replays of events in the open transaction
	last      position       // last event produced, committed or not
	committed position       // covered by the last committed checkpoint
	stale     bool           // a commit's outcome is unknown: reread the checkpoint

	// seen is the last event Publish was given, produced or not: a
	// boundary after it ends last's database transaction only when it is
	// last, not a replayed event before it.
	seen position
	// ended: last's database transaction has ended, so the open
	// transaction may commit.
	ended bool
	// stopping: the relay is shutting down (relay.Stopping).
	stopping bool
	// cut: the last commit may have ended inside the database
	// transaction at committed; parts counts the parts of the one at
	// splitLSN so far, once an event after a cut showed it was split.
	cut      bool
	splitLSN relay.LSN
	parts    int
}

// publish produces ev in the open transaction, beginning one if needed.
func (t *txn) publish(ctx context.Context, ev *relay.Event, r *kgo.Record) error {
	t.mu.Lock()
	if t.stale {
		if err := t.reloadLocked(ctx); err != nil {
			t.mu.Unlock()
			return err
		}
	}
	if t.stopping {
		// Nothing begun now could commit: the database transaction it
		// belongs to may never end in this session.
		t.mu.Unlock()
		ev.Done(errStopping)
		return nil
	}
	pos := positionOf(ev)
	t.seen = pos
	switch {
	case !pos.after(t.committed):
		// Committed before (by this process or one before a crash).
		t.mu.Unlock()
		ev.Done(nil)
		return nil
	case t.gap && pos.after(t.gapFrom):
		// A transaction before ev failed, and the core has not yet
		// heard: producing ev, and committing it, would confirm it
		// ahead of the failed events, which a replay then skips as
		// committed. It goes again after them.
		t.mu.Unlock()
		ev.Done(errAfterFailure)
		return nil
	case !pos.after(t.last) && !t.from.after(pos):
		// In the open transaction already: the relay replays the
		// stream after a session restart. It is done when that is.
		t.waiters = append(t.waiters, ev)
		t.mu.Unlock()
		return nil
	}
	t.gap = false // the replay is back at the failed transaction's first event
	var done []func()
	defer func() {
		for _, f := range done {
			f()
		}
	}()
	if t.open && !pos.after(t.last) {
		// Before the open transaction's first event and after the last
		// commit: a replay of events whose transaction failed, while
		// the open one holds later events of the failed session, which
		// went on publishing until it heard. Those go again after ev.
		done = t.abandonLocked(ctx, errors.New("kafka: a transaction before this one failed; the events after it are published again"))
		if t.stale {
			t.mu.Unlock()
			return errors.New("kafka: aborting the transaction of a failed session left its outcome unknown; the session starts again")
		}
	}
	if size, limit := recordSize(r), t.s.batchMax(r.Topic); size > int(limit) {
		// Failing in the transaction would abort its other events
		// with it, and the replay would meet the row again.
		t.mu.Unlock()
		return relay.BadRow(ev, fmt.Errorf("%w: a record of about %d bytes exceeds the max.message.bytes of topic %s (%d)", relay.ErrTooLarge, size, r.Topic, limit))
	}
	if pos.LSN != t.last.LSN {
		// Events come in commit order: last's transaction is over. The
		// core said so already (Boundary), which is where a transaction
		// commits: committing here, before ev, would produce ev into
		// the next transaction before the core heard that this one
		// failed, and a replay would take the failed events for ev's
		// companions.
		t.endedLocked()
	}
	if t.cut {
		t.cut = false
		if pos.LSN == t.committed.LSN {
			if t.splitLSN != pos.LSN {
				t.splitLSN, t.parts = pos.LSN, 1
			}
			t.parts++
		}
	}
	if !t.open {
		if err := t.cl.BeginTransaction(); err != nil {
			err = t.replaceLocked(ctx, t.classify(fmt.Errorf("kafka: begin transaction: %w", err)))
			t.mu.Unlock()
			return err
		}
		t.open, t.started, t.from = true, time.Now(), pos
	}
	if err := t.s.acquire(ctx); err != nil {
		t.mu.Unlock()
		return err
	}
	t.events = append(t.events, ev)
	t.last = pos
	t.ended = false
	t.unsettled.Add(1)
	t.cl.Produce(t.s.life, r, func(r *kgo.Record, err error) {
		defer t.unsettled.Add(-1)
		t.s.release()
		if err == nil {
			return
		}
		t.failMu.Lock()
		if t.failed == nil {
			t.failed = txnProduceError(ev, r.Topic, err)
		}
		t.failMu.Unlock()
	})
	if len(t.events) >= t.maxEvents {
		done = append(done, t.endLocked(ctx)...)
	}
	t.mu.Unlock()
	return nil
}

// abandonLocked aborts the open transaction for cause and returns the
// Done calls of its events.
func (t *txn) abandonLocked(ctx context.Context, cause error) []func() {
	t.open = false
	events := append(t.events, t.waiters...)
	t.events, t.waiters = nil, nil
	err := t.abortLocked(ctx, cause)
	t.failMu.Lock()
	t.failed = nil // its records' failures are this abort's
	t.failMu.Unlock()
	t.last = t.committed
	return doneAll(events, err)
}

// boundary is relay.BoundarySink's Boundary: see txn.
func (t *txn) boundary(ctx context.Context, b relay.Boundary) {
	t.mu.Lock()
	if b == relay.Stopping {
		t.stopping = true
		done := t.stopLocked(ctx)
		t.mu.Unlock()
		for _, f := range done {
			f()
		}
		return
	}
	if b != relay.Stalled && t.seen == t.last {
		t.endedLocked()
	}
	var done []func()
	switch {
	case !t.open:
	case b == relay.Stalled, t.ended && (b == relay.Idle || t.due()):
		done = t.endLocked(ctx)
	}
	t.mu.Unlock()
	for _, f := range done {
		f()
	}
}

// due reports whether the open transaction, at a boundary, should commit
// rather than take in the next database transaction.
func (t *txn) due() bool {
	return len(t.events) >= t.target || time.Since(t.started) >= t.linger
}

// endedLocked records that last's database transaction has ended, and
// reports it if it was split.
func (t *txn) endedLocked() {
	t.ended, t.cut = true, false
	if t.parts > 0 && t.splitLSN == t.last.LSN {
		t.s.log.Info("a database transaction was too large for one Kafka transaction; read_committed consumers saw it in parts",
			"commit_lsn", t.splitLSN.String(), "parts", t.parts, "max_transaction_events", t.maxEvents)
		if t.split != nil {
			t.split()
		}
	}
	t.parts = 0
}

// endLocked commits the open transaction together with its checkpoint, or
// aborts it if a record failed, and returns the Done calls to make once mu
// is released.
func (t *txn) endLocked(ctx context.Context) []func() {
	if !t.open {
		return nil
	}
	t.open = false
	events := append(t.events, t.waiters...)
	t.events, t.waiters = nil, nil

	err := t.commitLocked(ctx)
	if err == nil {
		t.committed = t.last
		t.cut = !t.ended
		return doneAll(events, nil)
	}
	t.last = t.committed
	t.gap, t.gapFrom = true, t.from
	return doneAll(events, err)
}

// stopLocked ends the open transaction for a relay that stops: commits it
// if it ends where a database transaction ends, else aborts it, since the
// rest of that database transaction will not come. It returns the Done
// calls to make once mu is released.
func (t *txn) stopLocked(ctx context.Context) []func() {
	if t.open && !t.ended {
		return t.abandonLocked(ctx, errStopping)
	}
	return t.endLocked(ctx)
}

// errStopping fails the events of a Kafka transaction the relay ended
// inside a database transaction because it is shutting down, and those it
// is handed afterwards.
var errStopping = errors.New("kafka: the relay is stopping inside a database transaction; its Kafka transaction is aborted and published again on restart")

// errAfterFailure fails an event that came after a failed transaction and
// before the replay of its events.
var errAfterFailure = errors.New("kafka: a transaction before this event failed; it is published again after that transaction's events")

func (t *txn) commitLocked(ctx context.Context) error {
	cp := &kgo.Record{Topic: t.topic, Key: []byte(t.id), Value: t.last.checkpoint(t.owner)}
	var cpErr error
	t.unsettled.Add(1)
	t.cl.Produce(t.s.life, cp, func(_ *kgo.Record, err error) {
		cpErr = err
		t.unsettled.Add(-1)
	})
	flushErr := t.cl.Flush(ctx)
	if flushErr == nil {
		flushErr = t.settle(ctx)
	}
	t.failMu.Lock()
	failed := t.failed
	t.failed = nil
	t.failMu.Unlock()
	if failed != nil {
		return t.abortLocked(ctx, t.classify(failed))
	}
	if flushErr != nil {
		return t.abortLocked(ctx, fmt.Errorf("kafka: flush transaction: %w", flushErr))
	}
	if cpErr != nil {
		return t.abortLocked(ctx, t.classify(fmt.Errorf("kafka: write checkpoint to %s: %w", t.topic, cpErr)))
	}
	if err := t.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		// The commit may or may not have happened; the abort below
		// fences whatever is still open, and the checkpoint in Kafka
		// tells which it was before the next event.
		t.stale = true
		return t.abortLocked(ctx, t.classify(fmt.Errorf("kafka: commit transaction: %w", err)))
	}
	return nil
}

// settle waits until every record produced has its outcome.
func (t *txn) settle(ctx context.Context) error {
	for t.unsettled.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// abortLocked aborts the open transaction and returns cause.
func (t *txn) abortLocked(ctx context.Context, cause error) error {
	if err := t.cl.AbortBufferedRecords(ctx); err != nil {
		t.stale = true
	}
	if err := t.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.stale = true
		// A produce with a stale epoch fails with InvalidProducerEpoch
		// whatever bumped it; the coordinator's answer to the abort is
		// more telling. A producer whose abort failed otherwise (a
		// broker restarted mid-transaction) can begin no transaction
		// again: it is replaced too.
		return t.replaceLocked(ctx, fmt.Errorf("kafka: abort transaction after %v: %w", cause, err))
	}
	return t.fencedLocked(ctx, cause)
}

// fencedLocked handles err if the coordinator fenced this producer. It
// does so when another relay initialised the transactional id, and also
// when it aborted a transaction that outlived its timeout, for instance
// across a broker restart. The checkpoint tells them apart: a relay that
// takes over commits a claim as soon as it starts. Fenced by another
// relay, this one stops for good; otherwise it starts a new producer,
// which the coordinator gives the next epoch, and goes on.
func (t *txn) fencedLocked(ctx context.Context, err error) error {
	if !errors.Is(err, kerr.ProducerFenced) {
		return err
	}
	return t.replaceLocked(ctx, err)
}

// replaceLocked starts a new producer after err left this one unusable,
// unless another relay took the transactional id over: then err is
// permanent. If the new producer cannot start (the broker is still down),
// the next transaction's begin fails and tries again.
func (t *txn) replaceLocked(ctx context.Context, err error) error {
	if relay.IsPermanent(err) {
		return err
	}
	t.stale = true
	_, owner, _, rerr := t.readCommit(ctx)
	if rerr != nil {
		return fmt.Errorf("%w (and reading the checkpoint to tell whether another relay took over failed: %v)", err, rerr)
	}
	if owner != t.owner {
		return relay.Permanent(fmt.Errorf("%w (another relay with transactional id %q took over: only one may run; the checkpoint's owner is %s)", err, t.id, owner))
	}
	cl, nerr := t.newClient()
	if nerr == nil {
		if _, _, nerr = cl.ProducerID(ctx); nerr != nil {
			cl.Close()
		}
	}
	if nerr != nil {
		return fmt.Errorf("%w (and starting a new producer failed: %v)", err, nerr)
	}
	t.cl.Close()
	t.cl = cl
	t.s.log.Warn("this producer can no longer run transactions (fenced by the coordinator without another relay taking over, or its abort failed: a transaction timed out, a broker restarted?); continuing with a new producer", "error", err)
	return err
}

// classify marks the errors after which this producer can never commit
// again as permanent. Fencing is not one of them, see fencedLocked;
// neither is InvalidProducerEpoch, which kgo recovers from after an abort.
func (t *txn) classify(err error) error {
	if errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
		return relay.Permanent(err)
	}
	return err
}

// txnProduceError classifies a record that failed inside a transaction.
// The abort undoes the transaction, and the next session produces its
// events again, so unlike outside one (produceError) only what no retry
// changes is final: the row's own fault, and authorization. Sequence and
// epoch errors after a broker restart are neither.
func txnProduceError(ev *relay.Event, topic string, err error) error {
	final := produceError(ev, topic, err)
	if _, bad := relay.AsBadRow(final); bad || errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.TransactionalIDAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) {
		return final
	}
	return fmt.Errorf("kafka: event %s (%d bytes) to topic %s: %w", ev.ID, len(ev.Payload), topic, err)
}

// claimLocked commits the committed position again under this process's
// name, so that a relay running before this one knows, once fenced, that
// it was replaced.
func (t *txn) claimLocked(ctx context.Context) error {
	if err := t.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("kafka: begin transaction: %w", err)
	}
	t.last = t.committed
	return t.commitLocked(ctx)
}

// doneAll returns the Done calls of events that ended with err. A row at
// fault is the only one to get a row error; the others were only aborted
// with it, and are published again.
func doneAll(events []*relay.Event, err error) []func() {
	fs := make([]func(), len(events))
	re, bad := relay.AsBadRow(err)
	for i, ev := range events {
		evErr := err
		if bad && (ev.CommitLSN != re.LSN || ev.Index != re.Index) {
			evErr = fmt.Errorf("kafka: transaction aborted with %s", re.Row())
		}
		fs[i] = func() { ev.Done(evErr) }
	}
	return fs
}

// recordSize overestimates the bytes r takes in a record batch.
func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + 128 // batch header and varints
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 10
	}
	return n
}

// reloadLocked rereads the committed checkpoint.
func (t *txn) reloadLocked(ctx context.Context) error {
	pos, _, ok, err := t.readCommit(ctx)
	if err != nil {
		return err
	}
	if ok {
		t.committed = pos
	}
	if t.gap && !t.gapFrom.after(t.committed) {
		t.gap = false // the commit whose outcome was unknown happened
	}
	t.last = t.committed
	t.stale = false
	return nil
}

// run ends transactions that have lingered at a database transaction's
// end, so that a quiet outbox still gets its events committed promptly
// when the core's Idle did not come (a source that stopped).
func (t *txn) run(life context.Context) {
	tick := time.NewTicker(max(t.linger/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-tick.C:
		}
		t.mu.Lock()
		var done []func()
		if t.open && t.ended && time.Since(t.started) >= t.linger {
			done = t.endLocked(life)
		}
		t.mu.Unlock()
		for _, f := range done {
			f()
		}
	}
}

// close commits the open transaction and closes the producer; one that
// ends inside a database transaction is aborted instead, so that no
// consumer sees part of it: a restart publishes it again.
func (t *txn) close(ctx context.Context) {
	t.mu.Lock()
	done := t.stopLocked(ctx)
	t.cl.Close()
	t.mu.Unlock()
	for _, f := range done {
		f()
	}
}

// readCheckpoint returns the last committed checkpoint of id in topic. It
// must run after this producer's id was initialised, which aborts what an
// earlier instance left open.
//
// It reads every partition to its high watermark read_uncommitted, with
// control records, and applies each transaction's checkpoints at its commit
// marker: a read_committed consumer is sent nothing for aborted records, so
// it cannot tell when it has reached the end (docs/design.md).
func readCheckpoint(ctx context.Context, opts []kgo.Opt, admin *kgo.Client, topic, id string) (pos position, owner string, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, checkpointReadTimeout)
	defer cancel()
	ends, err := endOffsets(ctx, admin, topic)
	if err != nil {
		return position{}, "", false, err
	}
	offsets := map[int32]kgo.Offset{}
	for p, end := range ends {
		if end > 0 {
			offsets[p] = kgo.NewOffset().AtStart()
		}
	}
	if len(offsets) == 0 {
		return position{}, "", false, nil
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadUncommitted()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return position{}, "", false, err
	}
	defer cl.Close()
	type written struct {
		pos   position
		owner string
	}
	type open struct {
		epoch int16
		cps   []written
	}
	var (
		read    = map[int32]int64{} // next offset to read per partition
		pending = map[int64]*open{} // checkpoints of open transactions by producer id
	)
	// Commits are in the order producers were fenced, so the last one
	// committed is the latest, and its owner the current one.
	apply := func(w written) {
		pos, owner, found = w.pos, w.owner, true
	}
	for {
		complete := true
		for p, end := range ends {
			if read[p] < end {
				complete = false
			}
		}
		if complete {
			return pos, owner, found, nil
		}
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return position{}, "", false, fmt.Errorf("kafka: read checkpoint from %s: %w", topic, ctx.Err())
		}
		if err := fs.Err(); err != nil {
			return position{}, "", false, fmt.Errorf("kafka: read checkpoint from %s: %w", topic, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			read[r.Partition] = r.Offset + 1
			switch {
			case r.Attrs.IsControl():
				// The key is a version and a type: 0 abort, 1 commit.
				if o := pending[r.ProducerID]; o != nil && len(r.Key) >= 4 && r.Key[3] == 1 {
					for _, w := range o.cps {
						apply(w)
					}
				}
				delete(pending, r.ProducerID)
			case string(r.Key) != id:
			default:
				p, o, err := parseCheckpoint(r.Value)
				if err != nil {
					return // not ours after all; the key is the id
				}
				if r.Attrs.IsTransactional() {
					// A producer's next epoch ends its last
					// transaction: one without a marker was never
					// committed (a broker that lost it).
					op := pending[r.ProducerID]
					if op == nil || op.epoch != r.ProducerEpoch {
						op = &open{epoch: r.ProducerEpoch}
						pending[r.ProducerID] = op
					}
					op.cps = append(op.cps, written{p, o})
				} else {
					apply(written{p, o})
				}
			}
		})
	}
}

// checkpointReadTimeout bounds reading the checkpoint topic; a compacted
// topic with one key per relay is small.
const checkpointReadTimeout = time.Minute

// endOffsets returns each partition's high watermark.
func endOffsets(ctx context.Context, admin *kgo.Client, topic string) (map[int32]int64, error) {
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mresp, err := meta.RequestWith(ctx, admin)
	if err != nil {
		return nil, fmt.Errorf("kafka: metadata of %s: %w", topic, err)
	}
	if len(mresp.Topics) != 1 {
		return nil, fmt.Errorf("kafka: metadata of %s: %d topics", topic, len(mresp.Topics))
	}
	if err := kerr.ErrorForCode(mresp.Topics[0].ErrorCode); err != nil {
		return nil, fmt.Errorf("kafka: metadata of %s: %w", topic, err)
	}
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for _, p := range mresp.Topics[0].Partitions {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p.Partition
		rp.Timestamp = -1 // the end
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	ends := map[int32]int64{}
	for _, shard := range admin.RequestSharded(ctx, req) {
		if shard.Err != nil {
			return nil, fmt.Errorf("kafka: end offsets of %s: %w", topic, shard.Err)
		}
		for _, t := range shard.Resp.(*kmsg.ListOffsetsResponse).Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					return nil, fmt.Errorf("kafka: end offset of %s/%d: %w", topic, p.Partition, err)
				}
				ends[p.Partition] = p.Offset
			}
		}
	}
	return ends, nil
}
