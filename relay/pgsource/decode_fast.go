package pgsource

import (
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/relay-dev/relay/relay"
)

// Fast paths for the text PostgreSQL actually sends for the headers and
// created_at columns, whose general decoders (encoding/json into a map,
// time.Parse over four layouts) cost more than the rest of decoding a row.
// A fast path accepts only a narrow shape and reports ok false for anything
// else, so every result and error is the general decoder's;
// FuzzFastHeaders and FuzzFastTimestamp check that the two agree.

// fastHeaders reads a JSON object whose values are all strings without
// escapes, such as jsonb's {"k": "v", "k2": "v2"}. Keys and values alias
// b.
func fastHeaders(b []byte) ([]relay.Header, bool) {
	type span struct{ key, value []byte }
	var buf [8]span
	spans := buf[:0]
	p := skipJSONSpace(b, 0)
	if p >= len(b) || b[p] != '{' {
		return nil, false
	}
	p = skipJSONSpace(b, p+1)
	if p < len(b) && b[p] == '}' {
		if skipJSONSpace(b, p+1) != len(b) {
			return nil, false
		}
		return []relay.Header{}, true
	}
	for {
		key, next, ok := plainJSONString(b, p)
		if !ok {
			return nil, false
		}
		p = skipJSONSpace(b, next)
		if p >= len(b) || b[p] != ':' {
			return nil, false
		}
		value, next, ok := plainJSONString(b, skipJSONSpace(b, p+1))
		if !ok {
			return nil, false
		}
		spans = append(spans, span{key, value})
		p = skipJSONSpace(b, next)
		if p >= len(b) {
			return nil, false
		}
		if b[p] == ',' {
			p = skipJSONSpace(b, p+1)
			continue
		}
		if b[p] != '}' || skipJSONSpace(b, p+1) != len(b) {
			return nil, false
		}
		break
	}
	hs := make([]relay.Header, len(spans))
	for i, s := range spans {
		hs[i] = relay.Header{Key: aliasString(s.key), Value: aliasString(s.value)}
	}
	if len(hs) > 1 {
		slices.SortFunc(hs, func(a, b relay.Header) int { return strings.Compare(a.Key, b.Key) })
		for i := 1; i < len(hs); i++ {
			if hs[i].Key == hs[i-1].Key {
				return nil, false // the general decoder keeps the last
			}
		}
	}
	return hs, true
}

// plainJSONString returns the content of the JSON string at b[p] when it
// needs no decoding: no escapes, no control characters, valid UTF-8
// (encoding/json replaces invalid bytes).
func plainJSONString(b []byte, p int) (s []byte, next int, ok bool) {
	if p >= len(b) || b[p] != '"' {
		return nil, 0, false
	}
	ascii := true
	for i := p + 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s = b[p+1 : i]
			if !ascii && !utf8.Valid(s) {
				return nil, 0, false
			}
			return s, i + 1, true
		case c == '\\' || c < 0x20:
			return nil, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, 0, false
}

func skipJSONSpace(b []byte, p int) int {
	for p < len(b) && (b[p] == ' ' || b[p] == '\t' || b[p] == '\n' || b[p] == '\r') {
		p++
	}
	return p
}

// fastTimestamp parses the ISO DateStyle output of timestamptz and
// timestamp: YYYY-MM-DD HH:MM:SS, an optional fraction of one to nine
// digits and an optional offset ±HH[:MM[:SS]]. The result is in UTC.
func fastTimestamp(b []byte) (time.Time, bool) {
	if len(b) < 19 || b[4] != '-' || b[7] != '-' || b[10] != ' ' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := atoiN(b[0:4])
	month, ok2 := atoiN(b[5:7])
	day, ok3 := atoiN(b[8:10])
	hour, ok4 := atoiN(b[11:13])
	minute, ok5 := atoiN(b[14:16])
	sec, ok6 := atoiN(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	p := 19
	nsec := 0
	if p < len(b) && b[p] == '.' {
		start := p + 1
		for p = start; p < len(b) && b[p] >= '0' && b[p] <= '9'; p++ {
			nsec = nsec*10 + int(b[p]-'0')
		}
		n := p - start
		if n == 0 || n > 9 {
			return time.Time{}, false
		}
		for range 9 - n {
			nsec *= 10
		}
	}
	offset := 0
	if p < len(b) {
		sign := b[p]
		if sign != '+' && sign != '-' || p+3 > len(b) {
			return time.Time{}, false
		}
		h, ok := atoiN(b[p+1 : p+3])
		if !ok || h > 14 {
			return time.Time{}, false
		}
		offset = h * 3600
		p += 3
		for unit := 60; p < len(b) && unit >= 1; unit /= 60 {
			if b[p] != ':' || p+3 > len(b) {
				return time.Time{}, false
			}
			n, ok := atoiN(b[p+1 : p+3])
			if !ok || n > 59 {
				return time.Time{}, false
			}
			offset += n * unit
			p += 3
		}
		if p != len(b) {
			return time.Time{}, false
		}
		if sign == '-' {
			offset = -offset
		}
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}

// atoiN parses ASCII decimal digits only.
func atoiN(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
