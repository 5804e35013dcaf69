package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestDemo runs the demo in-process until it has printed 6 events and checks
// each printed line.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := runDemo(ctx, []string{"-n", "6", "-rate", "20"}, &stdout, &stderr)
	if errors.Is(err, pgtest.ErrNoBinaries) {
		t.Skip(err)
	}
	t.Logf("stderr:\n%s", stderr.String())
	if err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	if !strings.Contains(stderr.String(), "6 events printed") {
		t.Errorf("stderr has no summary line %q", "6 events printed")
	}

	eventID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seenIDs := map[string]bool{}
	actions := map[string]int{}
	var lines int
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		line := sc.Bytes()
		var ev struct {
			EventID string `json:"event_id"`
			Table   string `json:"table"`
			Action  string `json:"action"`
			Data    *struct {
				Old json.RawMessage `json:"old"`
				New json.RawMessage `json:"new"`
			} `json:"data"`
		}
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Errorf("line %d is not JSON (%v): %s", lines, err, line)
			continue
		}
		if !eventID.MatchString(ev.EventID) {
			t.Errorf("line %d: event_id %q is not 32 hex chars", lines, ev.EventID)
		}
		if seenIDs[ev.EventID] {
			t.Errorf("line %d: event_id %s printed twice", lines, ev.EventID)
		}
		seenIDs[ev.EventID] = true
		if ev.Table != "orders" {
			t.Errorf("line %d: table = %q, want orders", lines, ev.Table)
		}
		if ev.Data == nil {
			t.Errorf("line %d: no data object: %s", lines, line)
			continue
		}
		oldRow, oldErr := rowObject(ev.Data.Old)
		newRow, newErr := rowObject(ev.Data.New)
		actions[ev.Action]++
		switch ev.Action {
		case "INSERT":
			if oldRow != nil || oldErr != nil {
				t.Errorf("line %d: INSERT: data.old = %s, want null", lines, ev.Data.Old)
			}
			checkOrder(t, lines, "new", newRow, newErr)
		case "UPDATE":
			checkOrder(t, lines, "old", oldRow, oldErr)
			checkOrder(t, lines, "new", newRow, newErr)
			if oldRow != nil && newRow != nil {
				if string(oldRow["id"]) != string(newRow["id"]) {
					t.Errorf("line %d: UPDATE changed id from %s to %s", lines, oldRow["id"], newRow["id"])
				}
				if string(oldRow["status"]) == string(newRow["status"]) {
					t.Errorf("line %d: UPDATE: status %s did not change (old row not the previous one?)", lines, newRow["status"])
				}
			}
		case "DELETE":
			if newRow != nil || newErr != nil {
				t.Errorf("line %d: DELETE: data.new = %s, want null", lines, ev.Data.New)
			}
			checkOrder(t, lines, "old", oldRow, oldErr)
		default:
			t.Errorf("line %d: action = %q, want INSERT, UPDATE or DELETE", lines, ev.Action)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if lines < 6 {
		t.Fatalf("got %d event lines, want at least 6:\n%s", lines, stdout.String())
	}
	// The writer's first six changes hold every action, and it starts only
	// once the slot is ready, so none of them may be missing.
	for _, a := range []string{"INSERT", "UPDATE", "DELETE"} {
		if actions[a] == 0 {
			t.Errorf("no %s event among the first %d (got %v)", a, lines, actions)
		}
	}
}

// rowObject decodes data.old or data.new: nil for JSON null (or absent),
// else the row's columns.
func rowObject(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var row map[string]json.RawMessage
	if err := json.Unmarshal(raw, &row); err != nil {
		return nil, err
	}
	if row == nil {
		return nil, errors.New("not an object")
	}
	return row, nil
}

// checkOrder checks that a row of the orders table is a full object.
func checkOrder(t *testing.T, line int, which string, row map[string]json.RawMessage, err error) {
	t.Helper()
	if err != nil || row == nil {
		t.Errorf("line %d: data.%s is not an object (%v)", line, which, err)
		return
	}
	for _, col := range []string{"id", "customer", "total", "status", "tags", "placed_at"} {
		if _, ok := row[col]; !ok {
			t.Errorf("line %d: data.%s has no column %q: %v", line, which, col, row)
		}
	}
	var id int64
	if err := json.Unmarshal(row["id"], &id); err != nil || id <= 0 {
		t.Errorf("line %d: data.%s.id = %s, want a positive number", line, which, row["id"])
	}
	var total float64
	if err := json.Unmarshal(row["total"], &total); err != nil {
		t.Errorf("line %d: data.%s.total = %s, want a JSON number", line, which, row["total"])
	}
	var tags []string
	if err := json.Unmarshal(row["tags"], &tags); err != nil || tags == nil {
		t.Errorf("line %d: data.%s.tags = %s, want a JSON array of strings", line, which, row["tags"])
	}
}

// TestCommandLine checks the subcommand dispatch and exit codes (no
// PostgreSQL needed).
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // substring expected on stdout
		stderr     string // substring expected on stderr
		stderrNone bool
	}{
		{args: nil, code: 2, stderr: "Usage:"},
		{args: []string{"bogus"}, code: 2, stderr: `unknown command "bogus"`},
		{args: []string{"help"}, code: 0, stdout: "demo", stderrNone: true},
		{args: []string{"-h"}, code: 0, stdout: "Usage:", stderrNone: true},
		{args: []string{"help", "demo"}, code: 0, stdout: "-rate", stderrNone: true},
		{args: []string{"help", "bogus"}, code: 2, stderr: `unknown command "bogus"`},
		{args: []string{"version"}, code: 0, stdout: "pgcdc ", stderrNone: true},
		{args: []string{"demo", "-h"}, code: 0, stderr: "-duration"},
		{args: []string{"demo", "-bogus"}, code: 2, stderr: "flag provided but not defined"},
		{args: []string{"demo", "-rate", "0"}, code: 2, stderr: "-rate 0: must be between"},
		{args: []string{"demo", "-n", "-1"}, code: 2, stderr: "-n -1: must not be negative"},
		{args: []string{"demo", "extra"}, code: 2, stderr: `unexpected argument "extra"`},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.stderr)
			}
			if tc.stderrNone && stderr.Len() > 0 {
				t.Errorf("stderr not empty: %q", stderr.String())
			}
		})
	}
}
