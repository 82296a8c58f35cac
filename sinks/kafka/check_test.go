package kafka

import (
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/relay"
)

// findings renders findings as "status check: detail" lines.
func findings(fs []relay.Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.Status.String() + " " + f.Check + ": " + f.Detail + "\n")
	}
	return b.String()
}

func expectLines(t *testing.T, fs []relay.Finding, want ...string) {
	t.Helper()
	got := strings.Split(strings.TrimSuffix(findings(fs), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("got findings\n%s\nwant %d lines starting with %q", findings(fs), len(want), want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("finding %d is %q, want it to start with %q", i, got[i], want[i])
		}
	}
}

// topicExists asks the cluster for topic without creating it.
func topicExists(t *testing.T, brokers []string, topic string) bool {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), cl)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Topics) == 1 && resp.Topics[0].ErrorCode == 0
}

func TestCheckCreatesNoTopic(t *testing.T) {
	t.Parallel()
	// A cluster that would create a topic on a metadata request for it.
	brokers := cluster(t, kfake.AllowAutoTopicCreation())
	fs := Check(t.Context(), Config{Brokers: brokers, Topic: tmpl(t, "orders"), ExactlyOnce: true, TransactionalID: "relay-x", CheckpointTopic: "relay.checkpoints"})
	expectLines(t, fs,
		"ok kafka: connected to "+brokers[0]+": 1 brokers",
		"WARN topic orders: does not exist; a row routed to a missing topic stops the relay unless the cluster creates it",
		"ok checkpoint topic relay.checkpoints: does not exist; the relay will create it",
		"ok transactional id relay-x: a transaction coordinator answers",
	)
	for _, topic := range []string{"orders", "relay.checkpoints"} {
		if topicExists(t, brokers, topic) {
			t.Errorf("Check created topic %s", topic)
		}
	}
}

func TestCheckTopics(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "orders", "outbox.event.order", "outbox.event.invoice"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.CreateTopic("relay.checkpoints", 1, map[string]string{"cleanup.policy": "delete"}); err != nil {
		t.Fatal(err)
	}
	brokers := c.ListenAddrs()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"existing", Config{Topic: tmpl(t, "orders")}, "ok topic orders: exists, 3 partitions"},
		{"dead-letter topic", Config{DeadLetter: "absent.dlq"}, "WARN dead-letter topic absent.dlq: does not exist; a row routed to a missing topic stops the relay"},
		{"missing, created by the relay", Config{Topic: tmpl(t, "absent"), CreateTopics: true}, "ok topic absent: does not exist; the relay creates missing topics"},
		{"template", Config{Topic: tmpl(t, DefaultTopic)}, "WARN topic outbox.event.{aggregate_type}: names a topic per row; 2 exist: outbox.event.invoice, outbox.event.order;"},
		{"template, nothing matches", Config{Topic: tmpl(t, "{aggregate_type}.events"), CreateTopics: true}, "ok topic {aggregate_type}.events: names a topic per row; no topic matches it yet; the relay creates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.cfg.Brokers = brokers
			fs := Check(t.Context(), tt.cfg)
			expectLines(t, fs, "ok kafka: connected", tt.want)
		})
	}
	t.Run("checkpoint topic not compacted", func(t *testing.T) {
		t.Parallel()
		fs := Check(t.Context(), Config{Brokers: brokers, ExactlyOnce: true, TransactionalID: "relay-y", CheckpointTopic: "relay.checkpoints"})
		expectLines(t, fs, "ok kafka: connected", "WARN checkpoint topic relay.checkpoints: exists with cleanup.policy=delete", "ok transactional id relay-y")
		if !strings.Contains(fs[1].Fix, "cleanup.policy=compact") {
			t.Errorf("fix %q does not say how to compact it", fs[1].Fix)
		}
	})
}

func TestCheckReportsUnreachableBrokers(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	fs := Check(t.Context(), Config{Brokers: []string{addr}, Topic: tmpl(t, "orders")})
	expectLines(t, fs, "FAIL kafka: no broker of "+addr+" answers")
	if !strings.Contains(fs[0].Fix, "RELAY_KAFKA_BROKERS") {
		t.Errorf("fix %q does not name RELAY_KAFKA_BROKERS", fs[0].Fix)
	}
}

func TestMissingTopic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		create     bool
		autoCreate string
		want       relay.CheckStatus
	}{
		{true, "false", relay.CheckOK},
		{false, "true", relay.CheckOK},
		{false, "false", relay.CheckFail},
		{false, "unknown", relay.CheckWarn},
	}
	for _, tt := range tests {
		f := missingTopic("topic t", "does not exist", tt.create, tt.autoCreate, "create topic t")
		if f.Status != tt.want {
			t.Errorf("create %v, auto.create.topics.enable %s: got %s %q, want %s", tt.create, tt.autoCreate, f.Status, f.Detail, tt.want)
		}
		if f.Status != relay.CheckOK && !strings.Contains(f.Fix, "RELAY_KAFKA_CREATE_TOPICS=true") {
			t.Errorf("fix %q does not mention RELAY_KAFKA_CREATE_TOPICS", f.Fix)
		}
	}
}

func TestTemplateRegexp(t *testing.T) {
	t.Parallel()
	re := templateRegexp(tmpl(t, "outbox.event.{aggregate_type}+{x}"))
	for name, want := range map[string]bool{
		"outbox.event.order+1": true,
		"outboxXevent.order+1": false, // dots are literal
		"outbox.event.+1":      false, // a placeholder renders something
		"pre.outbox.event.a+b": false,
	} {
		if got := re.MatchString(name); got != want {
			t.Errorf("%q: match %v, want %v", name, got, want)
		}
	}
}
