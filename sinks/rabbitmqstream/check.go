package rabbitmqstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"

	"github.com/relay-dev/relay/relay"
)

// Check reports, without creating or publishing anything, whether the
// relay can publish to the streams of cfg: it connects over the stream
// protocol (which needs the rabbitmq_stream plugin) and asks for each
// stream whose name does not depend on the row, the global one and each
// table's own; on a stream that exists it declares an unnamed producer,
// which needs the write permission publishing needs, and deletes it.
// Findings never hold the password.
func Check(ctx context.Context, cfg Config) []relay.Finding {
	const check = "rabbitmq-stream"
	useLogger(slog.New(slog.DiscardHandler))
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail, Detail: "RELAY_RABBITMQ_STREAM_URL is not a URL", Fix: "want rabbitmq-stream://user:password@host:5552/vhost"}}
	}
	redacted := u.Redacted()
	plain, tlsConf, err := tlsConfig(u)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail, Detail: err.Error(), Fix: "fix the TLS parameters of RELAY_RABBITMQ_STREAM_URL"}}
	}
	opts := stream.NewEnvironmentOptions().SetUri(plain.String())
	if tlsConf != nil {
		opts.SetTLSConfig(tlsConf)
	}
	type result struct {
		env *stream.Environment
		err error
	}
	res := make(chan result, 1)
	go func() {
		env, err := stream.NewEnvironment(opts)
		res <- result{env, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		return []relay.Finding{{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("no answer from %s: %v", redacted, ctx.Err()),
			Fix: "check RELAY_RABBITMQ_STREAM_URL's host and port (5552, 5551 for TLS)"}}
	}
	if r.err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail,
			Detail: fmt.Sprintf("cannot connect to %s: %s", redacted, scrub(r.err, plain.String(), redacted)),
			Fix:    "enable the stream plugin (rabbitmq-plugins enable rabbitmq_stream) and check RELAY_RABBITMQ_STREAM_URL (host, port 5552, user, password, vhost); the node must advertise a host this relay reaches (stream.advertised_host)",
		}}
	}
	env := r.env
	defer env.Close()
	out := []relay.Finding{{Check: check, Status: relay.CheckOK, Detail: fmt.Sprintf("connected to %s over the stream protocol", redacted)}}
	templates := []*relay.Template{cfg.Stream}
	for _, table := range slices.Sorted(maps.Keys(cfg.Streams)) {
		templates = append(templates, cfg.Streams[table])
	}
	seen := map[string]bool{}
	for _, t := range templates {
		if t == nil || seen[t.String()] {
			continue
		}
		seen[t.String()] = true
		if len(t.Fields()) == 0 {
			out = append(out, streamFinding(env, "stream", t.String()))
			continue
		}
		out = append(out, relay.Finding{Check: "stream " + t.String(), Status: relay.CheckOK,
			Detail: "named by each row; every stream is created at its first row when missing (the user needs configure and write permission on them)"})
	}
	if cfg.DeadLetter != "" {
		out = append(out, streamFinding(env, "dead-letter stream", cfg.DeadLetter))
	}
	return out
}

func streamFinding(env *stream.Environment, what, name string) relay.Finding {
	check := what + " " + name
	grant := fmt.Sprintf("grant the relay's user configure and write permission on %s (rabbitmqctl set_permissions -p <vhost> <user> <configure> <write> <read>: both patterns must match the stream's name)", name)
	ok, err := env.StreamExists(name)
	switch {
	case err != nil:
		return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("cannot ask for it: %v", err), Fix: "grant the relay's user access to the vhost"}
	case !ok:
		return relay.Finding{Check: check, Status: relay.CheckOK, Detail: "does not exist; the relay will create it at the first row (it needs configure and write permission on it)"}
	}
	// Declaring a producer publishes nothing; unnamed, it leaves no
	// publishing id behind on the stream.
	prod, err := env.NewProducer(name, stream.NewProducerOptions())
	if err != nil {
		if errors.Is(err, stream.CodeAccessRefused) {
			return relay.Finding{Check: check, Status: relay.CheckFail, Detail: "exists, but the relay's user may not publish to it", Fix: grant}
		}
		return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("exists, but declaring a producer on it failed: %v", err), Fix: grant}
	}
	_ = prod.Close()
	return relay.Finding{Check: check, Status: relay.CheckOK, Detail: "exists, and the relay's user may publish to it"}
}
