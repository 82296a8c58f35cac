package relay

import (
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
