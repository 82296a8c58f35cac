// Package pgops runs the operations on PostgreSQL around the replication
// stream that package pgsource reads: the leader lock, which lets one of
// several relays sharing a slot stream while the others stand by, and on
// its connection the heartbeats, the retained-WAL polling and the durable
// position record (Leader); the deletion of published rows (Cleaner,
// Retainer); and the read-only inspections behind `relay check` (Check)
// and `relay status` (ReadStatus).
//
// None of it reads the stream: each part works on a normal connection of
// its own, and cmd/relay decides which run. pgops uses pgsource's
// vocabulary (Table, Columns, the mapping rules); pgsource never imports
// pgops.
package pgops
