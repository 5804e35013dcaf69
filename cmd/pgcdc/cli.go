package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// cliEnv is what commands read and write.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) (string, bool)
	reg            registry
}

func newCLIEnv(stdout, stderr io.Writer) *cliEnv {
	return &cliEnv{stdin: os.Stdin, stdout: stdout, stderr: stderr, getenv: os.LookupEnv, reg: sinkTypes()}
}

// load reads and checks the configuration file.
func (e *cliEnv) load(path string) (*Config, error) {
	if path == "" {
		return nil, errNoConfig
	}
	return LoadConfig(path, e.reg, e.getenv)
}

// commandFlags returns a flag set for a command with -c/--config.
func commandFlags(name, help string, out io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("pgcdc "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	path := fs.String("c", "", "configuration file (YAML)")
	fs.StringVar(path, "config", "", "same as -c")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help, "\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs, path
}

// parseFlags parses args, refusing stray arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return usageError{err}
	}
	return nil
}

// confirm asks a yes/no question on stdin.
func (e *cliEnv) confirm(question string) bool {
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	line, _ := bufio.NewReader(e.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

func cmdValidate(_ context.Context, args []string, env *cliEnv) error {
	fs, path := commandFlags("validate", "Usage: pgcdc validate -c FILE\n\nChecks the configuration file without connecting anywhere: every problem is\nreported at once with its place in the file. Exit status 0 when it is valid,\n1 otherwise.\n", env.stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s: valid (%d source(s), %d route(s), %d sink(s))\n", *path, len(cfg.Sources), len(cfg.Routes), len(cfg.Sinks))
	return nil
}

func cmdRun(ctx context.Context, args []string, env *cliEnv) error {
	fs, path := commandFlags("run", "Usage: pgcdc run -c FILE\n\nStreams the changes of the configured sources to the sinks until SIGINT or\nSIGTERM, then stops gracefully: in-flight deliveries finish and the position\nis confirmed (within shutdown_grace). Exit status 0 after a signal, 1 on a\nfatal error (bad configuration, lost slot, missing privileges).\n", env.stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	d := &daemon{cfg: cfg, reg: env.reg, logger: newLogger(cfg.Log, env.stderr), stdout: env.stdout}
	return d.run(ctx)
}

func cmdTeardown(ctx context.Context, args []string, env *cliEnv) error {
	fs, path := commandFlags("teardown", "Usage: pgcdc teardown -c FILE [--yes]\n\nRemoves what pgcdc created in every source database: the replication slot and\npublication, and the trigger engine's schema, triggers and event table. The\ndead-letter table is kept. Changes not yet delivered are lost. Asks for\nconfirmation unless --yes is given. Stop the daemon first.\n", env.stderr)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	if !*yes && !env.confirm(fmt.Sprintf("Remove the slots, publications and trigger objects of %d source(s) (%s)? Undelivered changes are lost.", len(cfg.Sources), strings.Join(cfg.sourceOrder, ", "))) {
		return errors.New("not confirmed; nothing removed")
	}
	var problems []error
	for _, name := range cfg.sourceOrder {
		w, err := newBareWorker(cfg, name, env)
		if err == nil {
			err = w.Teardown(ctx)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("source %q: %w", name, err))
			continue
		}
		fmt.Fprintf(env.stdout, "source %s: removed what pgcdc created (dead-letter table kept)\n", name)
	}
	return errors.Join(problems...)
}
