package main

import (
	"encoding/json"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// No Docker engine runs where the tests do, so the Dockerfile is kept
// correct by construction: these tests check what can be checked by
// reading it next to the Makefile and the configuration.

// dockerStage is one FROM … stage of a Dockerfile.
type dockerStage struct {
	name, image  string
	instructions [][2]string // instruction (upper case), arguments
}

// parseDockerfile splits a Dockerfile into stages, joining continued lines
// and dropping comments.
func parseDockerfile(t *testing.T, text string) []dockerStage {
	t.Helper()
	var stages []dockerStage
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	for _, l := range logical {
		instr, args, _ := strings.Cut(l, " ")
		instr = strings.ToUpper(instr)
		args = strings.TrimSpace(args)
		if instr == "FROM" {
			f := strings.Fields(args)
			s := dockerStage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %s before the first FROM", instr)
		}
		stages[len(stages)-1].instructions = append(stages[len(stages)-1].instructions, [2]string{instr, args})
	}
	return stages
}

func (s dockerStage) all(instr string) []string {
	var out []string
	for _, i := range s.instructions {
		if i[0] == instr {
			out = append(out, i[1])
		}
	}
	return out
}

// makeVars reads the Makefile's simple variable assignments.
func makeVars(t *testing.T, text string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	assign := regexp.MustCompile(`(?m)^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$`)
	for _, m := range assign.FindAllStringSubmatch(text, -1) {
		vars[m[1]] = strings.TrimSpace(m[2])
	}
	return vars
}

// makeRecipe returns the recipe lines of a Makefile target.
func makeRecipe(text, target string) []string {
	var lines []string
	in := false
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, target+":"):
			in = true
		case in && strings.HasPrefix(line, "\t"):
			lines = append(lines, strings.TrimSpace(line))
		case in:
			return lines
		}
	}
	return lines
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDockerfileBuildsLikeTheMakefile: the image's binary is built with the
// same go command as `make build`, VERSION stamped the same way.
func TestDockerfileBuildsLikeTheMakefile(t *testing.T) {
	makefile := readRepoFile(t, "Makefile")
	stages := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages; want a build stage and a runtime stage", len(stages))
	}

	vars := makeVars(t, makefile)
	build := vars["BUILD"]
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "$(LDFLAGS)"} {
		if !strings.Contains(build, want) {
			t.Fatalf("Makefile BUILD = %q lacks %s", build, want)
		}
	}
	if !strings.Contains(vars["LDFLAGS"], "-X main.version=$(VERSION)") {
		t.Fatalf("Makefile LDFLAGS = %q does not stamp main.version", vars["LDFLAGS"])
	}
	// The Makefile's command as a Dockerfile writes it: go is on PATH and
	// VERSION is a build argument.
	want := strings.NewReplacer("$(GO)", "go", "$(LDFLAGS)", vars["LDFLAGS"]).Replace(build)
	want = strings.ReplaceAll(want, "$(VERSION)", "${VERSION}")
	wantPkg := ""
	for _, line := range makeRecipe(makefile, "build") {
		if rest, ok := strings.CutPrefix(line, "$(BUILD) "); ok {
			f := strings.Fields(rest)
			wantPkg = f[len(f)-1]
		}
	}
	if wantPkg == "" {
		t.Fatal("Makefile: no `$(BUILD) … ./pkg` line in the build target")
	}

	var buildStage *dockerStage
	var gotCmd, out string
	for i, s := range stages[:len(stages)-1] {
		for _, run := range s.all("RUN") {
			if !strings.Contains(run, " build ") {
				continue
			}
			buildStage = &stages[i]
			cmd, rest, ok := strings.Cut(run, " -o ")
			if !ok {
				t.Fatalf("Dockerfile: go build without -o: %s", run)
			}
			f := strings.Fields(rest)
			if len(f) != 2 {
				t.Fatalf("Dockerfile: want `-o OUT PKG` after the flags, got %q", rest)
			}
			gotCmd, out = cmd, f[0]
			if f[1] != wantPkg {
				t.Errorf("Dockerfile builds %s, the Makefile %s", f[1], wantPkg)
			}
		}
	}
	if buildStage == nil {
		t.Fatal("Dockerfile: no go build in a build stage")
	}
	if gotCmd != want {
		t.Errorf("Dockerfile's go build differs from the Makefile's BUILD:\n got: %s\nwant: %s", gotCmd, want)
	}
	if !hasArg(buildStage.all("ARG"), "VERSION") {
		t.Error("Dockerfile: the build stage does not declare ARG VERSION")
	}
	docker := strings.Join(makeRecipe(makefile, "docker"), "\n")
	if !strings.Contains(docker, "--build-arg VERSION=$(VERSION)") {
		t.Errorf("make docker does not pass VERSION to the build: %q", docker)
	}

	runtime := stages[len(stages)-1]
	copied := ""
	for _, c := range runtime.all("COPY") {
		f := strings.Fields(c)
		if len(f) == 3 && f[0] == "--from="+buildStage.name && f[1] == out {
			copied = f[2]
		}
	}
	if copied == "" {
		t.Fatalf("Dockerfile: the runtime stage does not COPY --from=%s %s", buildStage.name, out)
	}
	ep := runtime.all("ENTRYPOINT")
	if len(ep) != 1 {
		t.Fatalf("Dockerfile: want one ENTRYPOINT in the runtime stage, got %q", ep)
	}
	var argv []string
	if err := json.Unmarshal([]byte(ep[0]), &argv); err != nil || len(argv) == 0 {
		// The exec form: no shell exists in the runtime image to run the
		// shell form, and signals must reach the relay itself.
		t.Fatalf("Dockerfile: ENTRYPOINT %s is not the exec (JSON) form", ep[0])
	}
	if argv[0] != copied {
		t.Errorf("Dockerfile: ENTRYPOINT runs %s, the binary is copied to %s", argv[0], copied)
	}
}

func hasArg(args []string, name string) bool {
	for _, a := range args {
		if n, _, _ := strings.Cut(a, "="); n == name {
			return true
		}
	}
	return false
}

// imageUsers are the non-root users runtime base images are known to
// define in their /etc/passwd.
var imageUsers = map[string][]string{
	"gcr.io/distroless/static-debian12:nonroot": {"65532:65532", "nonroot:nonroot", "nonroot"},
	"gcr.io/distroless/static-debian13:nonroot": {"65532:65532", "nonroot:nonroot", "nonroot"},
}

// TestDockerfileRunsAsNonRootOnTheHTTPPort: the runtime image runs as a
// user its base image has, not root, and exposes RELAY_HTTP_ADDR's port.
func TestDockerfileRunsAsNonRootOnTheHTTPPort(t *testing.T) {
	stages := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	runtime := stages[len(stages)-1]

	users := runtime.all("USER")
	if len(users) == 0 {
		t.Fatal("Dockerfile: the runtime stage sets no USER, so it runs as root")
	}
	user := users[len(users)-1]
	if u, _, _ := strings.Cut(user, ":"); u == "0" || u == "root" {
		t.Errorf("Dockerfile: USER %s is root", user)
	}
	known, ok := imageUsers[runtime.image]
	if !ok {
		t.Fatalf("Dockerfile: runtime image %s: add its non-root users to imageUsers", runtime.image)
	}
	found := false
	for _, k := range known {
		found = found || k == user
	}
	if !found {
		t.Errorf("Dockerfile: USER %s does not exist in %s (it has %q)", user, runtime.image, known)
	}

	var def string
	for _, v := range variables() {
		if v.Name == "RELAY_HTTP_ADDR" {
			def = v.Default
		}
	}
	_, port, err := net.SplitHostPort(def)
	if err != nil {
		t.Fatalf("RELAY_HTTP_ADDR default %q: %v", def, err)
	}
	var exposed []string
	for _, e := range runtime.all("EXPOSE") {
		for _, p := range strings.Fields(e) {
			p, _, _ = strings.Cut(p, "/")
			if _, err := strconv.Atoi(p); err != nil {
				t.Errorf("Dockerfile: EXPOSE %s is not a port number", p)
			}
			exposed = append(exposed, p)
		}
	}
	if len(exposed) != 1 || exposed[0] != port {
		t.Errorf("Dockerfile exposes %q; RELAY_HTTP_ADDR defaults to %s", exposed, def)
	}
}
