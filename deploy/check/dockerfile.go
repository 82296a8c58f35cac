package check

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	digest "github.com/opencontainers/go-digest"
)

// offlineImages answers BuildKit's questions about base images without a
// registry: every image is an empty linux/amd64 one. The lint rules that
// need a base image's own configuration (its platform, its variables) see
// nothing; those are only checked by a real build.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	config, err := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": map[string]any{}})
	return ref, digest.FromBytes([]byte(ref)), config, err
}

// CheckDockerfile runs on f the checks of `docker build --check`
// (BuildKit's Dockerfile frontend: its parser, then its linter over every
// stage, with any error a build would stop on) and returns each warning
// and error, and what the final stage lacks: a non-root USER, an EXPOSE of
// the relay's HTTP port, and a HEALTHCHECK or a comment in that stage
// saying why there is none.
func CheckDockerfile(f File, relay *Relay) []string {
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(f.Path+": "+format, args...))
	}
	src := llb.NewSourceMap(nil, f.Path, "Dockerfile", f.Content)
	src.Definition = &llb.Definition{}
	results, err := dockerfile2llb.DockerfileLint(context.Background(), f.Content, dockerfile2llb.ConvertOpt{
		SourceMap:    src,
		MetaResolver: offlineImages{},
	})
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", f.Path, err)}
	}
	for _, w := range results.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		add("line %d: %s: %s (%s)", line, w.RuleName, w.Detail, w.URL)
	}
	if results.Error != nil {
		add("%s", results.Error.Message)
	}

	ast, err := parser.Parse(bytes.NewReader(f.Content))
	if err != nil {
		add("%v", err)
		return problems
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil || len(stages) == 0 {
		add("no stages: %v", err)
		return problems
	}
	// A --from that names no stage is an image to pull: docker.io/library/
	// NAME:latest for a bare name, most likely a misspelt stage.
	for i, st := range stages {
		for _, c := range st.Commands {
			cp, ok := c.(*instructions.CopyCommand)
			if !ok || cp.From == "" {
				continue
			}
			known := strings.ContainsAny(cp.From, ":@/")
			for _, earlier := range stages[:i] {
				known = known || strings.EqualFold(earlier.Name, cp.From)
			}
			if n, err := strconv.Atoi(cp.From); err == nil && n < i {
				known = true
			}
			if !known {
				add("COPY --from=%s names no earlier stage (a build would pull the image docker.io/library/%s:latest)", cp.From, cp.From)
			}
		}
	}
	final := stages[len(stages)-1]
	var user string
	exposed, healthcheck := false, false
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			for _, p := range c.Ports {
				if strings.TrimSuffix(p, "/tcp") == relay.HTTPPort() {
					exposed = true
				}
			}
		case *instructions.HealthCheckCommand:
			healthcheck = true
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		add("the final stage runs as root: give it a USER, numeric so that Kubernetes' runAsNonRoot can verify it")
	}
	if !exposed {
		add("the final stage does not EXPOSE %s, RELAY_HTTP_ADDR's default port", relay.HTTPPort())
	}
	if !healthcheck {
		// The comments of the final stage: those above its FROM, and above
		// each of its instructions.
		explained := strings.Contains(strings.Join(final.Comments, "\n"), "HEALTHCHECK")
		from := false
		for _, n := range ast.AST.Children {
			if strings.EqualFold(n.Value, "from") {
				from = n.StartLine >= final.Location[0].Start.Line
			}
			if from && strings.Contains(strings.Join(n.PrevComment, "\n"), "HEALTHCHECK") {
				explained = true
			}
		}
		if !explained {
			add("the final stage has no HEALTHCHECK, and no comment in it says why not")
		}
	}
	return problems
}
