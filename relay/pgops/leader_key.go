package pgops

import "hash/fnv"

// LeaderLockKey is the PostgreSQL advisory lock key of the relays sharing
// slot: the 64-bit FNV-1a hash of "relay:" + slot, as the bigint that
// pg_try_advisory_lock takes. Relays with one slot contend for one lock, so
// at most one of them streams; `relay status` finds the holder in pg_locks,
// where the key appears split in two: classid is its high 32 bits, objid
// its low 32 bits, and objsubid is 1.
func LeaderLockKey(slot string) int64 {
	h := fnv.New64a()
	h.Write([]byte("relay:" + slot))
	return int64(h.Sum64())
}
