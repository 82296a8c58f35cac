package pgsource

import (
	"os"
	"strings"
	"testing"
)

func TestStateDDLMatchesTheSchemaFile(t *testing.T) {
	b, err := os.ReadFile("../../schema/relay_state.sql")
	if err != nil {
		t.Fatal(err)
	}
	var sql []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "--") && strings.TrimSpace(line) != "" {
			sql = append(sql, line)
		}
	}
	if got := strings.Join(sql, "\n"); got != stateDDL {
		t.Errorf("schema/relay_state.sql:\n%s\nthe relay creates:\n%s", got, stateDDL)
	}
}
