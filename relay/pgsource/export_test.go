package pgsource

// BinaryText and BinaryTime let the external tests check the binary
// decoder against a real server.
var (
	BinaryText = func(oid uint32, v []byte) ([]byte, error) {
		var buf []byte
		return binaryText(oid, v, &buf)
	}
	BinaryTime      = binaryTime
	DecodeTimestamp = decodeTimestamp
)
