// Package pgerr tells PostgreSQL errors apart by their SQLSTATE code. It
// is shared by the packages that talk to PostgreSQL: pgsource, which reads
// the stream, and pgops, which runs the operations around it.
package pgerr

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
)

// SQLSTATE codes the relay acts on.
const (
	UniqueViolation       = "23505"
	DuplicateTable        = "42P07"
	DuplicateSchema       = "42P06"
	DuplicateObject       = "42710"
	UndefinedObject       = "42704"
	UndefinedTable        = "42P01"
	UndefinedSchema       = "3F000"
	ObjectInUse           = "55006"
	InsufficientPrivilege = "42501"
	FeatureNotSupported   = "0A000"
)

// Is reports whether err is, or wraps, a PostgreSQL error with code.
func Is(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// Classify marks errors that a retry cannot fix: missing privileges and
// unsupported features need an operator.
func Classify(err error) error {
	if Is(err, InsufficientPrivilege) || Is(err, FeatureNotSupported) {
		return relay.Permanent(err)
	}
	return err
}
