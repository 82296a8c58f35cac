package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
)

// Check reports, without declaring or publishing anything, whether the
// relay can publish to cfg.Exchange (and cfg.Exchanges, cfg.DeadLetter) at cfg.URL: it
// connects as the sink does and passively declares the exchanges. Findings
// never hold the password.
func Check(ctx context.Context, cfg Config) []relay.Finding {
	const check = "rabbitmq"
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail, Detail: "RELAY_AMQP_URL is not a URL", Fix: "want amqp://user:password@host:port/vhost"}}
	}
	redacted := u.Redacted()
	if cfg.Exchange == "" {
		cfg.Exchange = defaultExchange
	}
	s := &Sink{url: cfg.URL}
	conn, err := s.dial(ctx)
	if err != nil {
		return []relay.Finding{{Check: check, Status: relay.CheckFail,
			Detail: fmt.Sprintf("cannot connect to %s: %v", redacted, err),
			Fix:    "check RELAY_AMQP_URL (host, port, user, password, vhost) and that RabbitMQ runs and admits this host",
		}}
	}
	defer conn.Close()
	version, _ := conn.Properties["version"].(string)
	out := []relay.Finding{{Check: check, Status: relay.CheckOK, Detail: fmt.Sprintf("connected to %s (RabbitMQ %s)", redacted, version)}}
	out = append(out, exchangeFinding(conn, "exchange", cfg.Exchange, u.User.Username()))
	// The tables' own exchanges, each once, naming the tables it serves.
	byExchange := map[string][]string{}
	for _, table := range slices.Sorted(maps.Keys(cfg.Exchanges)) {
		if x := cfg.Exchanges[table]; x != cfg.Exchange {
			byExchange[x] = append(byExchange[x], table)
		}
	}
	for _, x := range slices.Sorted(maps.Keys(byExchange)) {
		f := exchangeFinding(conn, "exchange", x, u.User.Username())
		f.Check += " (of table " + strings.Join(byExchange[x], ", ") + ")"
		out = append(out, f)
	}
	if cfg.DeadLetter != "" {
		out = append(out, exchangeFinding(conn, "dead-letter exchange", cfg.DeadLetter, u.User.Username()))
	}
	return out
}

// exchangeFinding passively declares the exchange: it exists, it is
// missing (the sink declares it), or the user may not use it.
func exchangeFinding(conn *amqp.Connection, what, exchange, user string) relay.Finding {
	check := what + " " + exchange
	ch, err := conn.Channel()
	if err != nil {
		return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("cannot open a channel: %v", err)}
	}
	err = ch.ExchangeDeclarePassive(exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	// A failed passive declare closes the channel; a successful one leaves
	// it open.
	_ = ch.Close()
	var aerr *amqp.Error
	switch {
	case err == nil:
		return relay.Finding{Check: check, Status: relay.CheckOK,
			Detail: "exists (messages need a queue bound to it: an unroutable one is retried and holds the slot)"}
	case errors.As(err, &aerr) && aerr.Code == amqp.NotFound:
		return relay.Finding{Check: check, Status: relay.CheckOK,
			Detail: "does not exist; the relay will declare it, durable, of type topic (it needs configure permission on it, and messages need a queue bound to it)"}
	case errors.As(err, &aerr) && aerr.Code == amqp.AccessRefused:
		return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("access refused: %s", aerr.Reason),
			Fix: fmt.Sprintf("grant %s configure and write permission on it: rabbitmqctl set_permissions -p <vhost> %s '<configure>' '<write>' '<read>'", user, user)}
	}
	return relay.Finding{Check: check, Status: relay.CheckFail, Detail: fmt.Sprintf("cannot check it: %v", err)}
}
