package check

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	k8sjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// k8sDecoder decodes YAML into the Kubernetes API types, and the
// Prometheus Operator's, strictly: an unknown or duplicated field is an
// error, as it is to `kubectl apply` (its server-side field validation
// is strict by default).
var k8sDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return k8sjson.NewSerializerWithOptions(k8sjson.DefaultMetaFactory, scheme, scheme, k8sjson.SerializerOptions{Yaml: true, Strict: true})
}()

// decodeK8s decodes every document of a YAML file strictly.
func decodeK8s(name string, data []byte) ([]runtime.Object, []string) {
	var objs []runtime.Object
	var problems []string
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, _, err := k8sDecoder.Decode([]byte(doc), nil, nil)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s (document %d): %v", name, i+1, err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, problems
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// strategicDirectives are the keys of a strategic merge patch that are no
// fields of the patched type.
var strategicDirectives = regexp.MustCompile(`^\$(patch|retainKeys|deleteFromPrimitiveList/.*|setElementOrder/.*)$`)

// withoutDirectives removes strategic merge patch directives from a patch.
func withoutDirectives(data []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	var strip func(any) any
	strip = func(v any) any {
		switch v := v.(type) {
		case map[string]any:
			for k := range v {
				if strategicDirectives.MatchString(k) {
					delete(v, k)
				} else {
					v[k] = strip(v[k])
				}
			}
		case []any:
			for i := range v {
				v[i] = strip(v[i])
			}
		}
		return v
	}
	return yaml.Marshal(strip(v))
}

// kustomization is the part of kustomization.yaml this check reads.
type kustomization struct {
	Resources []string `json:"resources"`
	Patches   []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

// Kustomize renders dir of files (a kustomization) as `kubectl apply -k`
// does, with kustomize's own API.
func Kustomize(dir string, files []File) ([]byte, error) {
	fs := filesys.MakeFsInMemory()
	for _, f := range files {
		if err := fs.WriteFile(path.Join("/", f.Path), f.Content); err != nil {
			return nil, err
		}
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, path.Join("/", dir))
	if err != nil {
		return nil, err
	}
	return m.AsYaml()
}

// CheckKubernetes checks the files of deploy/kubernetes: every object
// decodes strictly into its API type, and so does what kustomize renders
// from kustomization.yaml, with and without the Kafka patch (patch files
// are decoded with their strategic merge directives taken out); every
// other file is a resource or a patch of the kustomization, or
// secret.example.yaml; the Deployment runs as non-root with a read-only
// root filesystem, its probes ask the relay's own paths on its HTTP port,
// its RELAY_ variables and the ConfigMap's are ones the relay reads, its
// *_FILE variables name files of the mounted secret; the Service, the
// ServiceMonitor and the PodDisruptionBudget select the Deployment's pods
// and its port; and the PrometheusRule passes promtool check rules.
func CheckKubernetes(dir string, files []File, relay *Relay) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	byName := map[string]File{}
	for _, f := range files {
		byName[path.Base(f.Path)] = f
	}
	kf, ok := byName["kustomization.yaml"]
	if !ok {
		return []string{dir + ": no kustomization.yaml"}
	}
	var k kustomization
	if err := yaml.Unmarshal(kf.Content, &k); err != nil {
		return []string{fmt.Sprintf("%s: %v", kf.Path, err)}
	}
	// The sink patches (Kafka, RabbitMQ streams) are commented out;
	// render with each of them too.
	block := regexp.MustCompile(`(?m)^# patches:\n(?:#   - path: \S+\n?)+`).Find(kf.Content)
	var optional []string
	for _, m := range regexp.MustCompile(`#   - path: (\S+)`).FindAllSubmatch(block, -1) {
		optional = append(optional, string(m[1]))
	}

	var objs []runtime.Object
	// The Secret example is no resource; its keys are checked against
	// the *_FILE variables of both renderings.
	var secretExample []runtime.Object
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := byName[name]
		isPatch := slices.ContainsFunc(k.Patches, func(p struct {
			Path string `json:"path"`
		}) bool {
			return p.Path == name
		}) || slices.Contains(optional, name)
		switch {
		case name == "kustomization.yaml":
			continue
		case isPatch:
			data, err := withoutDirectives(f.Content)
			if err != nil {
				add("%s: %v", f.Path, err)
				continue
			}
			_, ps := decodeK8s(f.Path, data)
			problems = append(problems, ps...)
			continue
		case !slices.Contains(k.Resources, name) && name != "secret.example.yaml":
			add("%s is neither a resource nor a patch of %s", f.Path, kf.Path)
		}
		o, ps := decodeK8s(f.Path, f.Content)
		problems = append(problems, ps...)
		objs = append(objs, o...)
		if name == "secret.example.yaml" {
			secretExample = o
		}
	}

	rendered, err := Kustomize(dir, files)
	if err != nil {
		add("kustomize build %s: %v", dir, err)
	} else {
		_, ps := decodeK8s("kustomize build "+dir, rendered)
		problems = append(problems, ps...)
	}
	if len(optional) == 0 {
		add("%s: no commented-out patches (# patches:\\n#   - path: …) to render the Kafka variant with", kf.Path)
	}
	for _, patch := range optional {
		enabled := bytes.Replace(kf.Content, block, []byte("patches:\n  - path: "+patch+"\n"), 1)
		withPatch := append(slices.Clone(files), File{Path: kf.Path, Content: enabled})
		withPatch = slices.DeleteFunc(withPatch, func(f File) bool { return f.Path == kf.Path && !bytes.Equal(f.Content, enabled) })
		rendered, err := Kustomize(dir, withPatch)
		if err != nil {
			add("kustomize build %s with %s: %v", dir, patch, err)
			continue
		}
		ro, ps := decodeK8s("kustomize build "+dir+" with "+patch, rendered)
		problems = append(problems, ps...)
		// Each patch switches the sink: kafka-patch.yaml to kafka,
		// stream-patch.yaml to rabbitmq-stream.
		want := map[string]string{"kafka-patch.yaml": "kafka", "stream-patch.yaml": "rabbitmq-stream"}[patch]
		for _, o := range ro {
			if d, ok := o.(*appsv1.Deployment); ok {
				env := map[string]string{}
				for _, c := range d.Spec.Template.Spec.Containers {
					for _, e := range c.Env {
						env[e.Name] = e.Value
					}
				}
				if sink := env["RELAY_SINK"]; sink == "" || sink == "rabbitmq" || want != "" && sink != want {
					add("kustomize build %s with %s: the Deployment's RELAY_SINK is %q, not %s", dir, patch, sink, cmp.Or(want, "another sink than rabbitmq"))
				}
				if _, ok := env["RELAY_AMQP_URL_FILE"]; ok {
					add("kustomize build %s with %s: the Deployment still sets RELAY_AMQP_URL_FILE", dir, patch)
				}
			}
		}
		problems = append(problems, checkObjects(dir+" with "+patch, append(ro, secretExample...), relay)...)
	}
	problems = append(problems, checkObjects(dir, objs, relay)...)
	return problems
}

// checkObjects checks how the objects fit together and with the relay.
func checkObjects(where string, objs []runtime.Object, relay *Relay) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(where+": "+format, args...)) }
	var (
		deployments []*appsv1.Deployment
		configMaps  = map[string]*corev1.ConfigMap{}
		secrets     = map[string]*corev1.Secret{}
		services    []*corev1.Service
		monitors    []*monitoringv1.ServiceMonitor
		pdbs        []*policyv1.PodDisruptionBudget
		rules       []*monitoringv1.PrometheusRule
	)
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			deployments = append(deployments, o)
		case *corev1.ConfigMap:
			configMaps[o.Name] = o
		case *corev1.Secret:
			secrets[o.Name] = o
		case *corev1.Service:
			services = append(services, o)
		case *monitoringv1.ServiceMonitor:
			monitors = append(monitors, o)
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, o)
		case *monitoringv1.PrometheusRule:
			rules = append(rules, o)
		}
	}
	for _, cm := range configMaps {
		for k := range cm.Data {
			if strings.HasPrefix(k, "RELAY_") && !relay.KnownVariable(k) {
				add("ConfigMap %s sets %s, which the relay does not read", cm.Name, k)
			}
		}
	}
	if len(deployments) != 1 {
		add("%d Deployments, want 1", len(deployments))
		return problems
	}
	d := deployments[0]
	pod := d.Spec.Template
	podLabels := labels.Set(pod.Labels)
	if sel, err := metaSelector(d.Spec.Selector.MatchLabels); err != nil || !sel.Matches(podLabels) {
		add("Deployment %s: its selector does not match its pods' labels", d.Name)
	}
	if len(pod.Spec.Containers) != 1 {
		add("Deployment %s: %d containers, want 1", d.Name, len(pod.Spec.Containers))
		return problems
	}
	c := pod.Spec.Containers[0]
	psc, csc := pod.Spec.SecurityContext, c.SecurityContext
	if !(csc != nil && csc.RunAsNonRoot != nil && *csc.RunAsNonRoot) && !(psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) {
		add("Deployment %s: runAsNonRoot is not true", d.Name)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		add("Deployment %s: container %s has no read-only root filesystem (securityContext.readOnlyRootFilesystem: true)", d.Name, c.Name)
	}
	if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		add("Deployment %s: container %s allows privilege escalation", d.Name, c.Name)
	}

	// The relay's environment: the ConfigMaps it reads, then env.
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			cm, ok := configMaps[ef.ConfigMapRef.Name]
			if !ok {
				add("Deployment %s: envFrom names ConfigMap %s, which is not among the resources", d.Name, ef.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[k] = v
			}
		}
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "RELAY_") && !relay.KnownVariable(e.Name) {
			add("Deployment %s sets %s, which the relay does not read", d.Name, e.Name)
		}
		env[e.Name] = e.Value
	}
	port := relay.HTTPPort()
	if addr, ok := env["RELAY_HTTP_ADDR"]; ok {
		_, port, _ = strings.Cut(addr, ":")
	}
	portNames := map[string]string{}
	for _, p := range c.Ports {
		portNames[p.Name] = fmt.Sprint(p.ContainerPort)
	}
	if !slices.Contains(mapValues(portNames), port) {
		add("Deployment %s: no container port is the relay's HTTP port %s", d.Name, port)
	}
	for _, probe := range []struct {
		name, path string
		p          *corev1.Probe
	}{{"livenessProbe", "/healthz", c.LivenessProbe}, {"readinessProbe", "/readyz", c.ReadinessProbe}} {
		if probe.p == nil || probe.p.HTTPGet == nil {
			add("Deployment %s: no %s.httpGet", d.Name, probe.name)
			continue
		}
		g := probe.p.HTTPGet
		p, _, _ := strings.Cut(g.Path, "?")
		if p != probe.path || !slices.Contains(relay.HTTPPaths, p) {
			add("Deployment %s: %s asks %s; the relay serves %s there (relay --help: %v)", d.Name, probe.name, g.Path, probe.path, relay.HTTPPaths)
		}
		got := g.Port.String()
		if n, ok := portNames[got]; ok {
			got = n
		}
		if got != port {
			add("Deployment %s: %s asks port %s; the relay listens on %s", d.Name, probe.name, g.Port.String(), port)
		}
	}

	// *_FILE variables name files of a mounted secret.
	mounts := map[string]string{} // mount path → secret name
	for _, vm := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name == vm.Name && v.Secret != nil {
				mounts[vm.MountPath] = v.Secret.SecretName
			}
		}
	}
	for k, v := range env {
		if !strings.HasPrefix(k, "RELAY_") || !strings.HasSuffix(k, "_FILE") {
			continue
		}
		secret, ok := mounts[path.Dir(v)]
		if !ok {
			add("Deployment %s: %s=%s is not in a mounted secret", d.Name, k, v)
			continue
		}
		if s, ok := secrets[secret]; ok {
			if _, ok := s.StringData[path.Base(v)]; !ok {
				if _, ok := s.Data[path.Base(v)]; !ok {
					add("Deployment %s: %s=%s, but secret %s has no key %s", d.Name, k, v, secret, path.Base(v))
				}
			}
		}
	}

	servicePorts := map[string]bool{}
	for _, s := range services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			add("Service %s does not select the Deployment's pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			servicePorts[p.Name] = true
			tp := p.TargetPort.String()
			if n, ok := portNames[tp]; ok {
				tp = n
			}
			if tp != port {
				add("Service %s: port %s targets %s, not the relay's HTTP port %s", s.Name, p.Name, p.TargetPort.String(), port)
			}
		}
	}
	for _, m := range monitors {
		matched := false
		for _, s := range services {
			if sel, err := metaSelector(m.Spec.Selector.MatchLabels); err == nil && sel.Matches(labels.Set(s.Labels)) {
				matched = true
			}
		}
		if !matched {
			add("ServiceMonitor %s selects no Service", m.Name)
		}
		for _, e := range m.Spec.Endpoints {
			if !servicePorts[e.Port] {
				add("ServiceMonitor %s: endpoint port %q is no Service port", m.Name, e.Port)
			}
			if e.Path != "" && !slices.Contains(relay.HTTPPaths, e.Path) {
				add("ServiceMonitor %s: path %s is not one the relay serves (%v)", m.Name, e.Path, relay.HTTPPaths)
			}
		}
	}
	for _, p := range pdbs {
		if sel, err := metaSelector(p.Spec.Selector.MatchLabels); err != nil || !sel.Matches(podLabels) {
			add("PodDisruptionBudget %s does not select the Deployment's pods", p.Name)
		}
	}
	for _, r := range rules {
		groups, err := json.Marshal(map[string]any{"groups": r.Spec.Groups})
		if err != nil {
			add("PrometheusRule %s: %v", r.Name, err)
			continue
		}
		y, err := yaml.JSONToYAML(groups)
		if err != nil {
			add("PrometheusRule %s: %v", r.Name, err)
			continue
		}
		for _, p := range PromtoolRules(File{Path: "prometheusrule-" + r.Name + ".yml", Content: y}) {
			add("PrometheusRule %s: %s", r.Name, p)
		}
	}
	sort.Strings(problems)
	return problems
}

func metaSelector(m map[string]string) (labels.Selector, error) {
	if len(m) == 0 {
		return nil, fmt.Errorf("empty selector")
	}
	return labels.SelectorFromSet(m), nil
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
