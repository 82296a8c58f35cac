package pgsource

// What the source accepts of a table's columns, for `relay check`
// (package pgops), which reads them from the catalog before any stream
// does.

// ColumnsOf is the column mapping of table t.
func (c *Config) ColumnsOf(t Table) Columns { return c.columnsOf(t) }

// CheckMapping returns the error the source stops with when table t, whose
// columns are names with the type OIDs types, does not fit the mapping m;
// nil when it does.
func CheckMapping(t Table, names []string, types []uint32, m Columns) error {
	cols := make([]column, len(names))
	for i, name := range names {
		cols[i] = column{name: name, typ: types[i]}
	}
	_, err := newRelation(t.Schema, t.Name, cols, m)
	return err
}

// PayloadTypeOK reports whether the source publishes a payload column of
// the type with this OID.
func PayloadTypeOK(oid uint32) bool { return payloadTypeOK(oid) }

// BinaryTypeOK reports whether the source reads values of the type with
// this OID in pgoutput's binary format (binary.go).
func BinaryTypeOK(oid uint32) bool { return binaryTypeOK(oid) }
