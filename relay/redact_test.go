package relay

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		secret   string   // must not appear in the output ("" when there is none)
		want     string   // exact output when set
		contains []string // must appear in the output
	}{
		{
			name:   "amqp url",
			in:     "amqp://guest:s3cr3tpw@rabbit.internal:5672/vhost",
			secret: "s3cr3tpw",
			want:   "amqp://guest:xxxxx@rabbit.internal:5672/vhost",
		},
		{
			name:   "amqps url",
			in:     "amqps://relay:s3cr3tpw@rabbit:5671/",
			secret: "s3cr3tpw",
			want:   "amqps://relay:xxxxx@rabbit:5671/",
		},
		{
			name:   "postgres url",
			in:     "postgres://app:s3cr3tpw@db.internal:5432/orders?sslmode=require",
			secret: "s3cr3tpw",
			want:   "postgres://app:xxxxx@db.internal:5432/orders?sslmode=require",
		},
		{
			name:   "postgresql url",
			in:     "postgresql://app:s3cr3tpw@127.0.0.1/db",
			secret: "s3cr3tpw",
			want:   "postgresql://app:xxxxx@127.0.0.1/db",
		},
		{
			name:     "percent-encoded password",
			in:       "postgres://app:p%40ss%2Fw0rd%21@db/orders",
			secret:   "p%40ss",
			contains: []string{"app:xxxxx@db"},
		},
		{
			name:     "password with unicode",
			in:       "amqp://guest:%D0%BF%D0%B0%D1%80%D0%BE%D0%BB%D1%8C@rabbit/",
			secret:   "%D0%BF",
			contains: []string{"guest:xxxxx@rabbit"},
		},
		{
			name:   "url without password",
			in:     "postgres://app@db:5432/orders",
			want:   "postgres://app@db:5432/orders",
			secret: "",
		},
		{
			name: "url without user info",
			in:   "amqp://rabbit:5672/",
			want: "amqp://rabbit:5672/",
		},
		{
			name:     "password in the query",
			in:       "postgres://db.internal/orders?user=app&password=s3cr3tpw&sslmode=disable",
			secret:   "s3cr3tpw",
			contains: []string{"password=xxxxx", "user=app", "sslmode=disable", "db.internal/orders"},
		},
		{
			name:     "password in the query and the user info",
			in:       "postgres://app:s3cr3tpw@db/orders?password=0th3rpw",
			secret:   "s3cr3tpw",
			contains: []string{"app:xxxxx@db", "password=xxxxx"},
		},
		{
			name:     "keyword/value",
			in:       "host=x password=s3cr3tpw user=u",
			secret:   "s3cr3tpw",
			want:     "host=x password=xxxxx user=u",
			contains: []string{"host=x", "user=u"},
		},
		{
			name:   "keyword/value, password last",
			in:     "host=db user=app dbname=orders password=s3cr3tpw",
			secret: "s3cr3tpw",
			want:   "host=db user=app dbname=orders password=xxxxx",
		},
		{
			name:   "keyword/value, quoted password with a space",
			in:     "host=x password='s3cr3t pw' user=u",
			secret: "s3cr3t",
			want:   "host=x password=xxxxx user=u",
		},
		{
			name:   "keyword/value, quoted password with an escaped quote",
			in:     `host=x password='s3cr\'3tpw' user=u`,
			secret: "3tpw",
			want:   "host=x password=xxxxx user=u",
		},
		{
			name:   "keyword/value, spaces around =",
			in:     "host=x password = s3cr3tpw user=u",
			secret: "s3cr3tpw",
			want:   "host=x password = xxxxx user=u",
		},
		{
			name:   "keyword/value, upper-case keyword",
			in:     "host=x PASSWORD=s3cr3tpw",
			secret: "s3cr3tpw",
		},
		{
			name: "keyword/value without password",
			in:   "host=x user=u dbname=d",
			want: "host=x user=u dbname=d",
		},
		{
			name: "empty",
			in:   "",
			want: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactURL(tt.in)
			if tt.secret != "" && strings.Contains(got, tt.secret) {
				t.Errorf("RedactURL(%q) = %q, which contains the password", tt.in, got)
			}
			if tt.want != "" || tt.in == "" {
				if got != tt.want {
					t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
				}
			}
			for _, s := range tt.contains {
				if !strings.Contains(got, s) {
					t.Errorf("RedactURL(%q) = %q, want it to contain %q", tt.in, got, s)
				}
			}
		})
	}
}

// URLs that net/url refuses still lose their password.
func TestRedactURLUnparseable(t *testing.T) {
	for _, tc := range []struct{ in, secret string }{
		{"postgres://u:s3cr3t%zz@host/db", "s3cr3t"},
		{"postgres://u:s3cr#3t@host/db", "s3cr"},
		{"amqp://guest:s3 cr3t@host/", "cr3t"},
		{"postgres://u:s3cr3t@host:badport/db", "s3cr3t"},
		{"postgres://u:s3cr3t@[::1/db", "s3cr3t"},
	} {
		if got := RedactURL(tc.in); strings.Contains(got, tc.secret) {
			t.Errorf("RedactURL(%q) = %q, which contains the password", tc.in, got)
		}
	}
}

// TestParseURLKeepsThePasswordOutOfItsError: a URL net/url refuses is
// not repeated in the error, password included.
func TestParseURLKeepsThePasswordOutOfItsError(t *testing.T) {
	_, err := ParseURL("amqp://user:s3cret@host:port/")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("ParseURL: %v, want an error without the password", err)
	}
	if u, err := ParseURL("amqp://user:s3cret@host:5672/"); err != nil || u.Host != "host:5672" {
		t.Fatalf("ParseURL of a good URL: %v, %v", u, err)
	}
}
