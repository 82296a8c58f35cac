//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kcat, librdkafka's command-line client, is the Kafka tests' second
// reader. franz-go writes and reads in the other tests, so a record only
// franz-go can read would pass them all; librdkafka is the library under
// the confluent Python, .NET and Go clients, and most other non-Java ones.
const (
	kcatCommand     = "kcat"
	kcatInstallHint = "apt-get install -y kcat"
	kcatReadWithin  = 2 * time.Minute
)

// kcatRecord is a record as librdkafka's consumer returned it.
type kcatRecord struct {
	Topic     string
	Partition int32
	Offset    int64
	// Key and Value are nil when the record's are null.
	Key, Value []byte
	Headers    []kcatHeader
	// TimestampType is create or logappend; Timestamp is in milliseconds
	// since the epoch, as Kafka keeps it.
	TimestampType string
	Timestamp     int64
}

// kcatHeader is one record header; Value is nil when it is null.
type kcatHeader struct {
	Key   string
	Value []byte
}

// id is the record's dedup key, the last "id" header, as kafkaRecord.id
// reads it.
func (r kcatRecord) id() string {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == "id" {
			return string(r.Headers[i].Value)
		}
	}
	return ""
}

// kcatBin is kcat's path; a machine without it fails the test, as one
// without PostgreSQL does: a Kafka test that silently skipped its
// independent reader would prove less than it says.
func kcatBin(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath(kcatCommand)
	if err != nil {
		t.Fatalf("%s (librdkafka's command-line client, the Kafka tests' second reader) not found on PATH; install it with: %s (make test does, as root)", kcatCommand, kcatInstallHint)
	}
	return path
}

// kcatRead reads each of topics from the beginning to its current end with
// kcat, read_committed or read_uncommitted, and returns the records in
// each partition's order.
func kcatRead(t *testing.T, brokers string, topics []string, committed bool) []kcatRecord {
	t.Helper()
	bin := kcatBin(t)
	isolation := "read_uncommitted"
	if committed {
		isolation = "read_committed" // librdkafka's default, said anyway
	}
	var recs []kcatRecord
	for _, topic := range topics {
		ctx, cancel := context.WithTimeout(t.Context(), kcatReadWithin)
		// -F /dev/null: no kcat.conf of the user's changes what is read.
		// -J: the JSON envelope is the one output that keeps every
		// header in order, null apart from empty, and binary intact
		// (see kcatEnvelope); -f's %h is "k=v,k=v", ambiguous and cut
		// at a NUL byte.
		cmd := exec.CommandContext(ctx, bin, "-F", "/dev/null", "-C", "-b", brokers, "-t", topic,
			"-o", "beginning", "-e", "-J", "-m", "30", "-X", "isolation.level="+isolation)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, tail(stderr.String(), 40))
		}
		got, err := parseKcatEnvelopes(stdout.Bytes())
		if err != nil {
			t.Fatalf("%s: output: %v", strings.Join(cmd.Args, " "), err)
		}
		recs = append(recs, got...)
	}
	return recs
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// kcatEnvelope is one record of kcat -J. Strings stay raw: kcat's JSON
// writer (yajl, without UTF-8 validation) escapes only '"', '\' and
// control characters and copies every other byte as it is, valid UTF-8
// or not, and encoding/json would turn invalid UTF-8 into U+FFFD. Headers
// are a flat array, name then value (null for a null value), in record
// order, repeats included.
type kcatEnvelope struct {
	Topic     json.RawMessage   `json:"topic"`
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	TSType    string            `json:"tstype"`
	TS        int64             `json:"ts"`
	Headers   []json.RawMessage `json:"headers"`
	Key       json.RawMessage   `json:"key"`
	Payload   json.RawMessage   `json:"payload"`
}

// parseKcatEnvelopes decodes kcat -J's output, one envelope per record,
// byte for byte.
func parseKcatEnvelopes(out []byte) ([]kcatRecord, error) {
	var recs []kcatRecord
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var envl kcatEnvelope
		if err := dec.Decode(&envl); errors.Is(err, io.EOF) {
			return recs, nil
		} else if err != nil {
			return nil, fmt.Errorf("record %d: %w", len(recs), err)
		}
		r := kcatRecord{Partition: envl.Partition, Offset: envl.Offset, TimestampType: envl.TSType, Timestamp: envl.TS}
		topic, err := jsonBytes(envl.Topic)
		if err != nil {
			return nil, fmt.Errorf("record %d: topic: %w", len(recs), err)
		}
		r.Topic = string(topic)
		if r.Key, err = jsonBytes(envl.Key); err != nil {
			return nil, fmt.Errorf("%s/%d@%d: key: %w", r.Topic, r.Partition, r.Offset, err)
		}
		if r.Value, err = jsonBytes(envl.Payload); err != nil {
			return nil, fmt.Errorf("%s/%d@%d: payload: %w", r.Topic, r.Partition, r.Offset, err)
		}
		if len(envl.Headers)%2 != 0 {
			return nil, fmt.Errorf("%s/%d@%d: %d header names and values, want pairs", r.Topic, r.Partition, r.Offset, len(envl.Headers))
		}
		for i := 0; i < len(envl.Headers); i += 2 {
			k, err1 := jsonBytes(envl.Headers[i])
			v, err2 := jsonBytes(envl.Headers[i+1])
			if err := errors.Join(err1, err2); err != nil || k == nil {
				return nil, fmt.Errorf("%s/%d@%d: header %d: %s %s: %v", r.Topic, r.Partition, r.Offset, i/2, envl.Headers[i], envl.Headers[i+1], err)
			}
			r.Headers = append(r.Headers, kcatHeader{Key: string(k), Value: v})
		}
		recs = append(recs, r)
	}
}

// jsonBytes decodes a JSON string to its bytes, leaving bytes that are not
// escaped as they are (see kcatEnvelope); null is nil, "" is empty.
func jsonBytes(raw json.RawMessage) ([]byte, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, fmt.Errorf("not a JSON string or null: %.40q", raw)
	}
	s := raw[1 : len(raw)-1]
	out := make([]byte, 0, len(s))
	hex4 := func(at int) (rune, bool) {
		if at+4 > len(s) {
			return 0, false
		}
		n, err := strconv.ParseUint(string(s[at:at+4]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if i++; i == len(s) {
			return nil, errors.New("string ends in a backslash")
		}
		switch c := s[i]; c {
		case '"', '\\', '/':
			out = append(out, c)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(i + 1)
			if !ok {
				return nil, fmt.Errorf("bad escape %.6q", s[i-1:])
			}
			i += 4
			if utf16.IsSurrogate(r) && i+2 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
				if r2, ok := hex4(i + 3); ok {
					r = utf16.DecodeRune(r, r2)
					i += 6
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, fmt.Errorf("bad escape \\%c", c)
		}
	}
	return out, nil
}

// kcatTopics lists the topics matching pattern, for kcat, which reads one
// topic per run.
func kcatTopics(t *testing.T, brokers, pattern string) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tps, err := partitionsMatching(ctx, cl, pattern)
	if err != nil {
		t.Fatal(err)
	}
	var topics []string
	for _, tp := range tps {
		if !slices.Contains(topics, tp.topic) {
			topics = append(topics, tp.topic)
		}
	}
	slices.Sort(topics)
	return topics
}

// checkKcatAgrees asserts that kcat read the records franz-go read, record
// for record: the same offsets of the same partitions, and in each the
// same key and value (null apart from empty), the same headers in the
// same order, and the same timestamp.
func checkKcatAgrees(t *testing.T, franz []kafkaRecord, kc []kcatRecord) {
	t.Helper()
	type at struct {
		topic     string
		partition int32
		offset    int64
	}
	byFranz := make(map[at]kafkaRecord, len(franz))
	for _, r := range franz {
		byFranz[at{r.Topic, r.Partition, r.Offset}] = r
	}
	const most = 10
	problems := 0
	report := func(format string, args ...any) {
		if problems++; problems <= most {
			t.Errorf(format, args...)
		}
	}
	seen := make(map[at]bool, len(kc))
	for _, k := range kc {
		where := at{k.Topic, k.Partition, k.Offset}
		name := fmt.Sprintf("%s/%d@%d (id %s)", k.Topic, k.Partition, k.Offset, k.id())
		if seen[where] {
			report("kcat read %s twice", name)
			continue
		}
		seen[where] = true
		f, ok := byFranz[where]
		if !ok {
			report("kcat read %s, franz-go did not", name)
			continue
		}
		if d := bytesDiff(f.Key, k.Key); d != "" {
			report("%s: key: franz-go %s", name, d)
		}
		if d := bytesDiff(f.Value, k.Value); d != "" {
			report("%s: value: franz-go %s", name, d)
		}
		if f.Timestamp.UnixMilli() != k.Timestamp {
			report("%s: timestamp: franz-go %d ms, kcat %d ms", name, f.Timestamp.UnixMilli(), k.Timestamp)
		}
		if len(f.Headers) != len(k.Headers) {
			report("%s: franz-go read %d headers (%s), kcat %d (%s)", name, len(f.Headers), formatKafkaHeaders(f.Headers), len(k.Headers), formatKcatHeaders(k.Headers))
			continue
		}
		for i, h := range f.Headers {
			if h.Key != k.Headers[i].Key {
				report("%s: header %d: franz-go %q, kcat %q", name, i, h.Key, k.Headers[i].Key)
			} else if d := bytesDiff(h.Value, k.Headers[i].Value); d != "" {
				report("%s: header %d (%s): franz-go %s", name, i, h.Key, d)
			}
		}
	}
	for where, f := range byFranz {
		if !seen[where] {
			report("franz-go read %s/%d@%d (id %s), kcat did not", where.topic, where.partition, where.offset, f.id())
		}
	}
	if problems > most {
		t.Errorf("... %d differences in all", problems)
	}
}

// bytesDiff describes how a (franz-go's) and b (kcat's) differ, "" if they
// do not; nil is null.
func bytesDiff(a, b []byte) string {
	if (a == nil) == (b == nil) && bytes.Equal(a, b) {
		return ""
	}
	show := func(p []byte) string {
		if p == nil {
			return "null"
		}
		return fmt.Sprintf("%d bytes %.60q", len(p), p)
	}
	return show(a) + ", kcat " + show(b)
}

func formatKcatHeaders(hs []kcatHeader) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = fmt.Sprintf("%s=%q", h.Key, h.Value)
	}
	return strings.Join(parts, " ")
}

// checkKcatSeesEachOnce reads the topics matching pattern with kcat in
// read_committed mode, as an exactly-once consumer on librdkafka does,
// and asserts that it sees each of ids exactly once and nothing else,
// and the records franz-go's read_committed consumer read (franz).
func checkKcatSeesEachOnce(t *testing.T, brokers, pattern string, ids []string, franz []kafkaRecord) {
	t.Helper()
	kc := kcatRead(t, brokers, kcatTopics(t, brokers, pattern), true)
	count := make(map[string]int, len(kc))
	for _, r := range kc {
		count[r.id()]++
	}
	var missing, repeated []string
	for _, id := range ids {
		switch count[id] {
		case 0:
			missing = append(missing, id)
		case 1:
		default:
			repeated = append(repeated, fmt.Sprintf("%s ×%d", id, count[id]))
		}
		delete(count, id)
	}
	if len(missing) > 0 || len(repeated) > 0 || len(count) > 0 {
		var extra []string
		for id := range count {
			extra = append(extra, id)
		}
		t.Errorf("kcat (read_committed) read %d records for %d rows: %d rows missing %v, %d repeated %v, %d records of no row %v",
			len(kc), len(ids), len(missing), missing[:min(5, len(missing))], len(repeated), repeated[:min(5, len(repeated))], len(extra), extra[:min(5, len(extra))])
	}
	checkKcatAgrees(t, franz, kc)
	t.Logf("kcat (librdkafka, read_committed) read %d records", len(kc))
}

// TestKcatEnvelopeKeepsBytes pins the decoding of kcat -J to what its JSON
// writer emits: raw bytes outside ASCII (invalid UTF-8 included), \u00XX
// for control characters, null apart from "", repeated headers in order.
func TestKcatEnvelopeKeepsBytes(t *testing.T) {
	t.Parallel()
	out := []byte("{\"topic\":\"t\",\"partition\":2,\"offset\":7,\"tstype\":\"create\",\"ts\":1234567,\"broker\":0," +
		"\"headers\":[\"a\",\"1,b=2\",\"a\",\"x\\u0000y\xff\\\"\\\\/\",\"n\",null,\"e\",\"\",\"\xc3\xbc\",\"\\ud83d\\ude80\"]," +
		"\"key\":\"\",\"payload\":\"\\u0000\\u001F\\b\\t\\n\\f\\r \x7f\x80\xfe\xff\xc3(\"}\n" +
		"{\"topic\":\"t\",\"partition\":0,\"offset\":0,\"tstype\":\"create\",\"ts\":1,\"broker\":0,\"key\":null,\"payload\":null}\n")
	got, err := parseKcatEnvelopes(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []kcatRecord{{
		Topic: "t", Partition: 2, Offset: 7, TimestampType: "create", Timestamp: 1234567,
		Key:   []byte{},
		Value: []byte("\x00\x1f\b\t\n\f\r \x7f\x80\xfe\xff\xc3("),
		Headers: []kcatHeader{
			{"a", []byte("1,b=2")}, {"a", []byte("x\x00y\xff\"\\/")}, {"n", nil}, {"e", []byte{}}, {"ü", []byte("🚀")},
		},
	}, {Topic: "t", Partition: 0, Offset: 0, TimestampType: "create", Timestamp: 1}}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Topic != w.Topic || g.Partition != w.Partition || g.Offset != w.Offset || g.TimestampType != w.TimestampType || g.Timestamp != w.Timestamp {
			t.Errorf("record %d: %+v, want %+v", i, g, w)
		}
		if d := bytesDiff(w.Key, g.Key); d != "" {
			t.Errorf("record %d: key: want %s", i, d)
		}
		if d := bytesDiff(w.Value, g.Value); d != "" {
			t.Errorf("record %d: value: want %s", i, d)
		}
		if len(g.Headers) != len(w.Headers) {
			t.Fatalf("record %d: headers %s, want %s", i, formatKcatHeaders(g.Headers), formatKcatHeaders(w.Headers))
		}
		for j := range w.Headers {
			if g.Headers[j].Key != w.Headers[j].Key || bytesDiff(w.Headers[j].Value, g.Headers[j].Value) != "" {
				t.Errorf("record %d: header %d: %s=%q, want %s=%q", i, j, g.Headers[j].Key, g.Headers[j].Value, w.Headers[j].Key, w.Headers[j].Value)
			}
		}
	}
}

// TestKafkaLibrdkafkaReadsWhatFranzGoReads: kcat (librdkafka) reads every
// record the relay wrote exactly as franz-go does, for rows a byte-level
// difference would show in: binary bytea payloads (every byte value,
// invalid UTF-8), empty and NULL payloads (an empty value and a
// tombstone), Unicode in keys, payloads and headers, an empty key, typed
// and escaped header values; and the binary ones are the bytes inserted.
func TestKafkaLibrdkafkaReadsWhatFranzGoReads(t *testing.T) {
	t.Parallel()
	kcatBin(t)
	e := newKafkaEnv(t)
	e.exec(`CREATE TABLE blobs (id text PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
		event_type text NOT NULL, payload bytea, headers jsonb, created_at timestamptz NOT NULL DEFAULT now())`)
	e.exec(`GRANT SELECT ON blobs TO relay`)
	e.exec(`ALTER PUBLICATION pub_` + e.name + ` ADD TABLE blobs`)
	e.extraVars = map[string]string{"RELAY_TABLES": "public.outbox,public.blobs"}
	c := e.consumeKafka()
	e.startRelay()

	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	random := make([]byte, 64<<10)
	rand.Read(random)
	blobs := []struct {
		id, key string
		payload []byte // nil: NULL
	}{
		{"every-byte", "b-1", every},
		{"invalid-utf8", "b-1", []byte("\xff\xfe\xc3(\xed\xa0\x80 \x00end")},
		{"random-64k", "b-2", random},
		{"one-nul", "b-3", []byte{0}},
		{"empty", "b-3", []byte{}},
		{"null", "b-4", nil},
		{"unicode-key", "zoë ✓ 日本語 🚀", []byte("zoë ✓ 日本語 🚀")},
		{"empty-key", "", []byte("x")},
	}
	const headers = `{"n": 42, "ratio": 1.5, "flag": true, "nothing": null, "list": [1, "two"], "obj": {"a": {"b": null}},
		"uni": "ünï 🚀", "empty": "", "escaped": "a\"b\\c,d=e\n\t\u0001", "ünï 🚀": "name"}`
	var ids []string
	for _, b := range blobs {
		ids = append(ids, e.insertRow(`INSERT INTO blobs (id, aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ($1, 'blob', $2, 'stored', $3, $4) RETURNING id`, b.id, b.key, b.payload, headers))
	}
	ids = append(ids, e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('order', 'zoë-日本', 'créé ✓', '{"note": "zoë ✓ 日本語 🚀 \u2028"}', $1) RETURNING id`, headers))
	ids = append(ids, e.insertEvents(300, 20, 7)...)

	franz := c.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, asMessages(franz))
	kc := kcatRead(t, e.kafkaBrokers, kcatTopics(t, e.kafkaBrokers, topicPattern(e.kafkaTopic)), false)
	checkKcatAgrees(t, franz, kc)

	// Both clients could agree on the wrong bytes: the binary rows are
	// also checked against what was inserted.
	byID := map[string]kcatRecord{}
	for _, r := range kc {
		byID[r.id()] = r
	}
	for _, b := range blobs {
		r, ok := byID[b.id]
		if !ok {
			t.Errorf("kcat did not read row %s", b.id)
			continue
		}
		if d := bytesDiff(b.payload, r.Value); d != "" {
			t.Errorf("row %s: inserted %s", b.id, d)
		}
		if string(r.Key) != b.key || r.Key == nil {
			t.Errorf("row %s: kcat read key %q (null %v), want %q", b.id, r.Key, r.Key == nil, b.key)
		}
	}
	t.Logf("kcat (librdkafka) read %d records", len(kc))
}
