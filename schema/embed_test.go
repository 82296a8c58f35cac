package schema

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestRelayStateIsDefinedOnce: role.sql includes relay_state.sql with psql's
// \ir rather than repeating its DDL, so the tables a DBA creates are the
// ones the relay creates (RelayState).
func TestRelayStateIsDefinedOnce(t *testing.T) {
	role, err := os.ReadFile("role.sql")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\\ir relay_state\.sql$`).Match(role) {
		t.Errorf("role.sql does not include relay_state.sql (a line `\\ir relay_state.sql`)")
	}
	if ddl := regexp.MustCompile(`(?i)CREATE\s+(TABLE|SCHEMA)[^;]*\brelay\.?`).FindAll(role, -1); len(ddl) > 0 {
		t.Errorf("role.sql declares relay state itself (%q); relay_state.sql is the one definition", ddl)
	}
	for _, table := range []string{"relay.backfill", "relay.slot_position", "relay.replay"} {
		if !strings.Contains(RelayState, "CREATE TABLE IF NOT EXISTS "+table+" (") {
			t.Errorf("RelayState does not create %s", table)
		}
		if !strings.Contains(string(role), " ON "+table+" TO relay") {
			t.Errorf("role.sql grants the role nothing on %s", table)
		}
	}
}
