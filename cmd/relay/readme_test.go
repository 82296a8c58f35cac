package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestReadmeDocumentsEveryVariable keeps README's configuration table, the
// config struct and `relay --help` (generated from the struct) in agreement.
func TestReadmeDocumentsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // variable → documented default
	row := regexp.MustCompile("(?m)^\\| `(RELAY_[A-Z0-9_]+)` \\| *([^|]*?) *\\|")
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		if strings.HasPrefix(m[1], "RELAY_TEST_") {
			continue
		}
		rows[m[1]] = strings.TrimSpace(m[2])
	}
	var names []string
	for _, v := range variables() {
		names = append(names, v.Name)
		doc, ok := rows[v.Name]
		if !ok {
			t.Errorf("%s is not in README's configuration table", v.Name)
			continue
		}
		if v.Default != "" && doc != "`"+v.Default+"`" {
			t.Errorf("%s: README says default %s, the code %q", v.Name, doc, v.Default)
		}
	}
	for name := range rows {
		if !slices.Contains(names, name) {
			t.Errorf("README documents %s, which the relay does not read", name)
		}
	}
}

// TestReadmeDocumentsPerTableSettings: README's configuration table has a
// row for the per-table variables that names every per-table setting.
func TestReadmeDocumentsPerTableSettings(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := ""
	for line := range strings.Lines(string(readme)) {
		if strings.HasPrefix(line, "| `RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>` |") {
			row = line
		}
	}
	if row == "" {
		t.Fatal("README's configuration table has no row for RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>")
	}
	for _, s := range perTableSettings() {
		if !strings.Contains(row, "`"+s+"`") {
			t.Errorf("README's per-table row does not name %s", s)
		}
	}
}
