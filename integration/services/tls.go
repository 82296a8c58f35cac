//go:build linux

package services

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// TLS is a server certificate for the options that turn TLS on. The files
// are copied into the service's directory, so the caller's may go away and
// Restart still finds them.
type TLS struct {
	// CertFile and KeyFile are the server's PEM certificate (chain) and
	// private key. Required.
	CertFile, KeyFile string
	// CAFile holds the PEM CAs that client certificates must chain to.
	// Optional; needed to require client certificates.
	CAFile string
}

// serverTLS is where a service's copies of the TLS files are.
type serverTLS struct {
	cert, key, ca string // ca is "" without TLS.CAFile
}

// install copies the files into dir/tls, owned by cred when it is set:
// PostgreSQL refuses a key that others can read or that is not its own.
func (t *TLS) install(dir string, cred *syscall.Credential) (serverTLS, error) {
	if t.CertFile == "" || t.KeyFile == "" {
		return serverTLS{}, fmt.Errorf("services: TLS needs CertFile and KeyFile")
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		return serverTLS{}, fmt.Errorf("services: tls dir: %w", err)
	}
	paths := []string{tlsDir}
	var s serverTLS
	for _, f := range []struct {
		src string
		dst *string
		as  string
	}{{t.CertFile, &s.cert, "server.crt"}, {t.KeyFile, &s.key, "server.key"}, {t.CAFile, &s.ca, "ca.crt"}} {
		if f.src == "" {
			continue
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return serverTLS{}, fmt.Errorf("services: tls: %w", err)
		}
		*f.dst = filepath.Join(tlsDir, f.as)
		if err := os.WriteFile(*f.dst, b, 0o600); err != nil {
			return serverTLS{}, fmt.Errorf("services: tls: %w", err)
		}
		paths = append(paths, *f.dst)
	}
	if cred != nil {
		for _, p := range paths {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return serverTLS{}, fmt.Errorf("services: chown %s: %w", p, err)
			}
		}
	}
	return s, nil
}
