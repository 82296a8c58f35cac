package rabbitmqstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// tlsConfig reads the TLS settings of a rabbitmq-stream+tls:// URL, the
// query parameters the AMQP sink's amqps:// URLs take: cacertfile (the CAs
// to trust instead of the system roots), certfile and keyfile (a client
// certificate). It returns the URL without them, as the client library
// does not read them. The server name checked is the URL's host, also for
// the leader a producer connects to: a cluster's certificates must name it
// too (or set stream.advertised_host to it).
func tlsConfig(u *url.URL) (*url.URL, *tls.Config, error) {
	q := u.Query()
	ca, cert, key := q.Get("cacertfile"), q.Get("certfile"), q.Get("keyfile")
	for _, k := range []string{"cacertfile", "certfile", "keyfile"} {
		q.Del(k)
	}
	plain := *u
	plain.RawQuery = q.Encode()
	if u.Scheme != "rabbitmq-stream+tls" {
		if ca != "" || cert != "" || key != "" {
			return nil, nil, errors.New("cacertfile, certfile and keyfile need a rabbitmq-stream+tls:// URL")
		}
		return &plain, nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, nil, fmt.Errorf("cacertfile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("cacertfile %s: no PEM certificate", ca)
		}
		conf.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, nil, errors.New("certfile and keyfile go together")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, nil, fmt.Errorf("client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return &plain, conf, nil
}
