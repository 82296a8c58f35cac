package kafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/relay"
)

// checkTimeout bounds the whole broker check: an unreachable cluster is
// reported rather than waited for, as the sink would.
const checkTimeout = 15 * time.Second

// Check reports, without creating or producing anything, whether the relay
// can produce with cfg: a broker answers a metadata request, the topics
// (the tables' own, the dead-letter topic) exist or will be created (by the
// relay with CreateTopics, or by the cluster), and for exactly-once the
// checkpoint topic exists and a transaction coordinator answers. It never
// does anything that would fence a running relay.
func Check(ctx context.Context, cfg Config) []relay.Finding {
	const check = "kafka"
	brokers := strings.Join(cfg.Brokers, ",")
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID("relay-check"),
		kgo.DialTimeout(5 * time.Second),
		kgo.RequestRetries(2),
	}
	if cfg.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(cfg.TLS))
	}
	if cfg.SASL != nil {
		opts = append(opts, kgo.SASL(cfg.SASL))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail, Detail: err.Error()}}
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()

	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = false // looking must not create
	// nil Topics lists every topic: needed to match a topic template.
	meta, err := req.RequestWith(ctx, cl)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail,
			Detail: fmt.Sprintf("no broker of %s answers: %v", brokers, err),
			Fix:    "check RELAY_KAFKA_BROKERS, the TLS and SASL settings, and that the brokers run and admit this host"}}
	}
	cluster := ""
	if meta.ClusterID != nil {
		cluster = ", cluster " + *meta.ClusterID
	}
	out := []relay.Finding{{Check: check, Status: relay.CheckOK, Detail: fmt.Sprintf("connected to %s: %d brokers%s", brokers, len(meta.Brokers), cluster)}}

	topics := map[string]int{} // name → partitions
	for _, t := range meta.Topics {
		if t.Topic != nil && t.ErrorCode == 0 {
			topics[*t.Topic] = len(t.Partitions)
		}
	}
	autoCreate := "unknown"
	if len(meta.Brokers) > 0 {
		if v, err := describeString(ctx, cl, kmsg.ConfigResourceTypeBroker, strconv.Itoa(int(meta.Brokers[0].NodeID)), "auto.create.topics.enable"); err == nil {
			autoCreate = v
		}
	}
	if cfg.Topic != nil {
		out = append(out, topicFinding(cfg.Topic, cfg.CreateTopics, autoCreate, topics))
	}
	for _, table := range slices.Sorted(maps.Keys(cfg.Topics)) {
		f := topicFinding(cfg.Topics[table], cfg.CreateTopics, autoCreate, topics)
		f.Check += " (of table " + table + ")"
		out = append(out, f)
	}
	if cfg.DeadLetter != "" {
		out = append(out, namedTopicFinding("dead-letter topic "+cfg.DeadLetter, cfg.DeadLetter, cfg.CreateTopics, autoCreate, topics))
	}
	if cfg.ExactlyOnce {
		out = append(out, checkpointFinding(ctx, cl, cfg.CheckpointTopic, topics))
		out = append(out, coordinatorFinding(ctx, cl, cfg.TransactionalID))
	}
	return out
}

// topicFinding compares the topics the template names with the cluster's.
// A template with placeholders names topics per row, so only the topics
// matching it so far can be shown.
func topicFinding(tpl *relay.Template, create bool, autoCreate string, topics map[string]int) relay.Finding {
	check := "topic " + tpl.String()
	if len(tpl.Fields()) == 0 {
		return namedTopicFinding(check, tpl.String(), create, autoCreate, topics)
	}
	re := templateRegexp(tpl)
	var matching []string
	for name := range topics {
		if re.MatchString(name) {
			matching = append(matching, name)
		}
	}
	slices.Sort(matching)
	detail := "names a topic per row; no topic matches it yet"
	if len(matching) > 0 {
		const shown = 5
		list := strings.Join(matching[:min(len(matching), shown)], ", ")
		if len(matching) > shown {
			list += fmt.Sprintf(" and %d more", len(matching)-shown)
		}
		detail = fmt.Sprintf("names a topic per row; %d exist: %s", len(matching), list)
	}
	return missingTopic(check, detail, create, autoCreate, "create every topic rows will name")
}

// namedTopicFinding checks one topic by its name.
func namedTopicFinding(check, name string, create bool, autoCreate string, topics map[string]int) relay.Finding {
	if n, ok := topics[name]; ok {
		return relay.Finding{Check: check, Status: relay.CheckOK, Detail: fmt.Sprintf("exists, %d partitions", n)}
	}
	return missingTopic(check, "does not exist", create, autoCreate, "create topic "+name)
}

// missingTopic is the finding for topics that may not exist: fine when the
// relay or the cluster creates them, else the relay stops at the first
// row routed to a missing one.
func missingTopic(check, detail string, create bool, autoCreate, fix string) relay.Finding {
	switch {
	case create:
		return relay.Finding{Check: check, Status: relay.CheckOK, Detail: detail + "; the relay creates missing topics (RELAY_KAFKA_CREATE_TOPICS)"}
	case autoCreate == "true":
		return relay.Finding{Check: check, Status: relay.CheckOK, Detail: detail + "; the cluster creates missing topics (auto.create.topics.enable)"}
	case autoCreate == "false":
		return relay.Finding{Check: check, Status: relay.CheckFail,
			Detail: detail + "; a row routed to a missing topic stops the relay, and the cluster does not create topics (auto.create.topics.enable=false)",
			Fix:    fix + ", or set RELAY_KAFKA_CREATE_TOPICS=true"}
	}
	return relay.Finding{Check: check, Status: relay.CheckWarn,
		Detail: detail + "; a row routed to a missing topic stops the relay unless the cluster creates it (its auto.create.topics.enable is not visible)",
		Fix:    fix + ", or set RELAY_KAFKA_CREATE_TOPICS=true"}
}

// templateRegexp matches the names tpl can render: its literal text with
// anything non-empty for each placeholder.
func templateRegexp(tpl *relay.Template) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	rest := tpl.String()
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			b.WriteString(regexp.QuoteMeta(rest))
			break
		}
		b.WriteString(regexp.QuoteMeta(rest[:open]))
		b.WriteString(".+")
		end := strings.IndexByte(rest[open:], '}')
		rest = rest[open+end+1:] // a parsed template closes every brace
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// checkpointFinding checks the exactly-once checkpoint topic, which the
// sink creates compacted when it is missing.
func checkpointFinding(ctx context.Context, cl *kgo.Client, topic string, topics map[string]int) relay.Finding {
	check := "checkpoint topic " + topic
	if _, ok := topics[topic]; !ok {
		return relay.Finding{Check: check, Status: relay.CheckOK, Detail: "does not exist; the relay will create it, compacted (it needs permission to create topics)"}
	}
	policy, err := describeString(ctx, cl, kmsg.ConfigResourceTypeTopic, topic, "cleanup.policy")
	switch {
	case err != nil:
		return relay.Finding{Check: check, Status: relay.CheckWarn, Detail: fmt.Sprintf("exists; cannot read its cleanup.policy: %v", err),
			Fix: "make sure it is compacted (cleanup.policy=compact)"}
	case !slices.Contains(strings.Split(policy, ","), "compact"):
		return relay.Finding{Check: check, Status: relay.CheckWarn,
			Detail: fmt.Sprintf("exists with cleanup.policy=%s: retention may delete the checkpoint, and a relay restarted then publishes again what it covered", policy),
			Fix:    fmt.Sprintf("kafka-configs --alter --entity-type topics --entity-name %s --add-config cleanup.policy=compact", topic)}
	}
	return relay.Finding{Check: check, Status: relay.CheckOK, Detail: "exists, compacted"}
}

// coordinatorFinding asks for the transaction coordinator of id: it tells
// whether the cluster supports transactions and the user may use the id,
// without initialising a producer (which would fence a running relay).
func coordinatorFinding(ctx context.Context, cl *kgo.Client, id string) relay.Finding {
	check := "transactional id " + id
	req := kmsg.NewPtrFindCoordinatorRequest()
	req.CoordinatorType = 1 // transaction
	req.CoordinatorKey = id
	req.CoordinatorKeys = []string{id}
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		code, msg := resp.ErrorCode, resp.ErrorMessage
		if len(resp.Coordinators) > 0 {
			code, msg = resp.Coordinators[0].ErrorCode, resp.Coordinators[0].ErrorMessage
		}
		if err = kerr.ErrorForCode(code); err != nil && msg != nil {
			err = fmt.Errorf("%w: %s", err, *msg)
		}
	}
	if err != nil {
		fix := "check that the cluster supports transactions and that the user may write and describe this transactional id"
		if errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
			fix = "grant the user Write and Describe on TransactionalId " + id
		}
		return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("no transaction coordinator: %v", err), Fix: fix}
	}
	return relay.Finding{Check: check, Status: relay.CheckOK, Detail: "a transaction coordinator answers"}
}

// describeString reads one config of one resource as text.
func describeString(ctx context.Context, cl *kgo.Client, typ kmsg.ConfigResourceType, name, key string) (string, error) {
	req := kmsg.NewPtrDescribeConfigsRequest()
	res := kmsg.NewDescribeConfigsRequestResource()
	res.ResourceType, res.ResourceName, res.ConfigNames = typ, name, []string{key}
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, cl)
	if err == nil && len(resp.Resources) != 1 {
		err = fmt.Errorf("%d resources in the response", len(resp.Resources))
	}
	if err == nil {
		err = kerr.ErrorForCode(resp.Resources[0].ErrorCode)
	}
	if err != nil {
		return "", fmt.Errorf("describe %s %s: %w", typ, name, err)
	}
	for _, c := range resp.Resources[0].Configs {
		if c.Name == key && c.Value != nil {
			return *c.Value, nil
		}
	}
	return "", fmt.Errorf("%s %s has no %s", typ, name, key)
}
