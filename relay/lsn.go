package relay

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position.
type LSN uint64

// String formats the LSN the way PostgreSQL does (e.g. 0/16B3748).
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// maxLSNLen is the longest text of an LSN: FFFFFFFF/FFFFFFFF.
const maxLSNLen = 17

// AppendLSN appends String's text of l to b without formatting through
// fmt, for paths that run for every event.
func AppendLSN(b []byte, l LSN) []byte {
	b = appendUpperHex(b, uint64(l>>32))
	b = append(b, '/')
	return appendUpperHex(b, uint64(uint32(l)))
}

func appendUpperHex(b []byte, v uint64) []byte {
	start := len(b)
	b = strconv.AppendUint(b, v, 16)
	for i := start; i < len(b); i++ {
		if c := b[i]; c >= 'a' {
			b[i] = c - 'a' + 'A'
		}
	}
	return b
}

// ParseLSN parses the textual form PostgreSQL prints, e.g. 0/16B3748.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse lsn %q: missing '/'", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}
