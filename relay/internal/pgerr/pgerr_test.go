package pgerr

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
)

func TestClassify(t *testing.T) {
	pgErr := func(code string) error {
		return fmt.Errorf("create slot: %w", &pgconn.PgError{Code: code, Message: "m"})
	}
	tests := []struct {
		name          string
		err           error
		wantPermanent bool
	}{
		{name: "insufficient privilege", err: pgErr(InsufficientPrivilege), wantPermanent: true},
		{name: "feature not supported", err: pgErr(FeatureNotSupported), wantPermanent: true},
		{name: "duplicate object", err: pgErr(DuplicateObject)},
		{name: "object in use", err: pgErr(ObjectInUse)},
		{name: "connection failure", err: pgErr("08006")},
		{name: "not a PostgreSQL error", err: errors.New("connection reset")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err)
			if relay.IsPermanent(got) != tt.wantPermanent {
				t.Errorf("IsPermanent(Classify(%v)) = %v, want %v", tt.err, !tt.wantPermanent, tt.wantPermanent)
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("Classify(%v) = %v, which does not wrap the error", tt.err, got)
			}
		})
	}
	if !Is(pgErr(ObjectInUse), ObjectInUse) || Is(pgErr(ObjectInUse), UndefinedObject) || Is(nil, ObjectInUse) {
		t.Error("Is does not match SQLSTATE codes through wrapping")
	}
}
