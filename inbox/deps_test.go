package inbox_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependencies keeps what importing each package pulls into a service
// small: the core needs pgx and the standard library only, each helper adds
// its broker client and nothing else.
func TestDependencies(t *testing.T) {
	t.Parallel()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	// pgx and its own dependencies: jackc/* and golang.org/x/*.
	core := []string{"github.com/relay-dev/relay/inbox", "github.com/jackc/", "golang.org/x/"}
	tests := []struct {
		pkg     string
		allowed []string
		want    string // a dependency that must be there, so the check can't pass vacuously
	}{
		{pkg: ".", allowed: core, want: "github.com/jackc/pgx/v5"},
		{pkg: "./inboxamqp", allowed: slices.Concat(core, []string{"github.com/rabbitmq/amqp091-go"}), want: "github.com/rabbitmq/amqp091-go"},
		{pkg: "./inboxkafka", allowed: slices.Concat(core, []string{"github.com/twmb/franz-go/", "github.com/klauspost/compress", "github.com/pierrec/lz4/"}), want: "github.com/twmb/franz-go/pkg/kgo"},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			t.Parallel()
			out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", tt.pkg).Output()
			if err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					t.Fatalf("go list -deps %s: %v\n%s", tt.pkg, err, ee.Stderr)
				}
				t.Fatalf("go list -deps %s: %v", tt.pkg, err)
			}
			deps := strings.Fields(string(out))
			found := false
			for _, dep := range deps {
				found = found || dep == tt.want
				ok := false
				for _, prefix := range tt.allowed {
					ok = ok || strings.HasPrefix(dep, prefix)
				}
				if !ok {
					t.Errorf("%s depends on %s", tt.pkg, dep)
				}
			}
			if !found {
				t.Errorf("%s does not depend on %s; dependencies: %v", tt.pkg, tt.want, deps)
			}
		})
	}
}
