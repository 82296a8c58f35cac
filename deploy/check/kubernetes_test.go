package check

import (
	"path/filepath"
	"strings"
	"testing"
)

const k8sDir = "deploy/kubernetes"

func k8sFiles(t *testing.T) []File {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(Root(), k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, n := range names {
		paths = append(paths, k8sDir+"/"+filepath.Base(n))
	}
	if len(paths) < 8 {
		t.Fatalf("found %d files in %s", len(paths), k8sDir)
	}
	return readFiles(t, paths...)
}

// replaced returns files with the one at path broken.
func replaced(t *testing.T, files []File, path, old, new string) []File {
	t.Helper()
	out := make([]File, len(files))
	copy(out, files)
	for i, f := range out {
		if f.Path == path {
			out[i] = broken(t, f, old, new)
			return out
		}
	}
	t.Fatalf("no file %s", path)
	return nil
}

func TestKubernetesFiles(t *testing.T) {
	for _, p := range CheckKubernetes(k8sDir, k8sFiles(t), testRelay(t)) {
		t.Error(p)
	}
}

func TestKubernetesCatchesMistakes(t *testing.T) {
	relay := testRelay(t)
	files := k8sFiles(t)
	dep, cm, svc := k8sDir+"/deployment.yaml", k8sDir+"/configmap.yaml", k8sDir+"/service.yaml"
	cases := []struct {
		name, file, old, new, want string
	}{
		{"misspelt field", dep, "              port: http\n            periodSeconds: 5", "              prot: http\n            periodSeconds: 5", `unknown field "spec.template.spec.containers[0].readinessProbe.httpGet.prot"`},
		{"field in the wrong case", dep, "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", "readOnlyRootFileSystem"},
		{"misspelt field of a ServiceMonitor", k8sDir + "/servicemonitor.yaml", "interval: 15s", "intervall: 15s", `unknown field "spec.endpoints[0].intervall"`},
		{"misspelt field of a PrometheusRule", k8sDir + "/prometheusrule.yaml", "    - name: relay\n", "    - name: relay\n      rule: []\n", `unknown field "spec.groups[0].rule"`},
		{"misspelt field of a PodDisruptionBudget", k8sDir + "/pdb.yaml", "maxUnavailable: 1", "maxUnavailible: 1", "maxUnavailible"},
		{"misspelt field in the patch", k8sDir + "/kafka-patch.yaml", "value: kafka\n", "valu: kafka\n", `.valu"`},
		{"stream patch that keeps the AMQP sink", k8sDir + "/stream-patch.yaml", "value: rabbitmq-stream\n", "value: rabbitmq\n", `with stream-patch.yaml: the Deployment's RELAY_SINK is "rabbitmq", not rabbitmq-stream`},
		{"stream patch's secret file not in the secret", k8sDir + "/stream-patch.yaml", "secrets/stream-url", "secrets/stream", "but secret relay-secrets has no key stream"},
		{"patch that no longer applies", k8sDir + "/kafka-patch.yaml", "  name: relay\nspec:", "  name: relay-x\nspec:", "with kafka-patch.yaml"},
		{"bad PromQL in the PrometheusRule", k8sDir + "/prometheusrule.yaml", `expr: up{job="relay"} == 0`, `expr: up{job="relay" == 0`, "promtool check rules"},
		{"unknown variable in the ConfigMap", cm, "RELAY_SLOT: outbox_relay", "RELAY_SLOTT: outbox_relay", "ConfigMap relay sets RELAY_SLOTT"},
		{"unknown variable in env", dep, "- name: RELAY_AMQP_URL_FILE", "- name: RELAY_AMQP_URI_FILE", "sets RELAY_AMQP_URI_FILE"},
		{"probe on a path the relay does not serve", dep, "path: /healthz", "path: /health", "livenessProbe asks /health"},
		{"probe on the wrong port", dep, "              port: http\n            periodSeconds: 10", "              port: 9090\n            periodSeconds: 10", "livenessProbe asks port 9090"},
		{"root", dep, "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot is not true"},
		{"writable root filesystem", dep, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "no read-only root filesystem"},
		{"secret file not in the secret", dep, "value: /etc/relay/secrets/amqp-url", "value: /etc/relay/secrets/amqp_url", "has no key amqp_url"},
		{"patch's secret file not in the secret", k8sDir + "/kafka-patch.yaml", "secrets/kafka-sasl-password", "secrets/kafka-password", "with kafka-patch.yaml: Deployment relay: RELAY_KAFKA_SASL_PASSWORD_FILE=/etc/relay/secrets/kafka-password, but secret relay-secrets has no key kafka-password"},
		{"Service selecting nothing", svc, "  selector:\n    app.kubernetes.io/name: relay", "  selector:\n    app.kubernetes.io/name: relais", "Service relay does not select"},
		{"resource missing from the kustomization", k8sDir + "/kustomization.yaml", "  - pdb.yaml\n", "", "pdb.yaml is neither a resource nor a patch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := CheckKubernetes(k8sDir, replaced(t, files, c.file, c.old, c.new), relay)
			t.Log(strings.Join(problems, "\n"))
			wantProblem(t, c.name, problems, c.want)
		})
	}
	t.Run("unknown kind", func(t *testing.T) {
		extra := append(replaced(t, files, k8sDir+"/kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - hpa.yaml\n"),
			File{Path: k8sDir + "/hpa.yaml", Content: []byte("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: relay}\n")})
		wantProblem(t, "unknown kind", CheckKubernetes(k8sDir, extra, relay), "no kind \"HorizontalPodAutoscaler\"")
	})
}
