package check

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// systemUnits is where Debian's systemd keeps the units a service's
// dependencies (sysinit.target, network-online.target) are.
const systemUnits = "/usr/lib/systemd/system"

// CheckSystemdUnit runs `systemd-analyze verify` on the unit in a root
// directory made for it: the system's units, the unit in
// /etc/systemd/system, and the relay built from this repository at every
// path its Exec lines name, so that the unit is verified with the binary
// path it gives. systemd-analyze exits 0 on an unknown key or a value it
// cannot parse, only printing them, so any output is a problem. It also
// checks that the binary path is the one its install instructions (its
// opening comment) put the relay at, and that the unit's RELAY_ variables, and those of envFile (the
// EnvironmentFile it is installed as), are ones the relay reads.
func CheckSystemdUnit(unit, envFile File, relay *Relay) []string {
	analyze, err := tool("systemd-analyze", "systemd")
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	root, err := os.MkdirTemp("", "systemd-root-")
	if err != nil {
		return []string{err.Error()}
	}
	defer os.RemoveAll(root)
	if err := copyTree(systemUnits, filepath.Join(root, systemUnits)); err != nil {
		return []string{fmt.Sprintf("copy %s: %v", systemUnits, err)}
	}
	if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
		return []string{err.Error()}
	}
	name := filepath.Base(unit.Path)
	unitPath := filepath.Join(root, "etc/systemd/system", name)
	if err := os.MkdirAll(filepath.Dir(unitPath), 0o755); err != nil {
		return []string{err.Error()}
	}
	if err := os.WriteFile(unitPath, unit.Content, 0o644); err != nil {
		return []string{err.Error()}
	}
	binary, err := os.ReadFile(relay.Binary)
	if err != nil {
		return []string{err.Error()}
	}
	sc := bufio.NewScanner(bytes.NewReader(unit.Content))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		key, value, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		key = strings.TrimSpace(key)
		switch {
		case strings.HasPrefix(key, "Exec"):
			// ExecStart=[@-:+!]/path args
			fields := strings.Fields(strings.TrimLeft(strings.TrimSpace(value), "@-:+!"))
			if len(fields) == 0 || !filepath.IsAbs(fields[0]) {
				continue
			}
			// The unit's comment says how to install the binary; the
			// path must be the one it names.
			if !bytes.Contains(unit.Content, []byte("bin/relay "+fields[0]+"\n")) {
				add("%s: %s runs %s, which is not where its install instructions (install … bin/relay PATH) put the relay", unit.Path, key, fields[0])
			}
			dst := filepath.Join(root, fields[0])
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return []string{err.Error()}
			}
			if err := os.WriteFile(dst, binary, 0o755); err != nil {
				return []string{err.Error()}
			}
		case key == "Environment":
			for _, kv := range strings.Fields(strings.Trim(value, `"`)) {
				v, _, _ := strings.Cut(kv, "=")
				if strings.HasPrefix(v, "RELAY_") && !relay.KnownVariable(v) {
					add("%s: sets %s, which the relay does not read", unit.Path, v)
				}
			}
		}
	}
	out, err := run(root, analyze, "verify", "--root="+root, name)
	if err != nil || strings.TrimSpace(out) != "" {
		add("systemd-analyze verify %s (exit: %v):\n%s", unit.Path, err, strings.ReplaceAll(out, root, ""))
	}
	sc = bufio.NewScanner(bytes.NewReader(envFile.Content))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			add("%s: %q is not VARIABLE=value", envFile.Path, line)
			continue
		}
		if !relay.KnownVariable(k) {
			add("%s: sets %s, which the relay does not read", envFile.Path, k)
		}
	}
	return problems
}

// copyTree copies a directory of files and symbolic links.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, r)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		default:
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, 0o644)
		}
	})
}
