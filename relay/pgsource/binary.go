package pgsource

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// pgoutput's binary option (PostgreSQL 14+) sends every column whose type
// has a binary send function in that form ('b') instead of calling the
// type's output function: the walsender skips uuid_out, timestamptz_out and
// bytea's hex encoding for every row. It cannot be asked per column, so the
// source turns it on only when it can rebuild, from the binary form, exactly
// the text the output function would have sent (under the session's
// DateStyle=ISO, TimeZone=UTC, bytea_output=hex) for every column of every
// outbox table: a row then becomes the same event, byte for byte, in either
// mode. Anything else keeps the session in text mode.

// More type OIDs the binary decoder knows.
const (
	oidBool = 16
	oidInt8 = 20
	oidInt2 = 21
	oidInt4 = 23
)

// binaryTypeOK reports whether the source renders the binary form of the
// type with this OID exactly as its text output function would.
func binaryTypeOK(oid uint32) bool {
	switch oid {
	case oidBool, oidBytea, oidInt8, oidInt2, oidInt4, oidText, oidJSON, oidBpchar, oidVarchar,
		oidTimestamp, oidTimestamptz, oidUUID, oidJSONB:
		return true
	}
	return false
}

// binarySettings returns why the replication session's settings, as the
// server reports them (param), rule out binary mode, or "": the text the
// source rebuilds is what the output functions write under DateStyle ISO
// and TimeZone UTC. connect asks for both, but a TimeZone in the URL is a
// second startup parameter, and which of the two the server applies last
// is not the relay's to choose.
func binarySettings(param func(name string) string) string {
	if tz := param("TimeZone"); tz != "UTC" {
		return fmt.Sprintf("the replication session's TimeZone is %q, not UTC", tz)
	}
	if ds := param("DateStyle"); !strings.HasPrefix(ds, "ISO,") {
		return fmt.Sprintf("the replication session's DateStyle is %q, not ISO", ds)
	}
	return ""
}

// errBinary is wrapped by errors about a binary value the source cannot
// render; the next session streams in text mode instead.
var errBinary = errors.New("pgoutput binary value")

// binaryText returns the text form of v, the binary form of a value of
// type oid. Text, json and the character types are the same bytes in both
// forms and jsonb is a version byte before its text, so those alias v;
// others are appended to *buf, which may then grow.
func binaryText(oid uint32, v []byte, buf *[]byte) ([]byte, error) {
	switch oid {
	case oidText, oidVarchar, oidBpchar, oidJSON:
		return v, nil
	case oidJSONB:
		// jsonb_send: a format version, 1 since PostgreSQL 9.4, then the
		// same text jsonb_out writes.
		if len(v) == 0 || v[0] != 1 {
			return nil, fmt.Errorf("%w: jsonb of version %v", errBinary, v[:min(len(v), 1)])
		}
		return v[1:], nil
	}
	start := len(*buf)
	b := *buf
	switch oid {
	case oidUUID:
		if len(v) != 16 {
			return nil, fmt.Errorf("%w: uuid of %d bytes", errBinary, len(v))
		}
		b = appendUUID(b, v)
	case oidTimestamptz, oidTimestamp:
		if len(v) != 8 {
			return nil, fmt.Errorf("%w: timestamp of %d bytes", errBinary, len(v))
		}
		b = appendTimestamp(b, int64(binary.BigEndian.Uint64(v)), oid == oidTimestamptz)
	case oidInt2, oidInt4, oidInt8:
		n, ok := binaryInt(oid, v)
		if !ok {
			return nil, fmt.Errorf("%w: integer type %d of %d bytes", errBinary, oid, len(v))
		}
		b = strconv.AppendInt(b, n, 10)
	case oidBool:
		if len(v) != 1 || v[0] > 1 {
			return nil, fmt.Errorf("%w: boolean %x", errBinary, v)
		}
		b = append(b, "ft"[v[0]])
	case oidBytea:
		b = append(b, `\x`...)
		b = hex.AppendEncode(b, v)
	default:
		return nil, fmt.Errorf("%w: no text form for type %d", errBinary, oid)
	}
	*buf = b
	// Capped, so that nothing appended later can reach into a value.
	return b[start:len(b):len(b)], nil
}

func binaryInt(oid uint32, v []byte) (int64, bool) {
	switch {
	case oid == oidInt2 && len(v) == 2:
		return int64(int16(binary.BigEndian.Uint16(v))), true
	case oid == oidInt4 && len(v) == 4:
		return int64(int32(binary.BigEndian.Uint32(v))), true
	case oid == oidInt8 && len(v) == 8:
		return int64(binary.BigEndian.Uint64(v)), true
	}
	return 0, false
}

// appendUUID writes uuid_out's form: lower-case hex in 8-4-4-4-12 groups.
func appendUUID(b []byte, v []byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range v[:16] {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, digits[c>>4], digits[c&15])
	}
	return b
}

// appendTimestamp writes what timestamptz_out (tz, under TimeZone=UTC) or
// timestamp_out write in the ISO DateStyle for us microseconds since
// 2000-01-01: at least four digits of year, the fraction without trailing
// zeros, "+00", and " BC" for years before 1 (year 0 is 1 BC, in
// PostgreSQL's proleptic Gregorian calendar as here).
func appendTimestamp(b []byte, us int64, tz bool) []byte {
	switch us {
	case math.MaxInt64:
		return append(b, "infinity"...)
	case math.MinInt64:
		return append(b, "-infinity"...)
	}
	sec, frac := floorDiv(us, 1e6)
	days, sod := floorDiv(sec, 86400)
	year, month, day := civil(days + 10957) // 2000-01-01 is day 10957 of the Unix epoch
	bc := year <= 0
	if bc {
		year = 1 - year
	}
	if year < 10000 {
		b = append2(b, int(year/100))
		b = append2(b, int(year%100))
	} else {
		b = strconv.AppendInt(b, year, 10)
	}
	b = append(b, '-')
	b = append2(b, month)
	b = append(b, '-')
	b = append2(b, day)
	b = append(b, ' ')
	b = append2(b, int(sod/3600))
	b = append(b, ':')
	b = append2(b, int(sod/60%60))
	b = append(b, ':')
	b = append2(b, int(sod%60))
	if frac != 0 {
		// Six digits, less the trailing zeros.
		n := 6
		for frac%10 == 0 {
			frac /= 10
			n--
		}
		b = append(b, '.', '0', '0', '0', '0', '0', '0')
		b = b[:len(b)-6+n]
		for i := len(b) - 1; frac > 0; i-- {
			b[i] = byte('0' + frac%10)
			frac /= 10
		}
	}
	if tz {
		b = append(b, "+00"...)
	}
	if bc {
		b = append(b, " BC"...)
	}
	return b
}

// append2 writes n, from 0 to 99, in two digits.
func append2(b []byte, n int) []byte {
	return append(b, byte('0'+n/10), byte('0'+n%10))
}

// floorDiv returns the quotient rounded down and the remainder, which is
// then never negative.
func floorDiv(a, d int64) (q, r int64) {
	q, r = a/d, a%d
	if r < 0 {
		q, r = q-1, r+d
	}
	return q, r
}

// civil returns the proleptic Gregorian date of a day counted from
// 1970-01-01, with year 0 for 1 BC (H. Hinnant's civil_from_days).
func civil(days int64) (year int64, month, day int) {
	era, doe := floorDiv(days+719468, 146097)
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = int(doy - (153*mp+2)/5 + 1)
	month = int(mp + 3)
	if month > 12 {
		month -= 12
	}
	year = yoe + era*400
	if month <= 2 {
		year++
	}
	return year, month, day
}

// binaryTime is the time.Time decodeTimestamp gives the text form of the
// binary timestamp v, without building that text; ok is false where
// decodeTimestamp would fail (infinity, before 0001 or after 9999), so
// that the caller takes the text path and its error.
func binaryTime(v []byte) (t time.Time, ok bool) {
	if len(v) != 8 {
		return time.Time{}, false
	}
	us := int64(binary.BigEndian.Uint64(v))
	// 0001-01-01 00:00:00 and 10000-01-01 00:00:00 UTC in microseconds
	// since 2000-01-01.
	const lo, hi = -63082281600000000, 252455616000000000
	if us < lo || us >= hi {
		return time.Time{}, false
	}
	sec, frac := floorDiv(us, 1e6)
	return time.Unix(y2k+sec, frac*1e3).UTC(), true
}
