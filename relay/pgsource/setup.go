package pgsource

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/internal/pgerr"
)

// SQLSTATE codes the source acts on.
const (
	codeUniqueViolation = pgerr.UniqueViolation
	codeDuplicateTable  = pgerr.DuplicateTable
	codeDuplicateSchema = pgerr.DuplicateSchema
	codeDuplicateObject = pgerr.DuplicateObject
	codeUndefinedTable  = pgerr.UndefinedTable
	codeUndefinedSchema = pgerr.UndefinedSchema
	codeObjectInUse     = pgerr.ObjectInUse
)

// Table is a configured outbox table.
type Table struct {
	Schema, Name string
}

// ParseTable reads "schema.name" or "name" (schema public). Names are taken
// as stored in the catalog: unquoted, case-sensitive.
func ParseTable(s string) (Table, error) {
	s = strings.TrimSpace(s)
	schema, name, ok := strings.Cut(s, ".")
	if !ok {
		schema, name = "public", s
	}
	if schema == "" || name == "" || strings.Contains(name, ".") {
		return Table{}, fmt.Errorf("table %q: want schema.name", s)
	}
	return Table{Schema: schema, Name: name}, nil
}

func (t Table) String() string { return t.Schema + "." + t.Name }

func (t Table) ident() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// Ident is the table's name quoted for SQL: "schema"."name".
func (t Table) Ident() string { return t.ident() }

// slotInfo is what the source needs to know about its replication slot.
type slotInfo struct {
	confirmed relay.LSN
	// recorded is the durable position record (position.go), which can be
	// ahead of confirmed after a PostgreSQL crash.
	recorded relay.LSN
	created  bool
	// snapshot is the exported snapshot of a slot just created for a
	// backfill; backfill lists the tables still to backfill, after base rows.
	snapshot string
	backfill []backfillState
	base     int64
	// parts are the outbox tables' partition trees as the session starts.
	parts *partitions
	// textOnly says why the session cannot use pgoutput's binary format
	// (binary.go); empty when it can.
	textOnly string
}

// prepare checks the database and creates what is missing: it runs on a
// normal connection before each replication session.
func (s *Source) prepare(ctx context.Context, repl *pgconn.PgConn) (slotInfo, error) {
	conn, err := pgx.Connect(ctx, s.cfg.ConnString)
	if err != nil {
		return slotInfo{}, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return slotInfo{}, fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return slotInfo{}, relay.Permanent(fmt.Errorf("wal_level is %q, logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical; as a superuser and restart PostgreSQL", walLevel))
	}
	textOnly, err := s.checkTables(ctx, conn)
	if err != nil {
		return slotInfo{}, err
	}
	if textOnly == "" {
		textOnly, err = binaryServer(ctx, conn)
		if err != nil {
			return slotInfo{}, err
		}
	}
	parts, err := s.loadPartitions(ctx, conn)
	if err != nil {
		return slotInfo{}, err
	}
	if err := s.ensurePublication(ctx, conn, parts); err != nil {
		return slotInfo{}, err
	}
	slot, err := s.ensureSlot(ctx, conn, repl)
	if err != nil {
		return slot, err
	}
	slot.parts, slot.textOnly = parts, textOnly
	if !slot.created {
		slot.recorded = s.recordedPosition(ctx, conn)
	}
	if s.cfg.Snapshot != SnapshotInitial {
		return slot, nil
	}
	slot.backfill, slot.base, err = s.pendingBackfill(ctx, conn)
	return slot, err
}

// checkTables verifies that every table exists with the mapped columns, so
// a misconfiguration fails at start with a clear message instead of at the
// first row. It also returns the first column whose binary form the source
// does not read, as why binary mode is off, or "".
func (s *Source) checkTables(ctx context.Context, conn *pgx.Conn) (textOnly string, err error) {
	var problems []string
	for _, t := range s.cfg.Tables {
		rows, err := conn.Query(ctx, `
			SELECT a.attname, a.atttypid, format_type(a.atttypid, NULL)
			FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
			ORDER BY a.attnum`, t.Schema, t.Name)
		if err != nil {
			return "", fmt.Errorf("read columns of %s: %w", t, err)
		}
		var cols []column
		for rows.Next() {
			var c column
			var typeName string
			if err := rows.Scan(&c.name, &c.typ, &typeName); err != nil {
				return "", fmt.Errorf("read columns of %s: %w", t, err)
			}
			if textOnly == "" && !binaryTypeOK(c.typ) {
				textOnly = fmt.Sprintf("column %s of %s has type %s, which the relay reads only as text", c.name, t, typeName)
			}
			cols = append(cols, c)
		}
		if err := rows.Err(); err != nil {
			return "", fmt.Errorf("read columns of %s: %w", t, err)
		}
		if len(cols) == 0 {
			problems = append(problems, fmt.Sprintf("table %s does not exist (create it with schema/outbox.sql, or fix RELAY_TABLES)", t))
			continue
		}
		if _, err := newRelation(t.Schema, t.Name, cols, s.cfg.columnsOf(t)); err != nil {
			fix := " (set RELAY_COLUMN_PRESET or the RELAY_COLUMN_* variables)"
			if len(s.cfg.Tables) > 1 {
				fix = " (set RELAY_COLUMN_PRESET or the RELAY_COLUMN_* variables, or the table's own RELAY_TABLE_<SCHEMA>_<TABLE>_COLUMN_*)"
			}
			problems = append(problems, err.Error()+fix)
		}
	}
	if len(problems) > 0 {
		return "", relay.Permanent(errors.New(strings.Join(problems, "; ")))
	}
	return textOnly, nil
}

// binaryServer returns why the server cannot send pgoutput's binary
// format, or "": the option arrived in PostgreSQL 14, and older servers
// refuse to start replication with it.
func binaryServer(ctx context.Context, conn *pgx.Conn) (string, error) {
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return "", fmt.Errorf("read server_version_num: %w", err)
	}
	if version < 140000 {
		return fmt.Sprintf("PostgreSQL %d has no binary pgoutput format (14 and later have)", version/10000), nil
	}
	return "", nil
}

// ensurePublication creates the publication, or checks that an existing
// one publishes inserts of exactly the configured tables, adding any that
// are missing. A publication with other tables is refused: their rows would
// arrive and there is nothing correct to do with them. The partitions of a
// partitioned outbox table are its own, however it is published.
func (s *Source) ensurePublication(ctx context.Context, conn *pgx.Conn, parts *partitions) error {
	pub := pgx.Identifier{s.cfg.Publication}.Sanitize()
	var allTables, inserts bool
	err := conn.QueryRow(ctx, "SELECT puballtables, pubinsert FROM pg_publication WHERE pubname = $1", s.cfg.Publication).Scan(&allTables, &inserts)
	if errors.Is(err, pgx.ErrNoRows) {
		idents := make([]string, len(s.cfg.Tables))
		for i, t := range s.cfg.Tables {
			idents[i] = t.ident()
		}
		with := "publish = 'insert'"
		if len(parts.partitioned) > 0 {
			// Rows then come under the partitioned table, whichever
			// partition holds them, even one detached or dropped
			// before the relay read them (partition.go).
			with += ", publish_via_partition_root = true"
		}
		err = createShared(ctx, conn, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (%s)", pub, strings.Join(idents, ", "), with))
		switch {
		case isCreated(err):
			// Another relay created it meanwhile, perhaps for other
			// tables: check it as any existing one.
			err = conn.QueryRow(ctx, "SELECT puballtables, pubinsert FROM pg_publication WHERE pubname = $1", s.cfg.Publication).Scan(&allTables, &inserts)
		case err != nil:
			return classify(fmt.Errorf("create publication %s: %w", s.cfg.Publication, err))
		default:
			s.log.Info("created publication", "publication", s.cfg.Publication, "tables", s.tableNames(), "publish_via_partition_root", len(parts.partitioned) > 0)
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	if allTables {
		return relay.Permanent(fmt.Errorf("publication %s is FOR ALL TABLES; the relay needs one that lists only its outbox tables (RELAY_PUBLICATION)", s.cfg.Publication))
	}
	if !inserts {
		return relay.Permanent(fmt.Errorf("publication %s does not publish inserts: ALTER PUBLICATION %s SET (publish = 'insert')", s.cfg.Publication, pub))
	}
	// Without publish_via_partition_root a partitioned table is listed as
	// its leaf partitions.
	rows, err := conn.Query(ctx, `
		SELECT c.oid, pt.schemaname, pt.tablename
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1`, s.cfg.Publication)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	type published struct {
		oid uint32
		Table
	}
	have, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (published, error) {
		var p published
		err := r.Scan(&p.oid, &p.Schema, &p.Name)
		return p, err
	})
	if err != nil {
		return fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	var haveTables []Table
	for _, p := range have {
		haveTables = append(haveTables, p.Table)
		if _, ok := parts.rootOf(p.Table); ok {
			continue
		}
		// Perhaps a partition attached since the trees were read.
		facts, err := parts.lookup(ctx, p.oid)
		if err != nil {
			return fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
		}
		if slices.ContainsFunc(facts.ancestors, func(a Table) bool { return slices.Contains(s.cfg.Tables, a) }) {
			continue
		}
		what, listed := p.String(), p.Table
		if len(facts.ancestors) > 1 {
			listed = facts.ancestors[len(facts.ancestors)-1]
			what += " (a partition of " + listed.String() + ")"
		}
		return relay.Permanent(fmt.Errorf("publication %s also publishes %s, which is not in RELAY_TABLES: add it there or ALTER PUBLICATION %s DROP TABLE %s", s.cfg.Publication, what, pub, listed.ident()))
	}
	for _, t := range s.cfg.Tables {
		if slices.Contains(haveTables, t) {
			continue
		}
		if parts.isPartitioned(t) {
			member, err := s.publicationLists(ctx, conn, t)
			if err != nil {
				return err
			}
			if member {
				continue // published as its partitions
			}
		}
		err := createShared(ctx, conn, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, t.ident()))
		if isCreated(err) {
			continue // added by another relay meanwhile
		}
		if err != nil {
			return classify(fmt.Errorf("add %s to publication %s: %w", t, s.cfg.Publication, err))
		}
		s.log.Info("added table to publication", "publication", s.cfg.Publication, "table", t.String())
	}
	return nil
}

// publicationLists reports whether the publication lists table t itself
// or its schema (FOR TABLES IN SCHEMA, PostgreSQL 15): what publishes the
// partitions attached later too, unlike a list of today's partitions.
func (s *Source) publicationLists(ctx context.Context, conn *pgx.Conn, t Table) (bool, error) {
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return false, fmt.Errorf("read server_version_num: %w", err)
	}
	q := `SELECT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = $1 AND r.prrelid = $2::regclass)`
	if version >= 150000 {
		q += ` OR EXISTS (SELECT FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid
			WHERE p.pubname = $1 AND pn.pnnspid = (SELECT relnamespace FROM pg_class WHERE oid = $2::regclass))`
	}
	var listed bool
	if err := conn.QueryRow(ctx, q, s.cfg.Publication, t.ident()).Scan(&listed); err != nil {
		return false, fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	return listed, nil
}

// ensureSlot reuses the slot or creates it. A slot this process has
// streamed from that is now gone or lost is fatal: recreating it would
// silently skip every row committed in between.
func (s *Source) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn) (slotInfo, error) {
	for attempt := 0; ; attempt++ {
		var plugin, slotType, db string
		var walStatus *string
		var confirmed *pglogrepl.LSN
		err := conn.QueryRow(ctx, `
			SELECT plugin, slot_type, database, wal_status, confirmed_flush_lsn
			FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&plugin, &slotType, &db, &walStatus, &confirmed)
		if err == nil {
			var current string
			if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&current); err != nil {
				return slotInfo{}, fmt.Errorf("read current database: %w", err)
			}
			switch {
			case slotType != "logical" || plugin != "pgoutput":
				return slotInfo{}, relay.Permanent(fmt.Errorf("replication slot %s is a %s slot with plugin %q; the relay needs a logical pgoutput slot (RELAY_SLOT)", s.cfg.Slot, slotType, plugin))
			case db != current:
				return slotInfo{}, relay.Permanent(fmt.Errorf("replication slot %s belongs to database %s, not %s (RELAY_SLOT)", s.cfg.Slot, db, current))
			case walStatus != nil && *walStatus == "lost" && s.cfg.SlotRecreate && attempt == 0:
				s.log.Warn("replication slot is lost (wal_status lost); recreating it as RELAY_SLOT_RECREATE allows: rows committed since its last confirmed position may never be published", "slot", s.cfg.Slot, "last_confirmed_lsn", lsnString(confirmed))
				if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.cfg.Slot); err != nil {
					return slotInfo{}, classify(fmt.Errorf("drop lost replication slot %s: %w", s.cfg.Slot, err))
				}
				s.slotSeen = false
				continue
			case walStatus != nil && *walStatus == "lost":
				return slotInfo{}, relay.Permanent(fmt.Errorf("replication slot %s is lost (wal_status lost): PostgreSQL removed WAL it still needed, so rows may be missing; drop the slot and recreate it deliberately, or set RELAY_SLOT_RECREATE=true", s.cfg.Slot))
			case confirmed == nil:
				// Only a slot another session is still creating (waiting
				// for a consistent point) has none; its creator may also
				// be exiting, which drops it.
				return slotInfo{}, fmt.Errorf("replication slot %s has no confirmed_flush_lsn yet: another session is creating it", s.cfg.Slot)
			}
			s.slotSeen = true
			return slotInfo{confirmed: relay.LSN(*confirmed)}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return slotInfo{}, fmt.Errorf("read replication slot %s: %w", s.cfg.Slot, err)
		}
		if s.slotSeen && !s.cfg.SlotRecreate {
			return slotInfo{}, relay.Permanent(fmt.Errorf("replication slot %s disappeared while the relay was using it; rows committed since its last confirmed position may be missing: recreate it deliberately and restart, or set RELAY_SLOT_RECREATE=true", s.cfg.Slot))
		}
		if s.slotSeen {
			s.log.Warn("replication slot disappeared; recreating it as RELAY_SLOT_RECREATE allows: rows committed since its last confirmed position may never be published", "slot", s.cfg.Slot)
		}
		action := "NOEXPORT_SNAPSHOT"
		if s.cfg.Snapshot == SnapshotInitial {
			// Recorded first: a relay killed once the slot exists
			// must still backfill.
			if err := s.planBackfill(ctx, conn); err != nil {
				return slotInfo{}, err
			}
			action = "EXPORT_SNAPSHOT"
		}
		res, err := pglogrepl.CreateReplicationSlot(ctx, repl, s.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode:           pglogrepl.LogicalReplication,
			SnapshotAction: action,
		})
		if isCode(err, codeDuplicateObject) && attempt == 0 {
			continue // created concurrently: read it again
		}
		if err != nil {
			return slotInfo{}, classify(fmt.Errorf("create replication slot %s: %w", s.cfg.Slot, err))
		}
		lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
		if err != nil {
			return slotInfo{}, fmt.Errorf("create replication slot %s: consistent point: %w", s.cfg.Slot, err)
		}
		s.slotSeen = true
		s.log.Info("created replication slot", "slot", s.cfg.Slot, "consistent_point", res.ConsistentPoint)
		return slotInfo{confirmed: relay.LSN(lsn), created: true, snapshot: res.SnapshotName}, nil
	}
}

func lsnString(l *pglogrepl.LSN) string {
	if l == nil {
		return "unknown"
	}
	return l.String()
}

func (s *Source) tableNames() []string {
	names := make([]string, len(s.cfg.Tables))
	for i, t := range s.cfg.Tables {
		names[i] = t.String()
	}
	return names
}

// The advisory lock that serialises creating what relays share in a
// database (the publication and its tables, relay.backfill). CREATE ... IF
// NOT EXISTS is not safe against itself: of two sessions that both find
// the object missing, one fails on a catalog unique index. The two-key
// form is apart from the leader locks (pg_locks objsubid 2, not 1).
const (
	createLockClass = 0x72656c61 // "rela"
	createLockID    = 1
)

// createShared runs ddl in a transaction that holds the creation lock, so
// that relays starting together create an object once and the others find
// it. Its error is the statement's; isCreated tells a creation by someone
// not taking the lock (an operator's script) from a failure.
func createShared(ctx context.Context, conn *pgx.Conn, ddl string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", createLockClass, createLockID); err != nil {
			return fmt.Errorf("take the creation lock: %w", err)
		}
		_, err := tx.Exec(ctx, ddl)
		return err
	})
}

// isCreated reports whether err says the object exists already, created
// concurrently: by name (duplicate_object and its kin) or, when the other
// session committed between the existence check and the insert, by a
// catalog unique index.
func isCreated(err error) bool {
	for _, c := range []string{codeDuplicateObject, codeDuplicateSchema, codeDuplicateTable, codeUniqueViolation} {
		if isCode(err, c) {
			return true
		}
	}
	return false
}

func isCode(err error, code string) bool { return pgerr.Is(err, code) }

// classify marks errors that a retry cannot fix: missing privileges and
// unsupported features need an operator.
func classify(err error) error { return pgerr.Classify(err) }
