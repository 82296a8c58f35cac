package pgops

import "testing"

func TestLeaderLockKey(t *testing.T) {
	t.Parallel()
	// Expected values computed independently (FNV-1a 64 in Python); a change
	// here would let an old and a new relay stream from one slot together.
	tests := []struct {
		slot string
		want int64
	}{
		{"outbox_relay", 0x74ce17ea5bcd6ed7},
		{"", -5591033886467547384}, // 0xb268a84d85ee1f08: negative as a bigint
		{"slot_a", 0x1af0b131b4555010},
	}
	for _, tt := range tests {
		if got := LeaderLockKey(tt.slot); got != tt.want {
			t.Errorf("LeaderLockKey(%q) = %#x, want %#x", tt.slot, uint64(got), uint64(tt.want))
		}
	}
}
