// Package pgops runs the operations on PostgreSQL around the replication
// stream that package pgsource reads: the leader lock, which lets one of
// several relays sharing a slot stream while the others stand by, and on
// its connection the heartbeats, the retained-WAL polling and the durable
// position record (Leader); the deletion of published rows (Cleaner,
// Retainer); and the read-only inspections behind `relay check` (Check)
// and `relay status` (ReadStatus).
//
// It is apart from pgsource because none of it reads the stream: each part
// works on a normal connection of its own, next to the replication
// connection, and cmd/relay decides which of them run. pgsource thus holds
// only what decides which rows are read and which positions confirmed;
// pgops uses its vocabulary (Table, Columns, the mapping rules), and
// pgsource never imports pgops.
package pgops
