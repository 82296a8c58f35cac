package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// replayFlags are the flags of `relay replay`.
type replayFlags struct {
	since, until, fromID, toID     string
	aggregateType, aggregateID     string
	tables, destination, resume    string
	deadLetter, dryRun             bool
	selecting                      []string // the selection flags given
	sinceTime, untilTime, nowStamp time.Time
}

// selectionFlags are the flags that make a replay's selection; a resumed
// replay has its own. --dead-letter is not one: it is the way past a row
// that stopped a replay.
var selectionFlags = []string{"since", "until", "from-id", "to-id", "aggregate-type", "aggregate-id", "table", "destination"}

func (f *replayFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.since, "since", "", "replay rows whose created_at is at or after `TIME`: RFC 3339 (2026-12-01T08:00:00Z), a date (2026-12-01, UTC) or a duration ago (90m, 24h, 7d)")
	fs.StringVar(&f.until, "until", "", "replay rows whose created_at is before `TIME`, as for --since (default: when the replay starts)")
	fs.StringVar(&f.fromID, "from-id", "", "replay rows whose id is at least `ID`, compared in the id column's type")
	fs.StringVar(&f.toID, "to-id", "", "replay rows whose id is at most `ID`")
	fs.StringVar(&f.aggregateType, "aggregate-type", "", "replay the rows of this aggregate `TYPE` only")
	fs.StringVar(&f.aggregateID, "aggregate-id", "", "replay the rows of this aggregate `ID` only")
	fs.StringVar(&f.tables, "table", "", "replay these `TABLES` of RELAY_TABLES only, comma-separated schema.table (default: all)")
	fs.StringVar(&f.destination, "destination", "", "send every row to `DEST` instead of where it went, as a row's destination column says it (rabbitmq: routing-key, exchange/routing-key or /queue; kafka: a topic)")
	fs.BoolVar(&f.deadLetter, "dead-letter", false, "send rows that cannot be published to RELAY_DEAD_LETTER, as the relay does, instead of stopping at the first (also with --resume)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "count the rows the replay would publish, publish nothing")
	fs.StringVar(&f.resume, "resume", "", "resume the interrupted replay `REPLAY_ID` where its confirmed rows end, with its own selection")
}

// replayUsage prints the synopsis and the flags.
func replayUsage(w io.Writer) {
	fmt.Fprint(w, `relay replay [flags]: publish the rows still in the outbox tables again, with the
same ids, header x-relay-replay, in created_at order, beside a running relay.
Exit 0 when done or when no rows match, 1 on an error or interruption (resume
it with --resume), 2 on a wrong request or configuration.

`)
	printReplayFlags(w)
}

// printReplayFlags lists the flags, one per line, as `relay --help` and
// `relay replay --help` show them.
func printReplayFlags(w io.Writer) {
	fs := flag.NewFlagSet("relay replay", flag.ContinueOnError)
	(&replayFlags{}).define(fs)
	fs.VisitAll(func(fl *flag.Flag) {
		name, usage := flag.UnquoteUsage(fl)
		left := "--" + fl.Name
		if name != "" {
			left += " " + name
		}
		fmt.Fprintf(w, "  %-26s %s\n", left, usage)
	})
}

// parse reads args, refusing what is wrong on its face; now resolves
// durations ago.
func (f *replayFlags) parse(args []string, now time.Time) error {
	fs := flag.NewFlagSet("relay replay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every option is a flag", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for _, name := range selectionFlags {
		if given[name] {
			f.selecting = append(f.selecting, "--"+name)
		}
	}
	f.nowStamp = now
	if given["resume"] {
		if f.resume == "" {
			return errors.New("--resume: want the id of a replay")
		}
		if len(f.selecting) > 0 {
			return fmt.Errorf("--resume goes on with the replay's own selection: leave out %s", strings.Join(f.selecting, ", "))
		}
		return nil
	}
	var err error
	if given["since"] {
		if f.sinceTime, err = parseReplayTime(f.since, now); err != nil {
			return fmt.Errorf("--since %w", err)
		}
	}
	if given["until"] {
		if f.untilTime, err = parseReplayTime(f.until, now); err != nil {
			return fmt.Errorf("--until %w", err)
		}
	}
	if given["since"] && given["until"] && !f.sinceTime.Before(f.untilTime) {
		return fmt.Errorf("--since %s is not before --until %s: no row can match", f.sinceTime.Format(time.RFC3339Nano), f.untilTime.Format(time.RFC3339Nano))
	}
	for _, v := range []struct{ name, value string }{
		{"from-id", f.fromID}, {"to-id", f.toID}, {"aggregate-type", f.aggregateType},
		{"aggregate-id", f.aggregateID}, {"table", f.tables}, {"destination", f.destination},
	} {
		if given[v.name] && v.value == "" {
			return fmt.Errorf("--%s: empty; leave the flag out to select every row", v.name)
		}
	}
	return nil
}

// parseReplayTime reads an RFC 3339 time, a date (midnight UTC) or a
// duration before now (Go's units, or whole days as 7d).
func parseReplayTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		if n, nerr := strconv.Atoi(days); nerr == nil {
			d, err = time.Duration(n)*24*time.Hour, nil
		}
	}
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-12-01T08:00:00Z), a date (2026-12-01) or a duration ago (90m, 24h, 7d)", s)
	}
	return now.Add(-d), nil
}

// newReplayID names a replay after when it began, with a random suffix.
func newReplayID(now time.Time) string {
	b := make([]byte, 3)
	rand.Read(b)
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// runReplay is `relay replay`.
func runReplay(args []string, environ map[string]string, stdout, stderr io.Writer) int {
	var f replayFlags
	if err := f.parse(args, time.Now()); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			replayUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "relay replay: %v\n\n", err)
		replayUsage(stderr)
		return 2
	}
	cfg, ok := commandConfig(environ, stderr)
	if !ok {
		return 2
	}
	sel, err := f.selection(&cfg)
	if err != nil {
		fmt.Fprintf(stderr, "relay replay: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	id := f.resume
	if id == "" {
		id = newReplayID(f.nowStamp)
	}
	log := newLogger(cfg, stderr)
	rep, err := pgsource.OpenReplay(ctx, pgsource.ReplayConfig{
		ConnString:      cfg.DatabaseURL,
		Columns:         cfg.columns(),
		TableColumns:    cfg.tableColumns(),
		ID:              id,
		Selection:       sel,
		Resume:          f.resume != "",
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          log,
	})
	if err != nil {
		fmt.Fprintln(stderr, mask("relay replay: "+err.Error(), cfg.secrets()))
		if errors.Is(err, pgsource.ErrReplayRequest) {
			return 2
		}
		return 1
	}
	defer rep.Close(context.Background())
	sel = rep.Selection()
	if f.resume != "" {
		sel.DeadLetter = sel.DeadLetter || f.deadLetter
		if sel.Sink != cfg.Sink {
			fmt.Fprintf(stderr, "relay replay: replay %s publishes to %s, and RELAY_SINK is %s: resume it with the configuration it began with\n", id, sel.Sink, cfg.Sink)
			return 2
		}
		if sel.DeadLetter && cfg.DeadLetter == "" {
			fmt.Fprintf(stderr, "relay replay: replay %s sends rows that cannot be published to RELAY_DEAD_LETTER, which is not set\n", id)
			return 2
		}
		if rep.Complete() {
			fmt.Fprintf(stdout, "replay %s is complete: %d rows\n", id, rep.Replayed())
			return 0
		}
	}
	what := describeSelection(sel)
	if rep.Remaining() == 0 {
		if f.resume != "" {
			if err := rep.Finish(ctx); err != nil {
				fmt.Fprintln(stderr, mask("relay replay: "+err.Error(), cfg.secrets()))
				return 1
			}
			fmt.Fprintf(stdout, "replay %s is complete: %d rows, none left\n", id, rep.Replayed())
			return 0
		}
		fmt.Fprintf(stdout, "no rows match: %s\n", what)
		return 0
	}
	if f.dryRun {
		fmt.Fprintf(stdout, "%d rows match: %s\n", rep.Remaining(), what)
		return 0
	}
	if err := rep.Record(ctx); err != nil {
		fmt.Fprintln(stderr, mask("relay replay: "+err.Error(), cfg.secrets()))
		return 1
	}
	fmt.Fprintf(stderr, "replay %s: %d rows of %s to %s; if interrupted, resume it with: relay replay --resume %s\n", id, rep.Remaining(), what, cfg.Sink, id)
	return replay(ctx, cfg, log, rep, sel, id, stdout, stderr)
}

// selection turns the flags into the replay's selection, checked against
// the configuration.
func (f *replayFlags) selection(cfg *config) (pgsource.ReplaySelection, error) {
	sel := pgsource.ReplaySelection{FromID: f.fromID, ToID: f.toID, AggregateType: f.aggregateType, AggregateID: f.aggregateID,
		Destination: f.destination, Sink: cfg.Sink, DeadLetter: f.deadLetter}
	if f.deadLetter && cfg.DeadLetter == "" {
		return sel, errors.New("--dead-letter sends rows that cannot be published to RELAY_DEAD_LETTER, which is not set")
	}
	if f.resume != "" {
		return sel, nil
	}
	if !f.sinceTime.IsZero() {
		sel.Since = &f.sinceTime
	}
	if !f.untilTime.IsZero() {
		sel.Until = &f.untilTime
	}
	tables := cfg.tables()
	if f.tables != "" {
		tables = nil
		for _, s := range strings.Split(f.tables, ",") {
			t, err := pgsource.ParseTable(s)
			if err != nil {
				return sel, fmt.Errorf("--table: %w", err)
			}
			if !slices.Contains(cfg.tables(), t) {
				return sel, fmt.Errorf("--table: %s is not one of RELAY_TABLES (%s)", t, strings.Join(tableNames(cfg.tables()), ", "))
			}
			if !slices.Contains(tables, t) {
				tables = append(tables, t)
			}
		}
	}
	for _, t := range tables {
		sel.Tables = append(sel.Tables, t.String())
		if tc := cfg.forTable(t); (sel.Since != nil || sel.Until != nil) && tc.columns().CreatedAt == "" {
			return sel, fmt.Errorf("--since and --until select by created_at, and table %s maps none (set %s)", t, cfg.variableFor(t, "RELAY_COLUMN_CREATED_AT"))
		}
	}
	if d := f.destination; d != "" {
		switch cfg.Sink {
		case "kafka":
			if !topicRE.MatchString(d) {
				return sel, fmt.Errorf("--destination %q: not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')", d)
			}
		default:
			x, key, _ := strings.Cut(d, "/")
			if len(x) > 255 || len(key) > 255 || strings.HasPrefix(d, "/") && key == "" {
				return sel, fmt.Errorf("--destination %q: want routing-key, exchange/routing-key or /queue, each name at most 255 bytes", d)
			}
		}
	}
	return sel, nil
}

// describeSelection is the selection in words, for the lines the command
// prints.
func describeSelection(sel pgsource.ReplaySelection) string {
	parts := []string{strings.Join(sel.Tables, ", ")}
	if sel.Since != nil {
		parts = append(parts, "created_at >= "+sel.Since.UTC().Format(time.RFC3339Nano))
	}
	if sel.Until != nil {
		parts = append(parts, "created_at < "+sel.Until.UTC().Format(time.RFC3339Nano))
	}
	if sel.FromID != "" {
		parts = append(parts, "id >= "+sel.FromID)
	}
	if sel.ToID != "" {
		parts = append(parts, "id <= "+sel.ToID)
	}
	if sel.AggregateType != "" {
		parts = append(parts, "aggregate_type = "+sel.AggregateType)
	}
	if sel.AggregateID != "" {
		parts = append(parts, "aggregate_id = "+sel.AggregateID)
	}
	s := strings.Join(parts, ", ")
	if sel.Destination != "" {
		s += ", to destination " + sel.Destination
	}
	return s
}

// replay publishes through the relay core until the replay is done, stops
// at a row, or is interrupted.
func replay(ctx context.Context, cfg config, log *slog.Logger, rep *pgsource.Replay, sel pgsource.ReplaySelection, id string, stdout, stderr io.Writer) int {
	// A replay is not the stream: no fence to wait on (the live relay
	// holds it), and no Kafka transaction, whose id would fence the live
	// relay's; records are produced idempotently instead.
	sc := cfg
	sc.KafkaExactlyOnce = false
	if !sel.DeadLetter {
		sc.DeadLetter = ""
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sink, err := newSink(ctx, sc, log, nil, "")
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "relay replay: interrupted before connecting to the broker; resume with: relay replay --resume %s\n", id)
			return 1
		}
		fmt.Fprintln(stderr, mask("relay replay: "+err.Error(), cfg.secrets()))
		return 1
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := sink.Close(cctx); err != nil {
			log.Warn("closing the broker connection", "error", err)
		}
	}()
	var published, dead atomic.Int64
	r := relay.New(relay.Config{
		Source:           rep,
		Sink:             sink,
		MaxInFlight:      cfg.MaxInFlight,
		MaxInFlightBytes: cfg.MaxInFlightBytes,
		DeadLetter:       sel.DeadLetter,
		// The replay stops at a bad row instead of retrying it.
		BlockedRetry: time.Hour,
		OnPublished: func(ev *relay.Event) {
			published.Add(1)
			if ev.DeadLettered() {
				dead.Add(1)
			}
		},
		Logger: log,
	})
	began := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	bar := newProgressBar(stderr, rep.Replayed(), rep.Replayed()+rep.Remaining())
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-rep.Finished():
			cancel()
			if err := <-runErr; err != nil {
				bar.clear()
				fmt.Fprintln(stderr, mask("relay replay: "+err.Error(), cfg.secrets()))
				return 1
			}
			bar.clear()
			fmt.Fprintln(stdout, summary(id, published.Load(), dead.Load(), time.Since(began)))
			return 0
		case err := <-runErr:
			bar.clear()
			if ctx.Err() != nil {
				fmt.Fprintf(stderr, "relay replay: interrupted: %s; resume with: relay replay --resume %s\n", summary(id, published.Load(), dead.Load(), time.Since(began)), id)
				return 1
			}
			fmt.Fprintln(stderr, mask(fmt.Sprintf("relay replay: replay %s stopped: %v; resume with: relay replay --resume %s", id, err, id), cfg.secrets()))
			return 1
		case <-tick.C:
			if re := r.Blocked(); re != nil {
				cancel()
				<-runErr
				bar.clear()
				fmt.Fprintf(stderr, "relay replay: replay %s stopped at row %s, which cannot be published: %v; fix it and resume with: relay replay --resume %s (or add --dead-letter to send such rows to RELAY_DEAD_LETTER)\n",
					id, re.Row(), re.Err, id)
				return 1
			}
			bar.show(published.Load())
		}
	}
}

func summary(id string, rows, dead int64, took time.Duration) string {
	s := fmt.Sprintf("replay %s: %d rows", id, rows)
	if dead > 0 {
		s += fmt.Sprintf(" (%d dead-lettered)", dead)
	}
	rate := 0.0
	if took > 0 {
		rate = float64(rows) / took.Seconds()
	}
	return s + fmt.Sprintf(" in %s, %.0f rows/s", took.Round(time.Millisecond), rate)
}

// progressBar draws the replay's progress on a terminal, and nothing
// elsewhere (a log file, a pipe).
type progressBar struct {
	w            io.Writer
	on           bool
	before, want int64
	began        time.Time
}

func newProgressBar(w io.Writer, before, want int64) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			on = true
		}
	}
	return &progressBar{w: w, on: on, before: before, want: want, began: time.Now()}
}

func (b *progressBar) show(published int64) {
	if !b.on || b.want <= 0 {
		return
	}
	done := min(b.before+published, b.want)
	const width = 30
	filled := int(done * width / b.want)
	rate := float64(published) / max(time.Since(b.began).Seconds(), 0.001)
	line := fmt.Sprintf("\r[%s%s] %3d%% %d/%d rows, %.0f rows/s", strings.Repeat("#", filled), strings.Repeat("-", width-filled),
		done*100/b.want, done, b.want, rate)
	if rate > 0 && done < b.want {
		line += fmt.Sprintf(", %s left", time.Duration(float64(b.want-done)/rate*float64(time.Second)).Round(time.Second))
	}
	fmt.Fprint(b.w, line+"\x1b[K")
}

func (b *progressBar) clear() {
	if b.on {
		fmt.Fprint(b.w, "\r\x1b[K")
	}
}
