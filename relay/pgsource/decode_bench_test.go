package pgsource

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"
)

// benchRow is an Insert message of the row `make bench` commits: the
// standard layout with a 250-byte JSON payload, one trace header and a
// created_at timestamp.
func benchRow() []byte {
	return insertMsg(16384,
		txt("0190a6a0-1d2e-7f3a-8b4c-5d6e7f8a9b0c"), txt("order"), txt("421"), txt("placed"),
		txt(`{"ts": 1732406400123456, "items": [{"qty": 2, "sku": "sku-33", "price_cents": 5021}], "currency": "EUR", "customer": "customer-421", "order_id": 1421, "total_cents": 84937}`),
		txt(`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`),
		txt("2024-11-24 00:13:38.123456+00"), txt("acme"))
}

// BenchmarkDecodeInsert measures turning one pgoutput Insert into an event,
// the source's work per row.
func BenchmarkDecodeInsert(b *testing.B) {
	rels := map[uint32]*relation{16384: mustRelation(b, standardTable(oidJSONB), StandardColumns)}
	data := benchRow()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeInsert(data, rels); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeHeaders(b *testing.B) {
	in := []byte(`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeHeaders(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTimestamp(b *testing.B) {
	in := []byte("2024-11-24 00:13:38.123456+00")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeTimestamp(in); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRowBinary is benchRow as pgoutput's binary format sends it.
func benchRowBinary() []byte {
	id, _ := hex.DecodeString("0190a6a01d2e7f3a8b4c5d6e7f8a9b0c")
	created := time.Date(2024, 11, 24, 0, 13, 38, 123456000, time.UTC).Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Microseconds()
	return insertMsg(16384,
		binaryCol(id), binaryCol([]byte("order")), binaryCol([]byte("421")), binaryCol([]byte("placed")),
		binaryCol(append([]byte{1}, `{"ts": 1732406400123456, "items": [{"qty": 2, "sku": "sku-33", "price_cents": 5021}], "currency": "EUR", "customer": "customer-421", "order_id": 1421, "total_cents": 84937}`...)),
		binaryCol(append([]byte{1}, `{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`...)),
		binaryCol(binary.BigEndian.AppendUint64(nil, uint64(created))), binaryCol([]byte("acme")))
}

// BenchmarkDecodeInsertBinary is BenchmarkDecodeInsert for a session in
// pgoutput's binary format.
func BenchmarkDecodeInsertBinary(b *testing.B) {
	rel := mustRelation(b, standardTable(oidJSONB), StandardColumns)
	rel.binary = true
	rels := map[uint32]*relation{16384: rel}
	data := benchRowBinary()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeInsert(data, rels); err != nil {
			b.Fatal(err)
		}
	}
}
