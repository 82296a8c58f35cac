package relay

// Finding is one result of the preflight (`relay check`): what was looked
// at, what was found and, for a problem, how to fix it. The source and the
// sinks each return their own findings; cmd/relay prints them.
type Finding struct {
	// Check names what was checked, e.g. "wal_level" or "table public.outbox".
	Check string
	// Status says whether the relay can run with what was found.
	Status CheckStatus
	// Detail is what was found. It never holds a password.
	Detail string
	// Fix, for a warning or failure, is the setting or SQL to change.
	Fix string
}

// CheckStatus grades a Finding.
type CheckStatus int

const (
	// CheckOK means nothing needs doing.
	CheckOK CheckStatus = iota
	// CheckWarn means the relay runs, but something deserves a look.
	CheckWarn
	// CheckFail means the relay cannot run, or would lose or stall events.
	CheckFail
)

func (s CheckStatus) String() string {
	switch s {
	case CheckOK:
		return "ok"
	case CheckWarn:
		return "WARN"
	default:
		return "FAIL"
	}
}
