package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// statusDoc is the JSON of /status and of pgcdc status --json.
type statusDoc struct {
	// Daemon says where the figures come from: "running" (the daemon's
	// own view, from its /status) or "not reachable" (read from the
	// databases by pgcdc status: no state, lag seconds or counters).
	Daemon  string         `json:"daemon"`
	Sources []sourceStatus `json:"sources"`
}

// sourceStatus is the library's status of a source plus what the
// database says about it.
type sourceStatus struct {
	pgcdc.SourceStatus
	// WALStatus is the slot's wal_status (reserved, extended, unreserved,
	// lost); "" when there is no slot.
	WALStatus string `json:"wal_status,omitempty"`
	// SlotActive says whether a process reads the slot now.
	SlotActive bool `json:"slot_active"`
	// DeadLettersWaiting counts this source's rows in the dead-letter
	// table (-1: cannot be read).
	DeadLettersWaiting int64 `json:"dead_letters_waiting"`
	// DBError is why the database figures are missing, if they are.
	DBError string `json:"db_error,omitempty"`
}

// dbFacts reads a source's slot and dead letters. In offline mode
// (st.State == "") it also fills the confirmed LSN, lag bytes and backlog.
func dbFacts(ctx context.Context, name string, sc *SourceConfig, st *sourceStatus) {
	st.DeadLettersWaiting = -1
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.DSN)
	if err != nil {
		st.DBError = redactDSN(err).Error()
		return
	}
	defer conn.Close(context.Background())
	slot := pgident.SlotName("pgcdc", workerTypeOf(sc), name)
	var walStatus, confirmed *string
	var lag *int64
	var active bool
	err = conn.QueryRow(ctx, `SELECT wal_status, confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, active
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&walStatus, &confirmed, &lag, &active)
	switch {
	case err == nil:
		if walStatus != nil {
			st.WALStatus = *walStatus
		}
		st.SlotActive = active
		if st.State == "" {
			st.Slot, st.Publication = slot, slot
			if confirmed != nil {
				st.ConfirmedLSN = *confirmed
			}
			if lag != nil {
				st.LagBytes = *lag
			}
		}
	case errors.Is(err, pgx.ErrNoRows):
	default:
		st.DBError = err.Error()
	}
	schema, table := deadLetterTable(ctx, conn, sc)
	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FROM `+pgident.Qualified(schema, table)+` WHERE worker_type = $1 AND source = $2`,
		workerTypeOf(sc), name).Scan(&n)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		st.DeadLettersWaiting = n
	case errors.As(err, &pgErr) && pgErr.Code == "42P01":
		st.DeadLettersWaiting = 0 // no table yet: nothing was dead-lettered
	default:
		st.DBError = err.Error()
	}
	if st.State == "" && sc.Capture != "logical" {
		trig := sc.TriggerSchema
		if trig == "" {
			trig = "pgcdc"
		}
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgident.Qualified(trig, "events")).Scan(&n); err == nil {
			st.Backlog, st.TriggerSchema = n, trig
		}
	}
}

// liveStatus is the running daemon's status document.
func (d *daemon) liveStatus(ctx context.Context) statusDoc {
	doc := statusDoc{Daemon: "running"}
	for _, s := range d.status(ctx) {
		st := sourceStatus{SourceStatus: s}
		dbFacts(ctx, s.Name, d.cfg.Sources[s.Name], &st)
		doc.Sources = append(doc.Sources, st)
	}
	return doc
}

// httpHandler serves /metrics, /healthz, /readyz and /status.
func (d *daemon) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready := true
		states := map[string]pgcdc.SourceState{}
		for _, s := range d.status(r.Context()) {
			states[s.Name] = s.State
			if s.State != pgcdc.StateStreaming && s.State != pgcdc.StateStandby {
				ready = false
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": ready, "sources": states})
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d.liveStatus(r.Context()))
	})
	return mux
}

// cmdStatus prints the status: the running daemon's (from its /status)
// when http.listen is set and it answers, else what the databases say.
func cmdStatus(ctx context.Context, args []string, env *cliEnv) error {
	fs, path := commandFlags("status", "Usage: pgcdc status -c FILE [--json]\n\nPrints per source: engine, state, slot, confirmed LSN, lag (bytes and seconds),\nwal_status, dead letters waiting and the trigger backlog. It asks the running\ndaemon (http.listen) and falls back to reading the databases.\n", env.stderr)
	asJSON := fs.Bool("json", false, "print JSON (the document of the daemon's /status)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	doc, err := fetchStatus(ctx, cfg)
	if err != nil {
		doc = statusDoc{Daemon: "not reachable"}
		for _, name := range cfg.sourceOrder {
			sc := cfg.Sources[name]
			st := sourceStatus{SourceStatus: pgcdc.SourceStatus{Name: name, Engine: sc.Capture, LagBytes: -1, LagSeconds: -1, Backlog: -1}}
			dbFacts(ctx, name, sc, &st)
			doc.Sources = append(doc.Sources, st)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	}
	fmt.Fprintf(env.stdout, "daemon: %s\n", doc.Daemon)
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tENGINE\tSTATE\tSLOT\tCONFIRMED\tLAG BYTES\tLAG S\tWAL\tDEAD LETTERS\tBACKLOG\tERROR")
	for _, s := range doc.Sources {
		state := string(s.State)
		if state == "" {
			state = "-"
			if s.SlotActive {
				state = "slot in use"
			}
		}
		errText := s.LastError
		if s.DBError != "" {
			errText = s.DBError
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Engine, state, dash(s.Slot), dash(s.ConfirmedLSN),
			num(s.LagBytes), secs(s.LagSeconds), dash(s.WALStatus), num(s.DeadLettersWaiting), num(s.Backlog), dash(errText))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func num(n int64) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func secs(f float64) string {
	if f < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", f)
}

// fetchStatus asks the running daemon.
func fetchStatus(ctx context.Context, cfg *Config) (statusDoc, error) {
	var doc statusDoc
	if cfg.HTTP.Listen == "" {
		return doc, errors.New("no http.listen")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cfg.HTTP.Listen+"/status", nil)
	if err != nil {
		return doc, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return doc, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return doc, fmt.Errorf("status %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	return doc, err
}
