package kafka

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/relay-dev/relay/metrics"
)

// testCA makes a CA and a certificate it signs for 127.0.0.1, and returns
// the server's TLS configuration and the CA's PEM file.
func testCA(t *testing.T) (*tls.Config, string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kfake"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}, caFile
}

// TestTLSVerifiesTheBroker: the sink's own dialer (which counts retries)
// speaks TLS as kgo's does: it publishes to a broker whose certificate the
// CA file vouches for, by IP, and refuses one it does not.
func TestTLSVerifiesTheBroker(t *testing.T) {
	t.Parallel()
	server, caFile := testCA(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()

	for _, counted := range []bool{false, true} {
		cfg, err := TLSConfig(caFile, "", "")
		if err != nil {
			t.Fatal(err)
		}
		var m *metrics.Metrics
		if counted {
			m = metrics.New(prometheus.NewRegistry(), "kafka")
		}
		s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, "tls"), CreateTopics: true, Partitions: 1, ReplicationFactor: -1, TLS: cfg, Metrics: m})
		o := newOutcome(1)
		if err := s.Publish(t.Context(), o.event("e-1", "order", "o-1", []byte("{}"))); err != nil {
			t.Fatal(err)
		}
		o.wait(t)
		if err := o.errs["e-1"]; err != nil {
			t.Fatalf("metrics %v: %v", counted, err)
		}
	}

	_, otherCA := testCA(t)
	cfg, err := TLSConfig(otherCA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := New(ctx, Config{Brokers: brokers, Topic: tmpl(t, "tls"), TLS: cfg}); err == nil {
		t.Fatal("New connected to a broker whose certificate no trusted CA signed")
	}
}
