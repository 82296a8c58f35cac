package kafka

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// resends counts the records the producer writes to a broker a second time.
// kgo retries batches on its own and has no hook that fires on a retry, so
// the sink dials its own connections and reads the batch headers of each
// produce request: a batch whose idempotent sequence is below what was
// already written to its partition is a resend (docs/design.md). Records
// sent again under a new producer id or epoch look new and are not counted.
type resends struct {
	count func(int) // metrics.Metrics.Retried

	mu   sync.Mutex
	next map[sequenced]*sequence
}

// sequenced is what the producer numbers records within.
type sequenced struct {
	producer  int64
	topic     string   // produce v0-12
	topicID   [16]byte // produce v13+
	partition int32
}

type sequence struct {
	epoch int16
	end   int32 // the sequence after the last record written
}

// dialer dials like kgo's default dialer (with tlsCfg, like
// kgo.DialTLSConfig), counting resends on every connection when count is
// set.
func dialer(tlsCfg *tls.Config, count func(int)) func(ctx context.Context, network, host string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	var r *resends
	if count != nil {
		r = &resends{count: count, next: map[sequenced]*sequence{}}
	}
	return func(ctx context.Context, network, host string) (net.Conn, error) {
		var conn net.Conn
		var err error
		if tlsCfg == nil {
			conn, err = d.DialContext(ctx, network, host)
		} else {
			c := tlsCfg.Clone()
			if c.ServerName == "" {
				server, _, err := net.SplitHostPort(host)
				if err != nil {
					return nil, fmt.Errorf("dial %s: %w", host, err)
				}
				c.ServerName = server
			}
			conn, err = (&tls.Dialer{NetDialer: d, Config: c}).DialContext(ctx, network, host)
		}
		if err != nil || r == nil {
			return conn, err
		}
		return &countingConn{Conn: conn, r: r}, nil
	}
}

// countingConn reads the produce requests written on a connection, after
// the TLS layer, where they are plain Kafka frames.
type countingConn struct {
	net.Conn
	r *resends
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	// A request not written whole did not reach the broker; its retry
	// is then the first copy the broker sees.
	if n == len(p) {
		if again := c.r.scan(p); again > 0 {
			c.r.count(again)
		}
	}
	return n, err
}

// scan returns how many records of the produce request in frame were
// written before. kgo writes each request with one Write; anything else
// (another request, a frame split across writes) is not counted.
func (r *resends) scan(frame []byte) int {
	b := kbin.Reader{Src: frame}
	if size := b.Int32(); int(size) != len(b.Src) || b.Int16() != kmsg.Produce.Int16() {
		return 0
	}
	version := b.Int16()
	b.Int32() // correlation id
	if n := b.Int16(); n > 0 {
		b.Span(int(n)) // client id
	}
	flexible := version >= 9
	if flexible {
		skipTags(&b)
	}
	if version >= 3 { // transactional id
		if flexible {
			b.UnsafeCompactNullableString()
		} else {
			b.UnsafeNullableString()
		}
	}
	b.Int16() // acks
	b.Int32() // timeout
	again := 0
	for range arrayLen(&b, flexible) {
		var k sequenced
		if version >= 13 {
			k.topicID = b.Uuid()
		} else if flexible {
			k.topic = b.UnsafeCompactString()
		} else {
			k.topic = b.UnsafeString()
		}
		for range arrayLen(&b, flexible) {
			k.partition = b.Int32()
			var records []byte
			if flexible {
				records = b.CompactNullableBytes()
			} else {
				records = b.NullableBytes()
			}
			if flexible {
				skipTags(&b)
			}
			if !b.Ok() {
				return again
			}
			again += r.batches(k, records)
		}
		if flexible {
			skipTags(&b)
		}
	}
	return again
}

// batches records the record batches of one partition and returns how many
// of their records were written before.
func (r *resends) batches(k sequenced, records []byte) int {
	// The v2 record batch header, 61 bytes: base offset (8), length (4),
	// leader epoch (4), magic (1), crc (4), attributes (2), last offset
	// delta (4), first and max timestamp (8+8), producer id (8), producer
	// epoch (2), base sequence (4), record count (4).
	const header = 61
	again := 0
	for len(records) >= header {
		total := 12 + int(int32(binary.BigEndian.Uint32(records[8:12])))
		if total < header || total > len(records) || records[16] != 2 {
			return again
		}
		k.producer = int64(binary.BigEndian.Uint64(records[43:51]))
		epoch := int16(binary.BigEndian.Uint16(records[51:53]))
		seq := int32(binary.BigEndian.Uint32(records[53:57]))
		n := int32(binary.BigEndian.Uint32(records[57:61]))
		records = records[total:]
		if k.producer < 0 || seq < 0 || n <= 0 {
			continue // not idempotent: no numbers to go by
		}
		again += r.written(k, epoch, seq, n)
	}
	return again
}

// written records that records seq to seq+n-1 of k were written and
// returns how many of them had been written before.
func (r *resends) written(k sequenced, epoch int16, seq, n int32) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := addSequence(seq, n)
	// Entries are updated in place: storing k again would keep its topic,
	// which points into a buffer kgo reuses.
	last := r.next[k]
	if last == nil {
		k.topic = strings.Clone(k.topic)
		r.next[k] = &sequence{epoch: epoch, end: end}
		return 0
	}
	if last.epoch != epoch { // a new epoch numbers from 0 again
		*last = sequence{epoch: epoch, end: end}
		return 0
	}
	// Sequences wrap from MaxInt32 to 0. A batch starting at most half
	// the space before the end written so far repeats records; one
	// further back follows a gap and is written for the first time.
	behind := int64(last.end) - int64(seq)
	if behind < 0 {
		behind += math.MaxInt32 + 1
	}
	switch {
	case behind == 0 || behind > math.MaxInt32/2:
		last.end = end
		return 0
	case behind < int64(n):
		last.end = end
		return int(behind)
	}
	return int(n)
}

// addSequence is seq+n in Kafka's wrapping sequence space.
func addSequence(seq, n int32) int32 {
	if seq > math.MaxInt32-n {
		return n - (math.MaxInt32 - seq) - 1
	}
	return seq + n
}

func arrayLen(b *kbin.Reader, flexible bool) int32 {
	if flexible {
		return b.CompactArrayLen()
	}
	return b.ArrayLen()
}

// skipTags reads past a flexible version's tagged fields.
func skipTags(b *kbin.Reader) {
	for range b.Uvarint() {
		b.Uvarint() // tag
		b.Span(int(b.Uvarint()))
	}
}
