// Package schema holds the SQL that users apply (the outbox table, the
// least-privilege role, the inbox) and embeds the one the relay also runs
// itself: relay_state.sql, the DDL of the relay's own tables.
package schema

import _ "embed"

// RelayState is relay_state.sql: the relay.* tables (backfill progress,
// confirmed position, replay progress). The relay runs it when its role may
// create them; role.sql includes the same file for a DBA to apply.
//
//go:embed relay_state.sql
var RelayState string
