package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
)

// Partitioned outbox tables: a partitioned table in RELAY_TABLES is one
// outbox, whichever partition holds a row. pgoutput can name a leaf
// partition even with publish_via_partition_root, so the source maps each
// relation it meets onto its outbox table, from the partition trees read at
// each session's start or from the catalog at its Relation message. A
// partition detached or dropped before its rows were read is in neither:
// see docs/design.md for how such a row is placed.

// partitions places the relations the stream names onto the outbox tables.
// Only the replication session's goroutine uses it.
type partitions struct {
	tables []Table
	// partitioned are the tables of RELAY_TABLES that are partitioned.
	partitioned []Table
	// roots maps every relation of the outbox tables' partition trees,
	// the tables themselves included, to its outbox table.
	roots map[uint32]Table
	// members maps the same relations by name, as the catalog names them
	// now: what a publication lists.
	members map[Table]Table
	// lookup reads what the catalog says now about a relation.
	lookup func(ctx context.Context, oid uint32) (relationFacts, error)
	log    *slog.Logger
}

// relationFacts is what the catalog says about a relation the stream named.
type relationFacts struct {
	// ancestors are the relation itself, if it still exists, and the
	// tables it is a partition of, nearest first.
	ancestors []Table
	// published: the publication publishes the relation or an ancestor
	// now.
	published bool
}

// errUnplaced is the error of a row under a relation placed on no outbox
// table; Relation messages alone are harmless.
type errUnplaced struct {
	rel         Table
	oid         uint32
	publication string
	partitioned []Table
}

func (e *errUnplaced) Error() string {
	if len(e.partitioned) == 0 {
		return fmt.Sprintf("publication %s streams table %s, which is not in RELAY_TABLES", e.publication, e.rel)
	}
	names := make([]string, len(e.partitioned))
	for i, t := range e.partitioned {
		names[i] = t.String()
	}
	return fmt.Sprintf("publication %s streams rows of %s (oid %d), which is no longer a partition of %s: it was detached or dropped before the relay read its rows, and with several partitioned outbox tables and a publication without publish_via_partition_root nothing says which it belonged to; keep partitions attached until the relay has confirmed their rows, or recreate the publication WITH (publish_via_partition_root = true) (docs/outbox-tables.md, Partitioned outbox tables)",
		e.publication, e.rel, e.oid, strings.Join(names, " or "))
}

// loadPartitions reads the partition trees of the outbox tables, which
// checkTables found to exist. A table that is a partition of another
// table of RELAY_TABLES is refused: they are one outbox.
func (s *Source) loadPartitions(ctx context.Context, conn *pgx.Conn) (*partitions, error) {
	p := &partitions{
		tables:  s.cfg.Tables,
		roots:   map[uint32]Table{},
		members: map[Table]Table{},
		lookup:  s.lookupRelation,
		log:     s.log,
	}
	for _, t := range s.cfg.Tables {
		rows, err := conn.Query(ctx, `
			SELECT c.oid, c.relkind = 'p', n.nspname, c.relname
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = $1::regclass OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass))`, t.ident())
		if err != nil {
			return nil, fmt.Errorf("read the partitions of %s: %w", t, err)
		}
		var oid uint32
		var partitioned bool
		var m Table
		var nested error
		_, err = pgx.ForEachRow(rows, []any{&oid, &partitioned, &m.Schema, &m.Name}, func() error {
			if other, ok := p.members[m]; ok && other != t && nested == nil {
				outer, inner := other, t
				if m == other {
					outer, inner = t, other
				}
				nested = relay.Permanent(fmt.Errorf("table %s is a partition of %s, and RELAY_TABLES lists both: a partitioned table is one outbox, list only %[2]s", inner, outer))
			}
			p.roots[oid], p.members[m] = t, t
			if m == t && partitioned {
				p.partitioned = append(p.partitioned, t)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read the partitions of %s: %w", t, err)
		}
		if nested != nil {
			return nil, nested
		}
	}
	return p, nil
}

// isPartitioned reports whether t is a partitioned table of RELAY_TABLES.
func (p *partitions) isPartitioned(t Table) bool { return slices.Contains(p.partitioned, t) }

// rootOf returns the outbox table that the relation the catalog now calls
// t belongs to.
func (p *partitions) rootOf(t Table) (Table, bool) {
	root, ok := p.members[t]
	return root, ok
}

// place returns the outbox table that relation oid, named named in a
// Relation message, belongs to. ok is false for a relation it cannot place
// but whose Relation message may come without rows; an
// error stops the stream.
func (p *partitions) place(ctx context.Context, oid uint32, named Table, publication string) (root Table, ok bool, err error) {
	if root, ok := p.roots[oid]; ok {
		return root, true, nil
	}
	if slices.Contains(p.tables, named) {
		p.roots[oid] = named
		return named, true, nil
	}
	facts, err := p.lookup(ctx, oid)
	if err != nil {
		return Table{}, false, fmt.Errorf("look up relation %s (oid %d) in the catalog: %w", named, oid, err)
	}
	for _, a := range facts.ancestors {
		if slices.Contains(p.tables, a) {
			p.roots[oid] = a
			return a, true, nil
		}
	}
	if facts.published {
		// Someone else's table, or a partition of one, is in the
		// publication: its rows are not outbox rows.
		what := named.String()
		if len(facts.ancestors) > 1 {
			what += " (a partition of " + facts.ancestors[len(facts.ancestors)-1].String() + ")"
		}
		return Table{}, false, relay.Permanent(fmt.Errorf("publication %s streams table %s, which is not in RELAY_TABLES", publication, what))
	}
	if len(p.partitioned) == 1 {
		// Detached or dropped since its rows were written: published
		// then, it was a partition of the one partitioned outbox.
		root := p.partitioned[0]
		p.log.Info("relation no longer in the catalog as a partition; its rows are from the only partitioned outbox table", "relation", named.String(), "oid", oid, "table", root.String())
		p.roots[oid] = root
		return root, true, nil
	}
	return Table{}, false, nil
}

// checkTimeout bounds a catalog lookup on a connection of its own, so that
// an unreachable server is reported rather than waited for.
const checkTimeout = 10 * time.Second

// lookupRelation reads what the catalog says now about relation oid, on a
// connection opened for the lookup: lookups are rare (a partition attached
// since the session started), so a held connection would sit idle. The
// replication connection waits meanwhile, bounded by checkTimeout.
func (s *Source) lookupRelation(ctx context.Context, oid uint32) (relationFacts, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.cfg.ConnString)
	if err != nil {
		return relationFacts{}, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// pg_partition_ancestors lists a partition, then its parents; a table
	// that is no partition has none, and is listed by the first branch.
	rows, err := conn.Query(ctx, `
		WITH rels AS (
			SELECT $1::oid AS relid, 0::bigint AS ord
			UNION ALL
			SELECT relid, ord FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, ord) WHERE ord > 1
		)
		SELECT n.nspname, c.relname,
			EXISTS (SELECT FROM pg_publication_tables pt WHERE pt.pubname = $2 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
		FROM rels JOIN pg_class c ON c.oid = rels.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		ORDER BY rels.ord`, oid, s.cfg.Publication)
	if err != nil {
		return relationFacts{}, err
	}
	var f relationFacts
	var t Table
	var published bool
	_, err = pgx.ForEachRow(rows, []any{&t.Schema, &t.Name, &published}, func() error {
		f.ancestors = append(f.ancestors, t)
		f.published = f.published || published
		return nil
	})
	return f, err
}
