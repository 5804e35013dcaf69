// Command pgcdc streams committed PostgreSQL row changes as JSON events:
// as a service from a configuration file into sinks (JSON lines on stdout
// or in a file, webhooks), or as a demo.
//
// Usage:
//
//	pgcdc run -c FILE                 stream the configured sources into the sinks until SIGINT/SIGTERM
//	pgcdc validate -c FILE            check the configuration without connecting
//	pgcdc check -c FILE               check what run needs: server settings, privileges, tables, sinks
//	pgcdc status -c FILE [--json]     per source: engine, state, slot, confirmed LSN, lag, dead letters, backlog
//	pgcdc dead-letters list|redeliver|purge -c FILE [--source S] [--table T] [--limit N]
//	pgcdc teardown -c FILE [--yes]    remove the slots, publications and trigger objects pgcdc created
//	pgcdc demo [flags]                boot a throwaway PostgreSQL, write rows, print the live events
//	pgcdc version                     print the version
//
// Every command takes --help. The configuration file is documented in
// pgcdc.example.yaml and docs/daemon.md.
//
// The demo is the quickest way to see pgcdc work: it needs only the
// PostgreSQL server binaries of the machine (Debian: apt-get install
// postgresql), starts a private cluster in a temporary directory, writes a
// mix of INSERT, UPDATE and DELETE into a table "orders" and prints every
// change event pgcdc delivers as one JSON line on stdout. Logs go to stderr.
// It stops on Ctrl-C (or SIGTERM), after -duration, or after -n events, and
// removes the cluster on the way out (within seconds):
//
//	go run ./cmd/pgcdc demo
//	go run ./cmd/pgcdc demo -rate 10 -n 20
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
)

func main() {
	// The signals stay caught until the end: a command stops within
	// seconds of the first one, and must get to remove what it created
	// (the demo's temporary cluster) whatever the user presses meanwhile.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and returns the process exit code: 0 on
// success, 1 when the command failed, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	env := newCLIEnv(stdout, stderr)
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run", "validate", "check", "status", "dead-letters", "teardown":
		return exitCode(stderr, cmd, commands[cmd](ctx, rest, env))
	case "demo":
		return exitCode(stderr, "demo", runDemo(ctx, rest, stdout, stderr))
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			usage(stdout)
			return 0
		}
		switch rest[0] {
		case "run", "validate", "check", "status", "dead-letters", "teardown":
			helpEnv := *env
			helpEnv.stderr = stdout // asked for: the help goes to stdout
			return exitCode(stderr, rest[0], commands[rest[0]](ctx, []string{"--help"}, &helpEnv))
		case "demo":
			var cfg demoConfig
			fs := newDemoFlags(&cfg, stdout)
			fs.Usage()
			return 0
		default:
			fmt.Fprintf(stderr, "pgcdc help: unknown command %q\n\n", rest[0])
			usage(stderr)
			return 2
		}
	default:
		fmt.Fprintf(stderr, "pgcdc: unknown command %q\n\n", cmd)
		usage(stderr)
		return 2
	}
}

// commands are the subcommands that read a configuration file.
var commands = map[string]func(context.Context, []string, *cliEnv) error{
	"run":          cmdRun,
	"validate":     cmdValidate,
	"check":        cmdCheck,
	"status":       cmdStatus,
	"dead-letters": cmdDeadLetters,
	"teardown":     cmdTeardown,
}

// exitCode reports err of subcommand name on stderr and turns it into an
// exit code.
func exitCode(stderr io.Writer, name string, err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		// The flag package (or the command) already printed the problem and
		// the usage.
		return 2
	default:
		fmt.Fprintf(stderr, "pgcdc %s: %v\n", name, err)
		return 1
	}
}

// usageError is a bad command line; it has been reported with the usage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usage(w io.Writer) {
	fmt.Fprint(w, `pgcdc streams committed PostgreSQL row changes as JSON events.

Usage:
  pgcdc <command> [flags]

Commands:
  run           stream the sources of a configuration file into its sinks
                until SIGINT/SIGTERM (pgcdc run -c pgcdc.yaml)
  validate      check a configuration file without connecting
  check         check what run needs: server settings, privileges, tables,
                replica identity, sinks reachable
  status        per source: engine, state, slot, confirmed LSN, lag,
                wal_status, dead letters, trigger backlog (--json)
  dead-letters  list, redeliver or purge dead-lettered events
  teardown      remove the slots, publications and trigger objects pgcdc
                created (asks first unless --yes)
  demo          boot a throwaway PostgreSQL, write rows into a demo table and
                print the live change events (one JSON line each)
  version       print the version
  help          print this help; "pgcdc help COMMAND" (or COMMAND --help)
                describes a command

Try:
  pgcdc demo -duration 10s
  pgcdc validate -c pgcdc.example.yaml
`)
}

// versionString describes the binary from its embedded build information.
func versionString() string {
	version, rev, dirty := "(unknown)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	out := "pgcdc " + version
	if rev != "" && (version == "(devel)" || version == "(unknown)") {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		out += " " + rev
		if dirty {
			out += "+dirty"
		}
	}
	return fmt.Sprintf("%s %s %s/%s", out, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
