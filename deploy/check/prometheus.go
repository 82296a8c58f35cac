package check

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// Promtool runs `promtool check config` on the configuration that the
// project's Prometheus service (the one whose command names
// --config.file) is given, with the rule files it names mapped from their
// path in the container to the files mounted there; and `promtool check
// rules` on the rule files. A rule file that is not mounted is a problem.
func Promtool(project *types.Project, files map[string][]byte) []string {
	promtool, err := tool("promtool", "prometheus")
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	found := false
	for _, name := range project.ServiceNames() {
		s := project.Services[name]
		configPath := ""
		for _, arg := range s.Command {
			if v, ok := strings.CutPrefix(arg, "--config.file="); ok {
				configPath = v
			}
		}
		if configPath == "" {
			continue
		}
		found = true
		mounts := map[string]string{} // container path → repository path
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				mounts[v.Target] = rel(v.Source)
			}
		}
		configFile, ok := mounts[configPath]
		if !ok {
			add("service %s: its --config.file %s is not mounted from the repository", name, configPath)
			continue
		}
		content, ok := files[configFile]
		if !ok {
			if content, err = os.ReadFile(filepath.Join(Root(), configFile)); err != nil {
				add("service %s: %v", name, err)
				continue
			}
		}
		var config map[string]any
		if err := yaml.Unmarshal(content, &config); err != nil {
			add("%s: %v", configFile, err)
			continue
		}
		dir, err := os.MkdirTemp("", "promtool-")
		if err != nil {
			return append(problems, err.Error())
		}
		defer os.RemoveAll(dir)
		var ruleFiles []string
		if rf, ok := config["rule_files"].([]any); ok {
			for i, r := range rf {
				path, _ := r.(string)
				if !filepath.IsAbs(path) {
					path = filepath.Join(filepath.Dir(configPath), path)
				}
				src, ok := mounts[path]
				if !ok {
					add("%s: rule file %s is not mounted into service %s", configFile, path, name)
					continue
				}
				dst := filepath.Join(dir, fmt.Sprintf("rules-%d.yml", i))
				data, ok := files[src]
				if !ok {
					if data, err = os.ReadFile(filepath.Join(Root(), src)); err != nil {
						add("%v", err)
						continue
					}
				}
				if err := os.WriteFile(dst, data, 0o644); err != nil {
					return append(problems, err.Error())
				}
				rf[i] = dst
				ruleFiles = append(ruleFiles, src)
			}
		}
		out, err := yaml.Marshal(config)
		if err != nil {
			return append(problems, err.Error())
		}
		tmp := filepath.Join(dir, "prometheus.yml")
		if err := os.WriteFile(tmp, out, 0o644); err != nil {
			return append(problems, err.Error())
		}
		if out, err := run(dir, promtool, "check", "config", tmp); err != nil {
			add("promtool check config %s (rule files %s): %v\n%s", configFile, strings.Join(ruleFiles, ", "), err, out)
		}
	}
	if !found {
		add("no service runs Prometheus with --config.file")
	}
	return problems
}

// PromtoolRules runs `promtool check rules` on a rule file.
func PromtoolRules(f File) []string {
	promtool, err := tool("promtool", "prometheus")
	if err != nil {
		return []string{err.Error()}
	}
	dir, err := os.MkdirTemp("", "promtool-")
	if err != nil {
		return []string{err.Error()}
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(f.Path))
	if err := os.WriteFile(tmp, f.Content, 0o644); err != nil {
		return []string{err.Error()}
	}
	if out, err := run(dir, promtool, "check", "rules", tmp); err != nil {
		return []string{fmt.Sprintf("promtool check rules %s: %v\n%s", f.Path, err, out)}
	}
	return nil
}

// RuleExprs returns the expressions of a Prometheus rule file.
func RuleExprs(f File) ([]string, error) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(f.Content, &rules); err != nil {
		return nil, fmt.Errorf("%s: %v", f.Path, err)
	}
	var out []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
		}
	}
	return out, nil
}
