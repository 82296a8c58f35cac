package check

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// File is one file to check: its path in the repository (relative paths
// in it resolve from there) and its content, which a test may have broken.
type File struct {
	Path    string
	Content []byte
}

// ReadFiles reads files of the repository by their path from its root.
func ReadFiles(paths ...string) ([]File, error) {
	var files []File
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(Root(), p))
		if err != nil {
			return nil, err
		}
		files = append(files, File{Path: p, Content: b})
	}
	return files, nil
}

// LoadCompose loads compose files as `docker compose -f a -f b` does:
// compose-go's loader merges them, validates the result against the
// Compose schema and interpolates ${VARIABLES}, with an empty environment
// so that the caller's shell does not change the outcome. The project
// directory is the first file's.
func LoadCompose(files []File) (*types.Project, error) {
	details := types.ConfigDetails{
		WorkingDir:  filepath.Join(Root(), filepath.Dir(files[0].Path)),
		Environment: types.Mapping{},
	}
	for _, f := range files {
		details.ConfigFiles = append(details.ConfigFiles, types.ConfigFile{
			Filename: filepath.Join(Root(), f.Path), Content: f.Content,
		})
	}
	return loader.LoadWithContext(context.Background(), details)
}

// CheckCompose loads the files into one project and returns what
// `docker compose up` would trip on, or what would not do what the files
// say: a schema or interpolation error, a ${VARIABLE} with no default, a
// build context, Dockerfile or bind-mounted file missing from the
// repository, an image without a tag, a depends_on condition the
// dependency cannot meet, two services publishing the same host port, a
// RELAY_ variable the relay does not read, and a relay container port
// that is not its RELAY_HTTP_ADDR's.
func CheckCompose(files []File, relay *Relay) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	for _, f := range files {
		var model map[string]any
		if err := yaml.Unmarshal(f.Content, &model); err != nil {
			add("%s: %v", f.Path, err)
			continue
		}
		vars := template.ExtractVariables(model, template.DefaultPattern)
		names := make([]string, 0, len(vars))
		for name := range vars {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if v := vars[name]; v.DefaultValue == "" && !v.Required {
				add("%s: ${%s} has no default (${%s:-value}) and is not required (${%s:?message}): docker compose would make it an empty string", f.Path, name, name, name)
			}
		}
	}

	project, err := LoadCompose(files)
	if err != nil {
		return append(problems, fmt.Sprintf("%s: %v", composeNames(files), err))
	}
	where := composeNames(files)
	published := map[string]string{}
	for _, name := range project.ServiceNames() {
		s := project.Services[name]
		if s.Build != nil {
			ctxDir := s.Build.Context
			if !filepath.IsAbs(ctxDir) {
				ctxDir = filepath.Join(project.WorkingDir, ctxDir)
			}
			dockerfile := s.Build.Dockerfile
			if dockerfile == "" {
				dockerfile = "Dockerfile"
			}
			if !filepath.IsAbs(dockerfile) {
				dockerfile = filepath.Join(ctxDir, dockerfile)
			}
			if st, err := os.Stat(ctxDir); err != nil || !st.IsDir() {
				add("%s: service %s builds from %s, which is not a directory of the repository", where, name, rel(ctxDir))
			} else if _, err := os.Stat(dockerfile); err != nil {
				add("%s: service %s builds with %s, which does not exist", where, name, rel(dockerfile))
			}
		} else {
			ref := s.Image
			if i := strings.LastIndex(ref, "/"); i >= 0 {
				ref = ref[i+1:]
			}
			if !strings.Contains(ref, ":") && !strings.Contains(ref, "@") {
				add("%s: service %s runs image %q without a tag: pin one", where, name, s.Image)
			}
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				add("%s: service %s mounts %s, which does not exist in the repository", where, name, rel(v.Source))
			}
		}
		for dep, d := range s.DependsOn {
			other, ok := project.Services[dep]
			if !ok {
				add("%s: service %s depends on %s, which is not a service", where, name, dep)
				continue
			}
			if d.Condition == types.ServiceConditionHealthy && (other.HealthCheck == nil || other.HealthCheck.Disable || len(other.HealthCheck.Test) == 0) {
				add("%s: service %s waits for %s to be healthy, but %s has no healthcheck", where, name, dep, dep)
			}
		}
		for _, p := range s.Ports {
			if p.Published == "" {
				continue
			}
			proto := p.Protocol
			if proto == "" {
				proto = "tcp"
			}
			for _, port := range expandPorts(p.Published) {
				// Any address (0.0.0.0 or none) collides with every other.
				key := port + "/" + proto
				for k, other := range published {
					kIP, kPort, _ := strings.Cut(k, " ")
					if kPort == key && (kIP == p.HostIP || kIP == "" || p.HostIP == "" || kIP == "0.0.0.0" || p.HostIP == "0.0.0.0") {
						add("%s: services %s and %s both publish host port %s", where, other, name, key)
					}
				}
				published[p.HostIP+" "+key] = name
			}
		}
		var relayAddr string
		isRelay := false
		for k, v := range s.Environment {
			if !strings.HasPrefix(k, "RELAY_") {
				continue
			}
			isRelay = true
			if !relay.KnownVariable(k) {
				add("%s: service %s sets %s, which the relay does not read", where, name, k)
			}
			if k == "RELAY_HTTP_ADDR" && v != nil {
				relayAddr = *v
			}
		}
		if isRelay {
			port := relay.HTTPPort()
			if relayAddr != "" {
				_, port, _ = strings.Cut(relayAddr, ":")
			}
			for _, p := range s.Ports {
				if fmt.Sprint(p.Target) != port {
					add("%s: service %s publishes container port %d, but the relay listens on %s", where, name, p.Target, port)
				}
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// expandPorts turns "8080" or "8080-8082" into its ports.
func expandPorts(published string) []string {
	lo, hi, ok := strings.Cut(published, "-")
	if !ok {
		return []string{published}
	}
	var a, b int
	if _, err := fmt.Sscan(lo, &a); err != nil {
		return []string{published}
	}
	if _, err := fmt.Sscan(hi, &b); err != nil {
		return []string{published}
	}
	var out []string
	for p := a; p <= b; p++ {
		out = append(out, fmt.Sprint(p))
	}
	return out
}

func composeNames(files []File) string {
	var names []string
	for _, f := range files {
		names = append(names, f.Path)
	}
	return strings.Join(names, " + ")
}

// rel is path relative to the repository, for messages.
func rel(path string) string {
	if r, err := filepath.Rel(Root(), path); err == nil {
		return r
	}
	return path
}
