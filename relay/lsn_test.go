package relay_test

import (
	"math/rand/v2"
	"testing"

	"github.com/relay-dev/relay/relay"
)

func TestLSNString(t *testing.T) {
	tests := []struct {
		lsn  relay.LSN
		want string
	}{
		{0, "0/0"},
		{0x16B3748, "0/16B3748"},
		{0xFFFFFFFF, "0/FFFFFFFF"},
		{1 << 32, "1/0"},
		{0x16_B374D848, "16/B374D848"},
		{0x1_000000FF, "1/FF"},
		{1<<64 - 1, "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.lsn.String(); got != tt.want {
				t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.lsn), got, tt.want)
			}
		})
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want relay.LSN
	}{
		{"0/0", 0},
		{"0/16B3748", 0x16B3748},
		{"0/16b3748", 0x16B3748},
		{"16/B374D848", 0x16_B374D848},
		{"1/0", 1 << 32},
		{"00000000/00000001", 1},
		{"FFFFFFFF/FFFFFFFF", 1<<64 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := relay.ParseLSN(tt.in)
			if err != nil {
				t.Fatalf("ParseLSN(%q) error: %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseLSN(%q) = %#x, want %#x", tt.in, uint64(got), uint64(tt.want))
			}
		})
	}
}

func TestParseLSNErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"/",
		"16B3748",
		"/16B3748",
		"0/",
		"0//1",
		"0/1/2",
		"G/0",
		"0/xyz",
		"100000000/0", // high half over 32 bits
		"0/100000000", // low half over 32 bits
		"-1/0",
		"+1/0",
		"0x1/0",
		"0/1_0",
		" 0/1",
		"0/1 ",
		"0 /1",
	} {
		t.Run(in, func(t *testing.T) {
			if got, err := relay.ParseLSN(in); err == nil {
				t.Errorf("ParseLSN(%q) = %s, want an error", in, got)
			}
		})
	}
}

func TestLSNRoundTrip(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	lsns := []relay.LSN{0, 1, 1<<32 - 1, 1 << 32, 1<<64 - 1}
	for range 10000 {
		lsns = append(lsns, relay.LSN(rng.Uint64()), relay.LSN(rng.Uint32()))
	}
	for _, l := range lsns {
		s := l.String()
		got, err := relay.ParseLSN(s)
		if err != nil {
			t.Fatalf("ParseLSN(%q) (from LSN %#x) error: %v", s, uint64(l), err)
		}
		if got != l {
			t.Fatalf("ParseLSN(%q) = %#x, want %#x", s, uint64(got), uint64(l))
		}
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "0/16B3748", "16/b374d848", "FFFFFFFF/FFFFFFFF", "1/2/3", "x/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := relay.ParseLSN(s)
		if err != nil {
			return
		}
		again, err := relay.ParseLSN(l.String())
		if err != nil || again != l {
			t.Fatalf("ParseLSN(%q) = %s, which parses back as %s, %v", s, l, again, err)
		}
	})
}
