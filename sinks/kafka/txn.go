package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
// transactional id.
type checkpoint struct {
	LSN   string `json:"lsn"`
	Index int    `json:"index"`
}

func (p position) checkpoint() []byte {
	b, _ := json.Marshal(checkpoint{LSN: p.LSN.String(), Index: p.Index})
	return b
}

func parseCheckpoint(b []byte) (position, error) {
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return position{}, err
	}
	lsn, err := relay.ParseLSN(c.LSN)
	if err != nil {
		return position{}, err
	}
	return position{lsn, c.Index}, nil
}

// txn is the state of exactly-once producing. Publish and the linger timer
// both end transactions, so mu serialises them; Publish waits while a
// transaction commits, which is what bounds the stream to one open
// transaction, as Kafka requires of a transactional id.
type txn struct {
	s          *Sink
	id         string
	topic      string // checkpoint topic
	maxEvents  int
	linger     time.Duration
	readCommit func(ctx context.Context) (position, bool, error)

	failMu sync.Mutex
	failed error // a record of the open transaction failed; under failMu,
	// as promises run while Flush holds mu

	mu        sync.Mutex
	open      bool
	started   time.Time
	events    []*relay.Event // produced in the open transaction
	waiters   []*relay.Event // replays of events in the open transaction
	last      position       // last event produced, committed or not
	committed position       // covered by the last committed checkpoint
	stale     bool           // a commit's outcome is unknown: reread the checkpoint
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
	pos := positionOf(ev)
	switch {
	case !pos.after(t.committed):
		// Committed before (by this process or one before a crash).
		t.mu.Unlock()
		ev.Done(nil)
		return nil
	case !pos.after(t.last):
		// In the open transaction already: the relay replays the
		// stream after a session restart. It is done when that is.
		t.waiters = append(t.waiters, ev)
		t.mu.Unlock()
		return nil
	}
	if !t.open {
		if err := t.s.cl.BeginTransaction(); err != nil {
			t.mu.Unlock()
			return t.classify(fmt.Errorf("kafka: begin transaction: %w", err))
		}
		t.open, t.started = true, time.Now()
	}
	t.events = append(t.events, ev)
	t.last = pos
	t.s.cl.Produce(ctx, r, func(r *kgo.Record, err error) {
		if err == nil {
			return
		}
		t.failMu.Lock()
		if t.failed == nil {
			t.failed = produceError(ev, r.Topic, err)
		}
		t.failMu.Unlock()
	})
	var done []func()
	if len(t.events) >= t.maxEvents {
		done = t.endLocked(ctx)
	}
	t.mu.Unlock()
	for _, f := range done {
		f()
	}
	return nil
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
		return doneAll(events, nil)
	}
	t.last = t.committed
	return doneAll(events, err)
}

func (t *txn) commitLocked(ctx context.Context) error {
	cp := &kgo.Record{Topic: t.topic, Key: []byte(t.id), Value: t.last.checkpoint()}
	var cpErr error
	t.s.cl.Produce(ctx, cp, func(_ *kgo.Record, err error) { cpErr = err })
	flushErr := t.s.cl.Flush(ctx)
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
	if err := t.s.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		// The commit may or may not have happened; the abort below
		// fences whatever is still open, and the checkpoint in Kafka
		// tells which it was before the next event.
		t.stale = true
		return t.abortLocked(ctx, t.classify(fmt.Errorf("kafka: commit transaction: %w", err)))
	}
	return nil
}

// abortLocked aborts the open transaction and returns cause.
func (t *txn) abortLocked(ctx context.Context, cause error) error {
	if err := t.s.cl.AbortBufferedRecords(ctx); err != nil {
		t.stale = true
	}
	if err := t.s.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.stale = true
		t.s.log.Warn("aborting the Kafka transaction failed", "error", err)
	}
	return cause
}

// classify marks the errors after which this producer can never commit
// again as permanent: another relay took over the transactional id.
func (t *txn) classify(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
		return relay.Permanent(fmt.Errorf("%w (another relay with transactional id %q took over: only one may run)", err, t.id))
	}
	return err
}

func doneAll(events []*relay.Event, err error) []func() {
	fs := make([]func(), len(events))
	for i, ev := range events {
		fs[i] = func() { ev.Done(err) }
	}
	return fs
}

// reloadLocked rereads the committed checkpoint.
func (t *txn) reloadLocked(ctx context.Context) error {
	pos, ok, err := t.readCommit(ctx)
	if err != nil {
		return err
	}
	if ok {
		t.committed = pos
	}
	t.last = t.committed
	t.stale = false
	return nil
}

// run ends transactions that have lingered, so that a quiet outbox still
// gets its events committed promptly.
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
		if t.open && time.Since(t.started) >= t.linger {
			done = t.endLocked(life)
		}
		t.mu.Unlock()
		for _, f := range done {
			f()
		}
	}
}

// close commits the open transaction.
func (t *txn) close(ctx context.Context) {
	t.mu.Lock()
	done := t.endLocked(ctx)
	t.mu.Unlock()
	for _, f := range done {
		f()
	}
}

// readCheckpoint returns the last committed checkpoint of id in topic,
// reading every partition up to its last stable offset with a
// read_committed consumer. It must run after this producer's id was
// initialised, which aborts what an earlier instance left open, so the last
// stable offset is not held back by it.
func readCheckpoint(ctx context.Context, opts []kgo.Opt, admin *kgo.Client, topic, id string) (position, bool, error) {
	ends, err := stableEnds(ctx, admin, topic)
	if err != nil {
		return position{}, false, err
	}
	offsets := map[int32]kgo.Offset{}
	for p, end := range ends {
		if end > 0 {
			offsets[p] = kgo.NewOffset().AtStart()
		}
	}
	if len(offsets) == 0 {
		return position{}, false, nil
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Commit and abort markers take offsets too; seeing them is how
		// the reader knows it has reached the end.
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return position{}, false, err
	}
	defer cl.Close()
	var (
		found bool
		pos   position
		read  = map[int32]int64{} // next offset to read per partition
	)
	for {
		complete := true
		for p, end := range ends {
			if read[p] < end {
				complete = false
			}
		}
		if complete {
			return pos, found, nil
		}
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return position{}, false, fmt.Errorf("kafka: read checkpoint from %s: %w", topic, ctx.Err())
		}
		if err := fs.Err(); err != nil {
			return position{}, false, fmt.Errorf("kafka: read checkpoint from %s: %w", topic, err)
		}
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, r := range fp.Records {
				read[fp.Partition] = r.Offset + 1
				if r.Attrs.IsControl() || string(r.Key) != id {
					continue
				}
				p, err := parseCheckpoint(r.Value)
				if err != nil {
					continue // not ours after all; the key is the id
				}
				if !found || p.after(pos) {
					pos, found = p, true
				}
			}
		})
	}
}

// stableEnds returns each partition's last stable offset.
func stableEnds(ctx context.Context, admin *kgo.Client, topic string) (map[int32]int64, error) {
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
	req.IsolationLevel = 1 // read_committed: the last stable offset
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
