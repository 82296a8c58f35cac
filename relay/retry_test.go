package relay

import (
	"testing"
	"time"
)

// TestBackoffDoublesToItsCapWithJitter: each wait lies within a fifth
// below the doubled step, the steps stop at the cap, and Reset starts
// over.
func TestBackoffDoublesToItsCapWithJitter(t *testing.T) {
	b := NewBackoff(100*time.Millisecond, time.Second)
	steps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	varied := false
	for round := 0; round < 20; round++ {
		for _, step := range steps {
			step *= time.Millisecond
			got := b.Next()
			if got > step || got < step-step/5 {
				t.Fatalf("round %d: wait %s, want within [%s, %s]", round, got, step-step/5, step)
			}
			varied = varied || got != step
		}
		b.Reset()
	}
	if !varied {
		t.Error("120 waits without jitter")
	}
}
