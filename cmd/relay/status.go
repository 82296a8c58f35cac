package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/relay-dev/relay/relay/pgops"
)

// runStatus is `relay status`: the replication slot's position, lag and
// retained WAL, and which session holds the leader lock. It exits 0 when
// it could report on an existing slot, 1 when the database cannot be read
// or the slot does not exist, 2 on invalid configuration.
func runStatus(environ map[string]string, stdout, stderr io.Writer) int {
	cfg, ok := commandConfig(environ, stderr)
	if !ok {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := pgops.ReadStatus(ctx, cfg.DatabaseURL, cfg.Slot)
	if err != nil {
		fmt.Fprintln(stderr, mask("relay status: "+err.Error(), cfg.secrets()))
		return 1
	}
	printStatus(stdout, st)
	if !st.Exists {
		return 1
	}
	return 0
}

func printStatus(w io.Writer, st pgops.SlotStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	if !st.Exists {
		row("slot", "%s (does not exist)", st.Slot)
	} else {
		row("slot", "%s (%s, %s)", st.Slot, st.Type, st.Plugin)
		if st.Active {
			row("active", "yes, pid %d", st.ActivePID)
		} else {
			row("active", "no")
		}
		row("confirmed_flush_lsn", "%s", st.Confirmed)
		row("lag", "%s", bytesText(st.Lag))
		row("retained_wal", "%s", bytesText(st.Retained))
		row("wal_status", "%s", st.WALStatus)
	}
	switch l := st.Leader; {
	case l == nil:
		row("leader", "none (no session holds the leader lock)")
	default:
		who := l.ApplicationName
		if l.ClientAddr != "" {
			who += ", " + l.ClientAddr
		}
		since := ""
		if !l.Since.IsZero() {
			since = ", connected since " + l.Since.UTC().Format(time.RFC3339)
		}
		row("leader", "pid %d (%s)%s", l.PID, who, since)
	}
}

// bytesText shows an exact byte count, for scripts, and a rounded one.
func bytesText(n int64) string {
	if n < 0 {
		return "unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	return fmt.Sprintf("%d bytes (%.1f %s)", n, v, suffix)
}
