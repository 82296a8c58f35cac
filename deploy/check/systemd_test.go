package check

import (
	"strings"
	"testing"
)

func TestSystemdUnit(t *testing.T) {
	f := readFiles(t, "deploy/systemd/relay.service", "deploy/systemd/relay.env")
	for _, p := range CheckSystemdUnit(f[0], f[1], testRelay(t)) {
		t.Error(p)
	}
}

func TestSystemdUnitCatchesMistakes(t *testing.T) {
	relay := testRelay(t)
	f := readFiles(t, "deploy/systemd/relay.service", "deploy/systemd/relay.env")
	unit, env := f[0], f[1]
	cases := []struct {
		name      string
		unit, env File
		want      string
	}{
		{"misspelt key", broken(t, unit, "ProtectHome=yes", "ProtectHom=yes"), env, "Unknown key 'ProtectHom'"},
		{"bad value", broken(t, unit, "Type=exec", "Type=exek"), env, "Failed to parse service type"},
		{"binary path that is no absolute path", broken(t, unit, "ExecStart=/usr/local/bin/relay", "ExecStart=relay-bin"), env, "relay-bin"},
		{"binary path not where it is installed", broken(t, unit, "ExecStart=/usr/local/bin/relay", "ExecStart=/usr/bin/relay"), env, "runs /usr/bin/relay, which is not where"},
		{"unknown variable in the unit", broken(t, unit, "Environment=RELAY_AMQP_URL_FILE=", "Environment=RELAY_AMQP_URI_FILE="), env, "sets RELAY_AMQP_URI_FILE"},
		{"unknown variable in the environment file", unit, broken(t, env, "RELAY_SLOT=", "RELAY_SLOTS="), "sets RELAY_SLOTS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := CheckSystemdUnit(c.unit, c.env, relay)
			t.Log(strings.Join(problems, "\n"))
			wantProblem(t, c.name, problems, c.want)
		})
	}
}
