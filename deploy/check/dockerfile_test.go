package check

import (
	"strings"
	"testing"
)

func TestDockerfile(t *testing.T) {
	for _, p := range CheckDockerfile(readFiles(t, "Dockerfile")[0], testRelay(t)) {
		t.Error(p)
	}
}

func TestDockerfileCatchesMistakes(t *testing.T) {
	relay := testRelay(t)
	f := readFiles(t, "Dockerfile")[0]
	cases := []struct{ name, old, new, want string }{
		{"unknown instruction", "WORKDIR /src", "WORKDIRR /src", "unknown instruction: WORKDIRR"},
		{"lower-case instruction (linter)", "COPY go.mod go.sum ./", "copy go.mod go.sum ./", "ConsistentInstructionCasing"},
		{"FROM AS casing (linter)", "FROM golang:1.26 AS build", "FROM golang:1.26 as build", "FromAsCasing"},
		{"undefined variable (linter)", `org.opencontainers.image.version="${VERSION}"`, `org.opencontainers.image.version="${VERISON}"`, "UndefinedVar"},
		{"copy from a stage that does not exist", "COPY --from=build /out/relay", "COPY --from=biuld /out/relay", "COPY --from=biuld names no earlier stage"},
		{"root user", "USER 65532:65532", "USER root", "runs as root"},
		{"no user", "USER 65532:65532\n", "", "runs as root"},
		{"wrong port", "EXPOSE 8080", "EXPOSE 8000", "does not EXPOSE 8080"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := CheckDockerfile(broken(t, f, c.old, c.new), relay)
			t.Log(strings.Join(problems, "\n"))
			wantProblem(t, c.name, problems, c.want)
		})
	}
	t.Run("no healthcheck and no reason", func(t *testing.T) {
		var lines []string
		for _, l := range strings.Split(string(f.Content), "\n") {
			if !strings.Contains(l, "HEALTHCHECK") {
				lines = append(lines, l)
			}
		}
		wantProblem(t, "no healthcheck", CheckDockerfile(File{Path: f.Path, Content: []byte(strings.Join(lines, "\n"))}, relay), "no HEALTHCHECK")
	})
}
