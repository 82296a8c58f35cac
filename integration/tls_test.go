//go:build linux

package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// certs are PEM files made for one test: a CA, a server certificate for
// 127.0.0.1 and localhost, a client certificate for the role "relay", and
// an unrelated CA that signed none of them.
type certs struct {
	ca, serverCert, serverKey, clientCert, clientKey, otherCA string
}

func makeCerts(t *testing.T) certs {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	serial := int64(0)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, der
	}
	caTmpl := func(name string) *x509.Certificate {
		return &x509.Certificate{
			Subject:               pkix.Name{CommonName: name},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	var c certs
	ca, caKey, caDER := issue(caTmpl("relay test CA"), nil, nil)
	c.ca = write("ca.pem", "CERTIFICATE", caDER)
	_, srvKey, srvDER := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	c.serverCert = write("server.pem", "CERTIFICATE", srvDER)
	c.serverKey = write("server.key", "PRIVATE KEY", keyDER(srvKey))
	// PostgreSQL's cert authentication takes the role from the CN.
	_, cliKey, cliDER := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "relay"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	c.clientCert = write("client.pem", "CERTIFICATE", cliDER)
	c.clientKey = write("client.key", "PRIVATE KEY", keyDER(cliKey))
	_, _, otherDER := issue(caTmpl("relay test CA"), nil, nil) // same name, other key
	c.otherCA = write("other-ca.pem", "CERTIFICATE", otherDER)
	return c
}

// tlsServers are a PostgreSQL that admits the relay role only over TLS with
// a client certificate, and a RabbitMQ node whose TLS listener requires one.
type tlsServers struct {
	certs  certs
	pg     *services.Postgres
	rabbit *services.Rabbit
}

func startTLSServers(t *testing.T) *tlsServers {
	t.Helper()
	s := &tlsServers{certs: makeCerts(t)}
	tls := &services.TLS{CertFile: s.certs.serverCert, KeyFile: s.certs.serverKey, CAFile: s.certs.ca}
	var wg sync.WaitGroup
	var pgErr, rabbitErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.pg, pgErr = services.StartPostgres(t.Context(), services.PostgresOptions{Fast: true, TLS: tls, ClientCertUsers: []string{"relay"}})
	}()
	go func() {
		defer wg.Done()
		s.rabbit, rabbitErr = services.StartRabbitWith(t.Context(), services.RabbitOptions{TLS: tls, RequireClientCert: true})
	}()
	wg.Wait()
	if s.pg != nil {
		t.Cleanup(func() { s.pg.Close() })
	}
	if s.rabbit != nil {
		t.Cleanup(func() { s.rabbit.Close() })
	}
	if pgErr != nil || rabbitErr != nil {
		t.Fatalf("start TLS servers: %v; %v", pgErr, rabbitErr)
	}
	return s
}

// databaseURL is the relay's URL for db: the relay role, authenticated by
// its client certificate, verifying the server against rootCA.
func (s *tlsServers) databaseURL(db, rootCA string) string {
	q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {rootCA}, "sslcert": {s.certs.clientCert}, "sslkey": {s.certs.clientKey}}
	u := url.URL{Scheme: "postgres", User: url.User("relay"), Host: "127.0.0.1:" + strconv.Itoa(s.pg.Port), Path: "/" + db, RawQuery: q.Encode()}
	return u.String()
}

// amqpsURL is the relay's amqps URL with a client certificate, verifying
// the server against rootCA.
func (s *tlsServers) amqpsURL(rootCA string) string {
	q := url.Values{"cacertfile": {rootCA}, "certfile": {s.certs.clientCert}, "keyfile": {s.certs.clientKey}}
	u := url.URL{Scheme: "amqps", User: url.UserPassword("guest", "guest"), Host: "127.0.0.1:" + strconv.Itoa(s.rabbit.TLSPort), Path: "/", RawQuery: q.Encode()}
	return u.String()
}

// newTLSEnv is an env on the TLS servers. Its consumer reads from the plain
// AMQP port; the relay uses TLS to both.
func (s *tlsServers) newTLSEnv(t *testing.T) *env {
	t.Helper()
	e := newEnvOn(t, s.pg)
	e.amqpURL = s.rabbit.URL()
	e.extraVars = map[string]string{
		"RELAY_DATABASE_URL": s.databaseURL(e.name, s.certs.ca),
		"RELAY_AMQP_URL":     s.amqpsURL(s.certs.ca),
	}
	return e
}

func TestRelayPublishesOverVerifiedTLSWithClientCertificates(t *testing.T) {
	t.Parallel()
	s := startTLSServers(t)
	e := s.newTLSEnv(t)
	c := e.bindQueue("#")
	p := e.startRelay()
	ids := e.insertEvents(100, 10, 5)
	msgs := c.waitDistinct(len(ids), time.Minute)
	got := map[string]bool{}
	for _, m := range msgs {
		got[m.MessageId] = true
	}
	for _, id := range ids {
		if !got[id] {
			t.Fatalf("event %s not received", id)
		}
	}

	// The replication connection, not only the normal one, runs over TLS
	// and authenticated with the client certificate; so does every other
	// connection of the relay (pg_hba refuses any other way, and this
	// checks that it did).
	var ssl bool
	var dn string
	err := e.db.QueryRow(t.Context(), `
		SELECT s.ssl, coalesce(s.client_dn, '')
		FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid
		WHERE r.slot_name = $1`, e.slot).Scan(&ssl, &dn)
	if err != nil {
		t.Fatalf("read the walsender's TLS state: %v", err)
	}
	if !ssl || dn != "/CN=relay" {
		t.Errorf("walsender: ssl %v, client_dn %q; want TLS with /CN=relay", ssl, dn)
	}
	var plain, all int
	err = e.db.QueryRow(t.Context(), `
		SELECT count(*) FILTER (WHERE NOT s.ssl), count(*)
		FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		WHERE a.usename = 'relay'`).Scan(&plain, &all)
	if err != nil {
		t.Fatal(err)
	}
	if all == 0 || plain != 0 {
		t.Errorf("relay connections: %d, %d of them without TLS", all, plain)
	}
	if code := p.stop(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}

// A server certificate from a CA the relay was not told to trust stops it
// at the handshake, with the reason in the log, and nothing is published or
// confirmed; with the right CA the same rows then arrive.
func TestUntrustedServerCertificatePublishesNothing(t *testing.T) {
	t.Parallel()
	s := startTLSServers(t)
	e := s.newTLSEnv(t)
	c := e.bindQueue("#")
	// A first run creates the slot, so that rows committed while the
	// relay is refused are waiting in it.
	if code := e.startRelay().stop(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	ids := e.insertEvents(20, 5, 2)
	confirmed := e.slotLSN()

	for _, tc := range []struct {
		name, db, amqp string
	}{
		{name: "PostgreSQL", db: s.databaseURL(e.name, s.certs.otherCA), amqp: s.amqpsURL(s.certs.ca)},
		{name: "RabbitMQ", db: s.databaseURL(e.name, s.certs.ca), amqp: s.amqpsURL(s.certs.otherCA)},
	} {
		e.extraVars["RELAY_DATABASE_URL"], e.extraVars["RELAY_AMQP_URL"] = tc.db, tc.amqp
		p := startRelayWith(t, e.vars())
		eventually(t, time.Minute, func() error {
			if out := p.log.String(); !strings.Contains(out, "certificate signed by unknown authority") {
				return fmt.Errorf("%s: the relay does not report the untrusted certificate yet; log:\n%s", tc.name, out)
			}
			return nil
		})
		p.kill()
		c.barrier()
		if n := len(c.messages()); n != 0 {
			t.Fatalf("%s: %d messages published with an untrusted server certificate", tc.name, n)
		}
		if got := e.slotLSN(); got != confirmed {
			t.Fatalf("%s: slot moved from %X to %X with an untrusted server certificate", tc.name, confirmed, got)
		}
		t.Logf("%s refused:\n%s", tc.name, p.log.String())
	}

	e.extraVars["RELAY_DATABASE_URL"], e.extraVars["RELAY_AMQP_URL"] = s.databaseURL(e.name, s.certs.ca), s.amqpsURL(s.certs.ca)
	e.startRelay()
	c.waitDistinct(len(ids), time.Minute)
}
