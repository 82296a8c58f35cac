package pgops

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// CheckConfig is what the preflight checks the database against.
type CheckConfig struct {
	pgsource.Config
	// Templates are the routing templates, keyed by the variable that sets
	// each: a placeholder naming a column the tables lack fails every row.
	// TableTemplates replaces them for the tables it names.
	Templates      map[string]*relay.Template
	TableTemplates map[pgsource.Table]map[string]*relay.Template
	// Variable names the variable that sets the global setting variable
	// (RELAY_COLUMN_ID, ...) for table t, for the fixes the findings
	// suggest; nil: the global variable itself.
	Variable func(t pgsource.Table, variable string) string
}

// templatesOf returns the routing templates of table t.
func (c *CheckConfig) templatesOf(t pgsource.Table) map[string]*relay.Template {
	if m, ok := c.TableTemplates[t]; ok {
		return m
	}
	return c.Templates
}

// variableOf names the variable that sets variable for table t.
func (c *CheckConfig) variableOf(t pgsource.Table) func(string) string {
	return func(v string) string {
		if c.Variable == nil {
			return v
		}
		return c.Variable(t, v)
	}
}

// checkTimeout bounds each connection attempt of the preflight, so that an
// unreachable server is reported rather than waited for.
const checkTimeout = 10 * time.Second

// Check reports, without changing anything, whether the database lets the
// relay run with cfg: wal_level, slot and sender headroom, the role's
// privileges, the tables and their columns, the publication and the slot.
// It returns every finding, problems or not; a query that fails becomes a
// failed finding, so the other checks still run.
func Check(ctx context.Context, cfg CheckConfig) []relay.Finding {
	var out []relay.Finding
	add := func(fs ...relay.Finding) { out = append(out, fs...) }
	where := relay.RedactURL(cfg.ConnString)

	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	conn, err := pgx.Connect(cctx, cfg.ConnString)
	cancel()
	if err != nil {
		return append(out, fail("database", fmt.Sprintf("cannot connect to %s: %v", where, err),
			"check RELAY_DATABASE_URL, that PostgreSQL runs and that pg_hba.conf admits this host and role"))
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var srv server
	err = conn.QueryRow(ctx, `
		SELECT current_user, current_database(), current_setting('server_version'),
			current_setting('wal_level'), current_setting('max_replication_slots')::int,
			current_setting('max_wal_senders')::int, r.rolsuper, r.rolreplication,
			has_database_privilege(current_database(), 'CREATE'),
			(SELECT count(*) FROM pg_replication_slots),
			(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(
		&srv.user, &srv.database, &srv.version, &srv.walLevel, &srv.maxSlots, &srv.maxSenders,
		&srv.superuser, &srv.replication, &srv.createInDB, &srv.slots, &srv.senders)
	if err != nil {
		return append(out, fail("database", fmt.Sprintf("connected to %s, but cannot read its settings: %v", where, err), ""))
	}
	add(ok("database", fmt.Sprintf("connected to %s as role %s, PostgreSQL %s", where, srv.user, srv.version)))
	add(walLevelFinding(srv.walLevel))

	add(roleFinding(srv))
	slot, slotErr := readSlot(ctx, conn, cfg.Slot)
	if slotErr == nil {
		// srv counted the senders before the check below adds its own.
		add(slotHeadroom(srv.slots, srv.maxSlots, slot.exists))
		add(senderHeadroom(srv.senders, srv.maxSenders, slot.active))
	}
	if srv.superuser || srv.replication {
		add(replicationConnFinding(ctx, cfg.ConnString))
	}

	tables := make(map[pgsource.Table]*tableFacts, len(cfg.Tables))
	for _, t := range cfg.Tables {
		tf, err := readTable(ctx, conn, t)
		if err != nil {
			add(fail("table "+t.String(), fmt.Sprintf("cannot read the catalog: %v", err), ""))
			continue
		}
		tables[t] = tf
		add(tableFindings(t, tf, srv.user, cfg.ColumnsOf(t), cfg.templatesOf(t), cfg.variableOf(t))...)
	}

	for _, t := range cfg.Tables {
		for _, outer := range cfg.Tables {
			if tf := tables[outer]; tf != nil && slices.Contains(tf.partitions, t) {
				add(fail("table "+t.String(), fmt.Sprintf("is a partition of %s, which RELAY_TABLES lists too; the relay refuses to start", outer),
					fmt.Sprintf("list only %s in RELAY_TABLES: a partitioned table is one outbox", outer)))
			}
		}
	}

	add(formatFinding(ctx, conn, cfg, tables))

	pub, err := readPublication(ctx, conn, cfg.Publication)
	if err != nil {
		add(fail("publication "+cfg.Publication, fmt.Sprintf("cannot read pg_publication: %v", err), ""))
	} else {
		add(publicationFindings(cfg.Publication, cfg.Tables, tables, pub, srv, cfg.ColumnsOf)...)
	}
	if slotErr != nil {
		add(fail("slot "+cfg.Slot, fmt.Sprintf("cannot read pg_replication_slots: %v", slotErr), ""))
		return out
	}
	// A slot the relay creates comes with the initial backfill, which
	// needs relay.backfill; an existing one has had it.
	var state *stateFacts
	if !slot.exists && cfg.Snapshot == pgsource.SnapshotInitial {
		st, err := readState(ctx, conn, cfg.Slot)
		if err != nil {
			return append(out, fail("slot "+cfg.Slot, fmt.Sprintf("cannot read relay.backfill, the initial backfill's state: %v", err), ""))
		}
		st.user = srv.user
		state = &st
	}
	return append(out, slotFinding(cfg.Slot, srv.database, slot, cfg.SlotRecreate, state))
}

// formatFinding says which pgoutput format the stream will ask for and,
// for text, why: binary costs the walsender less, and an operator who
// wants it needs to know which column rules it out.
func formatFinding(ctx context.Context, conn *pgx.Conn, cfg CheckConfig, tables map[pgsource.Table]*tableFacts) relay.Finding {
	const check = "pgoutput format"
	if cfg.TextOnly {
		return ok(check, "text, as RELAY_PGOUTPUT_BINARY=false asks")
	}
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return warn(check, fmt.Sprintf("cannot read server_version_num: %v", err), "")
	}
	if version < 140000 {
		return ok(check, fmt.Sprintf("text: PostgreSQL %d has no binary pgoutput format (14 and later have)", version/10000))
	}
	for _, t := range cfg.Tables {
		tf := tables[t]
		if tf == nil {
			continue
		}
		for _, c := range tf.cols {
			if !pgsource.BinaryTypeOK(c.typ) {
				return ok(check, fmt.Sprintf("text: column %s of %s has type %s, which the relay reads only as text", c.name, t, c.typeName))
			}
		}
	}
	return ok(check, "binary")
}

func ok(check, detail string) relay.Finding {
	return relay.Finding{Check: check, Status: relay.CheckOK, Detail: detail}
}

func warn(check, detail, fix string) relay.Finding {
	return relay.Finding{Check: check, Status: relay.CheckWarn, Detail: detail, Fix: fix}
}

func fail(check, detail, fix string) relay.Finding {
	return relay.Finding{Check: check, Status: relay.CheckFail, Detail: detail, Fix: fix}
}

// server is what the preflight reads about the server and the role.
type server struct {
	user, database, version, walLevel string
	maxSlots, maxSenders              int
	superuser, replication            bool
	createInDB                        bool // CREATE on the database: needed to create a publication
	slots, senders                    int  // replication slots and walsenders in use
}

func walLevelFinding(level string) relay.Finding {
	if level == "logical" {
		return ok("wal_level", "logical")
	}
	return fail("wal_level", fmt.Sprintf("%q; logical replication needs \"logical\"", level),
		"as a superuser: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
}

// slotHeadroom checks that the relay's slot exists or there is room to
// create it.
func slotHeadroom(used, limit int, have bool) relay.Finding {
	const check = "max_replication_slots"
	detail := fmt.Sprintf("%d of %d in use", used, limit)
	switch {
	case have:
		return ok(check, detail+", the relay's slot among them")
	case used >= limit:
		return fail(check, detail+"; the relay needs one more for its slot",
			fmt.Sprintf("drop an unused slot (SELECT pg_drop_replication_slot('name')) or ALTER SYSTEM SET max_replication_slots = %d; then restart PostgreSQL", limit+1))
	}
	return ok(check, detail+"; one is free for the relay's slot")
}

// senderHeadroom checks that the relay can get a walsender: one is needed
// unless its slot is already active, i.e. a relay streams now.
func senderHeadroom(used, limit int, active bool) relay.Finding {
	const check = "max_wal_senders"
	detail := fmt.Sprintf("%d of %d in use", used, limit)
	switch {
	case active:
		return ok(check, detail+", the relay streaming now among them")
	case used >= limit:
		return fail(check, detail+"; the relay needs one more to stream",
			fmt.Sprintf("close idle replication connections or ALTER SYSTEM SET max_wal_senders = %d; then restart PostgreSQL", limit+1))
	}
	return ok(check, detail+"; one is free for the relay")
}

func roleFinding(s server) relay.Finding {
	check := "role " + s.user
	switch {
	case s.superuser:
		return ok(check, "superuser (a role with REPLICATION and SELECT on the outbox tables is enough; see schema/role.sql)")
	case s.replication:
		return ok(check, "has REPLICATION")
	}
	return fail(check, "has neither REPLICATION nor superuser, so it cannot open a replication connection",
		fmt.Sprintf("as a superuser: ALTER ROLE %s WITH REPLICATION;", pgx.Identifier{s.user}.Sanitize()))
}

// replicationConnFinding opens a replication connection as the relay does:
// pg_hba.conf and connection limits may admit normal connections and
// refuse this one.
func replicationConnFinding(ctx context.Context, connString string) relay.Finding {
	const check = "replication connection"
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return fail(check, fmt.Sprintf("parse RELAY_DATABASE_URL: %v", err), "")
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "relay check"
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return fail(check, fmt.Sprintf("refused: %v", err),
			"allow this role and database in pg_hba.conf (logical replication matches the database name, not the keyword replication) and check max_wal_senders")
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id, err := pglogrepl.IdentifySystem(cctx, conn)
	if err != nil {
		return fail(check, fmt.Sprintf("IDENTIFY_SYSTEM: %v", err), "")
	}
	return ok(check, fmt.Sprintf("works (system %s, timeline %d, WAL at %s)", id.SystemID, id.Timeline, id.XLogPos))
}

// tableFacts is what the preflight reads about an outbox table.
type tableFacts struct {
	exists      bool
	kind        byte // pg_class.relkind
	selectPriv  bool
	schemaUsage bool
	owner       bool // the role is, or is a member of, the table's owner
	cols        []tableColumn
	// partitions are a partitioned table's partitions, sub-partitions
	// included, and leaves how many of them hold rows (are not
	// partitioned themselves).
	partitions []pgsource.Table
	leaves     int
}

type tableColumn struct {
	name     string
	typ      uint32 // type OID
	typeName string
	notNull  bool
}

func readTable(ctx context.Context, conn *pgx.Conn, t pgsource.Table) (*tableFacts, error) {
	tf := &tableFacts{}
	var oid uint32
	var kind string
	err := conn.QueryRow(ctx, `
		SELECT c.oid, c.relkind::text, has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(n.oid, 'USAGE'),
			pg_has_role(c.relowner, 'USAGE')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&oid, &kind, &tf.selectPriv, &tf.schemaUsage, &tf.owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return tf, nil
	}
	if err != nil {
		return nil, err
	}
	tf.exists, tf.kind = true, kind[0]
	rows, err := conn.Query(ctx, `
		SELECT attname, atttypid, format_type(atttypid, atttypmod), attnotnull
		FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
		ORDER BY attnum`, oid)
	if err != nil {
		return nil, err
	}
	tf.cols, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (tableColumn, error) {
		var c tableColumn
		err := r.Scan(&c.name, &c.typ, &c.typeName, &c.notNull)
		return c, err
	})
	if err != nil || tf.kind != 'p' {
		return tf, err
	}
	rows, err = conn.Query(ctx, `
		SELECT n.nspname, c.relname, p.isleaf
		FROM pg_partition_tree($1::oid::regclass) p
		JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.relid <> $1::oid::regclass`, oid)
	if err != nil {
		return nil, err
	}
	var part pgsource.Table
	var leaf bool
	_, err = pgx.ForEachRow(rows, []any{&part.Schema, &part.Name, &leaf}, func() error {
		tf.partitions = append(tf.partitions, part)
		if leaf {
			tf.leaves++
		}
		return nil
	})
	return tf, err
}

// mappedColumn is one outbox field, the variable naming its column, and
// whether the relay needs it.
type mappedColumn struct {
	field, variable, name string
	required              bool
}

func mapping(m pgsource.Columns) []mappedColumn {
	return []mappedColumn{
		{"id", "RELAY_COLUMN_ID", m.ID, true},
		{"aggregate type", "RELAY_COLUMN_AGGREGATE_TYPE", m.AggregateType, true},
		{"aggregate id", "RELAY_COLUMN_AGGREGATE_ID", m.AggregateID, true},
		{"event type", "RELAY_COLUMN_EVENT_TYPE", m.EventType, true},
		{"payload", "RELAY_COLUMN_PAYLOAD", m.Payload, true},
		{"headers", "RELAY_COLUMN_HEADERS", m.Headers, false},
		{"created at", "RELAY_COLUMN_CREATED_AT", m.CreatedAt, false},
	}
}

// eventFields are the template placeholders every event resolves itself
// (relay.Event.Field); any other placeholder is a column of the row.
var eventFields = []string{"id", "aggregate_type", "aggregate_id", "event_type", "table"}

// tableFindings checks one table: that it exists and can be published, the
// role may read it, and its columns match the mapping and the templates.
// variable names the variable setting a global setting for this table
// (nil: the global one).
func tableFindings(t pgsource.Table, tf *tableFacts, user string, m pgsource.Columns, templates map[string]*relay.Template, variable func(string) string) []relay.Finding {
	if variable == nil {
		variable = func(v string) string { return v }
	}
	check := "table " + t.String()
	if !tf.exists {
		return []relay.Finding{fail(check, "does not exist",
			"create it (schema/outbox.sql, or schema/debezium_outbox.sql with "+variable("RELAY_COLUMN_PRESET")+"=debezium) or fix RELAY_TABLES")}
	}
	if tf.kind != 'r' && tf.kind != 'p' {
		return []relay.Finding{fail(check, fmt.Sprintf("is not a table (relkind %q); only tables can be published", tf.kind),
			"point RELAY_TABLES at the table itself")}
	}
	var out []relay.Finding
	if !tf.selectPriv || !tf.schemaUsage {
		out = append(out, fail(check, fmt.Sprintf("role %s may not read it", user),
			fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %[3]s; GRANT SELECT ON %[2]s TO %[3]s;",
				pgx.Identifier{t.Schema}.Sanitize(), t.Ident(), pgx.Identifier{user}.Sanitize())))
	}

	names := make([]string, len(tf.cols))
	types := make([]uint32, len(tf.cols))
	byName := make(map[string]tableColumn, len(tf.cols))
	for i, c := range tf.cols {
		names[i], types[i] = c.name, c.typ
		byName[c.name] = c
	}
	var missing, fixes, nullable, shown []string
	var typeFailed bool
	for _, mc := range mapping(m) {
		mc.variable = variable(mc.variable)
		c, found := byName[mc.name]
		switch {
		case mc.name == "":
			if mc.required {
				missing = append(missing, mc.field)
				fixes = append(fixes, "set "+mc.variable)
			}
		case !found && mc.required:
			missing = append(missing, fmt.Sprintf("%s column %q", mc.field, mc.name))
			fixes = append(fixes, fmt.Sprintf("set %s to its column", mc.variable))
		case !found:
			out = append(out, warn(check, fmt.Sprintf("has no %s column %q, so messages carry no %s", mc.field, mc.name, mc.field),
				fmt.Sprintf("set %s to the right column, or ignore this if the table has none", mc.variable)))
		default:
			shown = append(shown, fmt.Sprintf("%s=%s (%s)", strings.ReplaceAll(mc.field, " ", "_"), c.name, c.typeName))
			if mc.required && mc.field != "payload" && !c.notNull {
				nullable = append(nullable, c.name)
			}
			typeFindings := columnTypeFindings(check, t, mc, c)
			typeFailed = typeFailed || slices.ContainsFunc(typeFindings, func(f relay.Finding) bool { return f.Status == relay.CheckFail })
			out = append(out, typeFindings...)
		}
	}
	// The mapping is what the stream applies to the table: trust it over
	// the analysis above, which only adds the variable to set.
	if err := pgsource.CheckMapping(t, names, types, m); err != nil || len(missing) > 0 {
		if len(missing) == 0 && typeFailed {
			return out // already said
		}
		detail := "lacks the " + strings.Join(missing, ", ")
		if err != nil {
			detail = err.Error()
		}
		fix := "set " + variable("RELAY_COLUMN_PRESET") + " (standard or debezium)"
		if len(fixes) > 0 {
			fix += " or " + strings.Join(fixes, ", ")
		}
		return append(out, fail(check, detail, fix))
	}
	if len(nullable) > 0 {
		stmts := make([]string, len(nullable))
		for i, n := range nullable {
			stmts[i] = fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;", t.Ident(), pgx.Identifier{n}.Sanitize())
		}
		out = append(out, warn(check, fmt.Sprintf("column %s allows NULL; a row with NULL there cannot become a message and stops the relay", strings.Join(nullable, ", ")),
			strings.Join(stmts, " ")))
	}
	for _, variable := range slices.Sorted(maps.Keys(templates)) {
		tpl := templates[variable]
		for _, f := range tpl.Fields() {
			if slices.Contains(eventFields, f) {
				continue
			}
			if _, found := byName[f]; !found {
				out = append(out, fail(check, fmt.Sprintf("%s %q names {%s}, which is not a column: no row could be routed", variable, tpl, f),
					fmt.Sprintf("use a column of %s or one of {%s} in %s", t, strings.Join(eventFields, "}, {"), variable)))
			}
		}
	}
	detail := "columns " + strings.Join(shown, ", ")
	if tf.kind == 'p' {
		// Rows of every partition are this table's events.
		detail = fmt.Sprintf("partitioned, %d partitions holding rows, one outbox; %s", tf.leaves, detail)
	}
	return append([]relay.Finding{ok(check, detail)}, out...)
}

// columnTypeFindings checks that a mapped column's type is one the decoder
// turns into the message as documented.
func columnTypeFindings(check string, t pgsource.Table, mc mappedColumn, c tableColumn) []relay.Finding {
	retype := func(typ string) string {
		return fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE %s USING %[2]s::%[3]s;", t.Ident(), pgx.Identifier{c.name}.Sanitize(), typ)
	}
	switch mc.field {
	case "payload":
		if !pgsource.PayloadTypeOK(c.typ) {
			return []relay.Finding{fail(check, fmt.Sprintf("payload column %s is %s; it must be jsonb, json, text, varchar or bytea", c.name, c.typeName), retype("jsonb"))}
		}
	case "headers":
		switch c.typ {
		case pgtype.JSONBOID, pgtype.JSONOID:
		case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID:
			return []relay.Finding{warn(check, fmt.Sprintf("headers column %s is %s: a value that is not a JSON object stops the relay at its row", c.name, c.typeName), retype("jsonb"))}
		default:
			return []relay.Finding{fail(check, fmt.Sprintf("headers column %s is %s; it must hold JSON objects", c.name, c.typeName),
				retype("jsonb")+" or unset "+mc.variable)}
		}
	case "created at":
		switch c.typ {
		case pgtype.TimestamptzOID, pgtype.TimestampOID:
		case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID:
			return []relay.Finding{warn(check, fmt.Sprintf("created_at column %s is %s: a value that is not an ISO timestamp stops the relay at its row", c.name, c.typeName), retype("timestamptz"))}
		default:
			return []relay.Finding{fail(check, fmt.Sprintf("created_at column %s is %s; it must be timestamptz or timestamp", c.name, c.typeName),
				retype("timestamptz")+" or unset "+mc.variable)}
		}
	}
	return nil
}

// pubFacts is what the preflight reads about the publication.
type pubFacts struct {
	exists, allTables             bool
	insert, update, delete, trunc bool
	owner                         bool // the role owns it, so it may add tables
	viaRoot                       bool // publish_via_partition_root
	// tables are what pg_publication_tables lists: a partitioned table
	// as its leaf partitions unless viaRoot. listed are the tables the
	// publication names itself and schemas its FOR TABLES IN SCHEMA.
	tables  []pubTable
	listed  []pgsource.Table
	schemas []string
}

type pubTable struct {
	pgsource.Table
	columns   []string // nil: every column
	rowFilter string
}

func readPublication(ctx context.Context, conn *pgx.Conn, name string) (pubFacts, error) {
	var p pubFacts
	err := conn.QueryRow(ctx, `
		SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pg_has_role(pubowner, 'USAGE'), pubviaroot
		FROM pg_publication WHERE pubname = $1`, name).Scan(&p.allTables, &p.insert, &p.update, &p.delete, &p.trunc, &p.owner, &p.viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	p.exists = true
	// Column lists and row filters exist from PostgreSQL 15.
	var v int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		return p, err
	}
	q := "SELECT schemaname, tablename, NULL::text[], NULL::text FROM pg_publication_tables WHERE pubname = $1"
	if v >= 150000 {
		q = "SELECT schemaname, tablename, attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1"
	}
	rows, err := conn.Query(ctx, q, name)
	if err != nil {
		return p, err
	}
	p.tables, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (pubTable, error) {
		var t pubTable
		var filter *string
		err := r.Scan(&t.Schema, &t.Name, &t.columns, &filter)
		if filter != nil {
			t.rowFilter = *filter
		}
		return t, err
	})
	if err != nil {
		return p, err
	}
	rows, err = conn.Query(ctx, `
		SELECT n.nspname, c.relname
		FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
		JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1`, name)
	if err != nil {
		return p, err
	}
	p.listed, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (pgsource.Table, error) {
		var t pgsource.Table
		err := r.Scan(&t.Schema, &t.Name)
		return t, err
	})
	if err != nil || v < 150000 {
		return p, err
	}
	rows, err = conn.Query(ctx, `
		SELECT n.nspname FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid
		JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE p.pubname = $1`, name)
	if err != nil {
		return p, err
	}
	p.schemas, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return p, err
}

// publicationFindings compares the publication with what the relay needs
// (pgsource's ensurePublication): inserts of exactly the outbox tables,
// every mapped column, or the right to create or complete it.
func publicationFindings(name string, want []pgsource.Table, tables map[pgsource.Table]*tableFacts, p pubFacts, srv server, columnsOf func(pgsource.Table) pgsource.Columns) []relay.Finding {
	check := "publication " + name
	ident := pgx.Identifier{name}.Sanitize()
	idents := make([]string, len(want))
	ownsAll := true
	var partitioned []pgsource.Table
	for i, t := range want {
		idents[i] = t.Ident()
		tf := tables[t]
		if tf == nil || !tf.owner {
			ownsAll = false
		}
		if tf != nil && tf.kind == 'p' {
			partitioned = append(partitioned, t)
		}
	}
	with := "publish = 'insert'"
	if len(partitioned) > 0 {
		with += ", publish_via_partition_root = true"
	}
	create := fmt.Sprintf("as the owner of the tables: CREATE PUBLICATION %s FOR TABLE %s WITH (%s);", ident, strings.Join(idents, ", "), with)
	if !p.exists {
		if srv.superuser || (srv.createInDB && ownsAll) {
			return []relay.Finding{ok(check, "does not exist; the relay will create it FOR TABLE "+strings.Join(idents, ", ")+" WITH ("+with+")")}
		}
		why := "does not exist, and role " + srv.user + " cannot create it"
		switch {
		case !srv.createInDB:
			why += " (no CREATE privilege on the database)"
		case !ownsAll:
			why += " (a publication's tables must be owned by its creator)"
		}
		return []relay.Finding{fail(check, why, create)}
	}
	if p.allTables {
		return []relay.Finding{fail(check, "is FOR ALL TABLES; rows of other tables would stop the relay",
			"set RELAY_PUBLICATION to a new name (the relay creates it) or "+create)}
	}
	var out []relay.Finding
	if !p.insert {
		out = append(out, fail(check, "does not publish inserts", fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert');", ident)))
	}
	// The table of RELAY_TABLES that a listed table is, or is a
	// partition of: its rows are that table's (pgsource's partition.go).
	rootOf := func(pt pgsource.Table) (pgsource.Table, bool) {
		if slices.Contains(want, pt) {
			return pt, true
		}
		for _, t := range want {
			if tf := tables[t]; tf != nil && slices.Contains(tf.partitions, pt) {
				return t, true
			}
		}
		return pgsource.Table{}, false
	}
	var have []pgsource.Table
	for _, pt := range p.tables {
		root, found := rootOf(pt.Table)
		if !found {
			out = append(out, fail(check, fmt.Sprintf("also publishes %s, which is not in RELAY_TABLES; its rows would stop the relay", pt.Table),
				fmt.Sprintf("add it to RELAY_TABLES or ALTER PUBLICATION %s DROP TABLE %s;", ident, pt.Ident())))
			continue
		}
		if !slices.Contains(have, root) {
			have = append(have, root)
		}
		if pt.columns != nil {
			var lacking []string
			for _, mc := range mapping(columnsOf(root)) {
				if mc.name != "" && !slices.Contains(pt.columns, mc.name) && hasColumn(tables[root], mc.name) {
					lacking = append(lacking, mc.name)
				}
			}
			if len(lacking) > 0 {
				out = append(out, fail(check, fmt.Sprintf("publishes only columns %s of %s, not %s", strings.Join(pt.columns, ", "), pt.Table, strings.Join(lacking, ", ")),
					fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s; (every column; list the other tables too)", ident, root.Ident())))
			}
		}
		if pt.rowFilter != "" {
			out = append(out, warn(check, fmt.Sprintf("publishes only rows of %s where %s", pt.Table, pt.rowFilter),
				"make sure that is intended: other rows are never relayed"))
		}
	}
	var absent []string
	for _, t := range want {
		tf := tables[t]
		published := slices.Contains(have, t)
		if tf != nil && tf.kind == 'p' {
			// Only a publication naming the partitioned table (or its
			// schema) publishes the partitions attached later; listing
			// today's does not.
			published = slices.Contains(p.listed, t) || slices.Contains(p.schemas, t.Schema)
		}
		// A table that does not exist has a finding of its own.
		if !published && tf != nil && tf.exists {
			absent = append(absent, t.Ident())
		}
	}
	if len(partitioned) > 1 && !p.viaRoot {
		out = append(out, warn(check, fmt.Sprintf("sends the rows of the partitioned tables %s under their leaf partitions (no publish_via_partition_root): a partition detached or dropped before the relay read its rows stops it, as nothing then says which table the rows belong to", strings.Join(idents, ", ")),
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true); or keep partitions attached until the relay has confirmed their rows", ident)))
	}
	if len(absent) > 0 {
		if srv.superuser || (p.owner && ownsAll) {
			out = append(out, ok(check, "lacks "+strings.Join(absent, ", ")+"; the relay will add it"))
		} else {
			out = append(out, fail(check, fmt.Sprintf("lacks %s, and role %s cannot add it (it must own the publication and the table)", strings.Join(absent, ", "), srv.user),
				fmt.Sprintf("as the owner: ALTER PUBLICATION %s ADD TABLE %s;", ident, strings.Join(absent, ", "))))
		}
	}
	if len(out) == 0 {
		names := make([]string, len(have))
		for i, t := range have {
			names[i] = t.Ident()
		}
		detail := "publishes inserts of " + strings.Join(names, ", ")
		if len(names) == 0 {
			detail = "publishes inserts, of no table yet"
		}
		var extra []string
		for _, op := range []struct {
			on   bool
			name string
		}{{p.update, "update"}, {p.delete, "delete"}, {p.trunc, "truncate"}} {
			if op.on {
				extra = append(extra, op.name)
			}
		}
		if len(extra) > 0 {
			detail += " (and " + strings.Join(extra, ", ") + ", which the relay ignores)"
		}
		if slices.ContainsFunc(have, func(t pgsource.Table) bool { return slices.Contains(partitioned, t) }) {
			if p.viaRoot {
				detail += "; a partitioned table's rows under its own name (publish_via_partition_root)"
			} else {
				detail += "; a partitioned table's rows under its leaf partitions, which the relay takes for the table's"
			}
		}
		out = append(out, ok(check, detail))
	}
	return out
}

func hasColumn(tf *tableFacts, name string) bool {
	if tf == nil {
		return false
	}
	return slices.ContainsFunc(tf.cols, func(c tableColumn) bool { return c.name == name })
}

// slotFacts is what the preflight and `relay status` read about the slot.
type slotFacts struct {
	exists                     bool
	slotType, plugin, database string
	walStatus                  string // "" before PostgreSQL 13
	active                     bool
	activePID                  *int32
	confirmed                  *string
	lag, retained              *int64
}

func readSlot(ctx context.Context, conn *pgx.Conn, name string) (slotFacts, error) {
	s := slotFacts{}
	var walStatus *string
	err := conn.QueryRow(ctx, `
		SELECT slot_type, coalesce(plugin, ''), coalesce(database, ''), wal_status, active, active_pid,
			confirmed_flush_lsn::text,
			(pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,
			(pg_current_wal_lsn() - restart_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(
		&s.slotType, &s.plugin, &s.database, &walStatus, &s.active, &s.activePID, &s.confirmed, &s.lag, &s.retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	s.exists = true
	if walStatus != nil {
		s.walStatus = *walStatus
	}
	return s, nil
}

// stateFacts is what the preflight reads about relay.backfill, where the
// initial backfill (RELAY_SNAPSHOT=initial) records its progress.
type stateFacts struct {
	user string
	// exists: relay.backfill exists; usable: the role may read and write
	// it; creatable: the role may create it as pgsource's
	// ensureStateTable does.
	exists, usable, creatable bool
	// recorded: it has rows of the slot, so the relay used the slot before.
	recorded bool
}

func readState(ctx context.Context, conn *pgx.Conn, slot string) (stateFacts, error) {
	var f stateFacts
	// CREATE SCHEMA IF NOT EXISTS checks the database privilege even when
	// the schema exists.
	err := conn.QueryRow(ctx, `
		SELECT to_regclass('relay.backfill') IS NOT NULL,
			has_database_privilege(current_database(), 'CREATE')
				AND coalesce(has_schema_privilege(to_regnamespace('relay'), 'CREATE'), true)`).Scan(&f.exists, &f.creatable)
	if err != nil || !f.exists {
		return f, err
	}
	err = conn.QueryRow(ctx, `
		SELECT has_schema_privilege('relay', 'USAGE') AND has_table_privilege('relay.backfill', 'SELECT')
			AND has_table_privilege('relay.backfill', 'INSERT') AND has_table_privilege('relay.backfill', 'UPDATE')`).Scan(&f.usable)
	if err != nil || !f.usable {
		return f, err
	}
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM relay.backfill WHERE slot_name = $1)", slot).Scan(&f.recorded)
	return f, err
}

// slotFinding compares the slot with what the relay accepts (pgsource's
// ensureSlot). state is relay.backfill's when the relay will create the
// slot with the initial backfill, nil otherwise.
func slotFinding(name, database string, s slotFacts, recreate bool, state *stateFacts) relay.Finding {
	check := "slot " + name
	drop := fmt.Sprintf("set RELAY_SLOT to another name, or drop it: SELECT pg_drop_replication_slot('%s');", strings.ReplaceAll(name, "'", "''"))
	switch {
	case !s.exists && state == nil:
		return warn(check, "does not exist; the relay will create it, and rows committed before then are not relayed (RELAY_SNAPSHOT=never)",
			"none if this is the first start and older rows are not wanted (RELAY_SNAPSHOT=initial publishes them first); otherwise the slot was dropped and rows since its last position may be missing")
	case !s.exists:
		return backfillFinding(check, *state)
	case s.slotType != "logical" || s.plugin != "pgoutput":
		return fail(check, fmt.Sprintf("is a %s slot with plugin %q; the relay needs a logical pgoutput slot", s.slotType, s.plugin), drop)
	case s.database != database:
		return fail(check, fmt.Sprintf("belongs to database %s, not %s", s.database, database), drop)
	case s.walStatus == "lost" && recreate:
		return warn(check, "is lost (wal_status lost): PostgreSQL removed WAL it still needed; the relay will drop and recreate it (RELAY_SLOT_RECREATE=true), and rows committed since its last position are never published",
			"reconcile what consumers missed; unset RELAY_SLOT_RECREATE for the relay to stop instead")
	case s.walStatus == "lost":
		return fail(check, "is lost (wal_status lost): PostgreSQL removed WAL it still needed, so rows may be missing and the relay will not use it",
			"reconcile what consumers missed, then recreate it deliberately: "+strings.TrimPrefix(drop, "set RELAY_SLOT to another name, or drop it: "))
	}
	detail := "pgoutput, wal_status " + s.walStatus
	if s.confirmed != nil {
		detail += ", confirmed " + *s.confirmed
	}
	if s.lag != nil {
		detail += fmt.Sprintf(", %d bytes behind", *s.lag)
	}
	if s.retained != nil {
		detail += fmt.Sprintf(", retaining %d bytes of WAL", *s.retained)
	}
	if s.active && s.activePID != nil {
		detail += fmt.Sprintf(", active (pid %d)", *s.activePID)
	} else {
		detail += ", not active"
	}
	if s.walStatus == "unreserved" {
		return warn(check, detail+": PostgreSQL may soon remove WAL the slot needs (max_slot_wal_keep_size)",
			"start the relay so it catches up, or raise max_slot_wal_keep_size")
	}
	return ok(check, detail)
}

// backfillFinding is the finding on a slot the relay will create and
// backfill (RELAY_SNAPSHOT=initial).
func backfillFinding(check string, st stateFacts) relay.Finding {
	const plan = "does not exist; the relay will create it and first publish the rows already in the tables (RELAY_SNAPSHOT=initial)"
	role := pgx.Identifier{st.user}.Sanitize()
	grant := fmt.Sprintf("GRANT USAGE ON SCHEMA relay TO %s; GRANT SELECT, INSERT, UPDATE ON relay.backfill TO %[1]s;", role)
	switch {
	case !st.exists && !st.creatable:
		return fail(check, plan+", but role "+st.user+" may not create relay.backfill, where the backfill records its progress",
			"as the database owner apply schema/relay_state.sql, then "+grant+" Or set RELAY_SNAPSHOT=never")
	case st.exists && !st.usable:
		return fail(check, plan+", but role "+st.user+" may not read and write relay.backfill, where the backfill records its progress",
			grant+" Or set RELAY_SNAPSHOT=never")
	case st.recorded:
		return warn(check, "does not exist, but relay.backfill records that the relay used it, so it was dropped: the relay will create it again and backfill the rows still in the tables, published before or not, and rows deleted since its last position are missing",
			"reconcile what consumers missed; none if the slot was dropped on purpose")
	}
	return ok(check, plan)
}
