package relay

import (
	"errors"
	"net/url"
	"regexp"
)

var (
	// A password in key=value form, quoted (possibly unterminated) or not.
	passwordKV = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)`)
	// user:password@ in a URL that net/url cannot parse.
	userinfo = regexp.MustCompile(`(://[^/@]*?):[^@]*@`)
)

// RedactURL hides the password in a URL (amqp://user:secret@host) or a
// PostgreSQL keyword/value string (password=secret), for logs and errors.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.Host != "" {
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	s = userinfo.ReplaceAllString(s, "${1}:xxxxx@")
	return passwordKV.ReplaceAllString(s, "${1}xxxxx")
}

// ParseURL parses a URL that may hold a password. Its error leaves the
// URL out: url.Error repeats it, password included.
func ParseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, err
	}
	return u, nil
}
