package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"time"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/amqpsink"
	"github.com/pgcdc/pgcdc/sink/file"
	"github.com/pgcdc/pgcdc/sink/kafkasink"
	"github.com/pgcdc/pgcdc/sink/natssink"
	"github.com/pgcdc/pgcdc/sink/redissink"
	"github.com/pgcdc/pgcdc/sink/webhook"
)

// sinkEnv is what a sink constructor may use besides its settings.
type sinkEnv struct {
	Name   string       // the sink's name in the file
	Stdout io.Writer    // the process's standard output
	Logger *slog.Logger // the daemon's logger
}

// sinkType is one entry of the registry: the type's configuration struct
// (decoded strictly from the sink's keys other than "type", with yaml tags;
// a Validate() error method, if any, is called by validate) and its
// constructor.
type sinkType struct {
	config reflect.Type
	open   func(ctx context.Context, settings any, env sinkEnv) (sink.Sink, error)
	// check, if set, tests that the destination is reachable (pgcdc check);
	// nil means opening and closing the sink is the check.
	check func(ctx context.Context, settings any) error
}

// registry maps a sink type name ("file") to its entry.
type registry map[string]sinkType

func (r registry) names() []string {
	out := make([]string, 0, len(r))
	for k := range r {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// typed makes a registry entry of a constructor taking the type's Config
// struct: broker sinks plug in with one line each, e.g.
//
//	"nats": typed(func(ctx context.Context, c nats.Config, _ sinkEnv) (*nats.Sink, error) { return nats.New(ctx, c) }),
func typed[C any, S sink.Sink](open func(ctx context.Context, cfg C, env sinkEnv) (S, error)) sinkType {
	return sinkType{
		config: reflect.TypeFor[C](),
		open: func(ctx context.Context, settings any, env sinkEnv) (sink.Sink, error) {
			s, err := open(ctx, *settings.(*C), env)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
	}
}

// stdoutConfig has no settings.
type stdoutConfig struct{}

// sinkTypes is the registry of the sink types this build knows.
func sinkTypes() registry {
	wh := typed(func(_ context.Context, c webhook.Config, _ sinkEnv) (*webhook.Sink, error) { return webhook.New(c) })
	wh.check = func(ctx context.Context, settings any) error {
		u, err := url.Parse(settings.(*webhook.Config).URL)
		if err != nil {
			return err
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := (&net.Dialer{}).DialContext(dctx, "tcp", net.JoinHostPort(u.Hostname(), port))
		if err != nil {
			return fmt.Errorf("cannot reach %s: %w", u.Host, err)
		}
		return c.Close()
	}
	f := typed(func(_ context.Context, c file.Config, _ sinkEnv) (*file.Sink, error) { return file.New(c) })
	f.check = func(_ context.Context, settings any) error {
		dir := filepath.Dir(settings.(*file.Config).Path)
		tmp, err := os.CreateTemp(dir, ".pgcdc-check-*")
		if err != nil {
			return fmt.Errorf("cannot create files in %s: %w", dir, err)
		}
		tmp.Close()
		return os.Remove(tmp.Name())
	}
	return registry{
		"stdout": typed(func(_ context.Context, _ stdoutConfig, env sinkEnv) (*file.Sink, error) {
			return file.NewWriter(env.Stdout), nil
		}),
		"file":    f,
		"webhook": wh,
		"nats": typed(func(ctx context.Context, c natssink.Config, _ sinkEnv) (*natssink.Sink, error) {
			return natssink.New(ctx, c)
		}),
		"kafka": typed(func(ctx context.Context, c kafkasink.Config, _ sinkEnv) (*kafkasink.Sink, error) {
			return kafkasink.New(ctx, c)
		}),
		"redis": typed(func(ctx context.Context, c redissink.Config, _ sinkEnv) (*redissink.Sink, error) {
			return redissink.New(ctx, c)
		}),
		"rabbitmq": typed(func(ctx context.Context, c amqpsink.Config, _ sinkEnv) (*amqpsink.Sink, error) {
			return amqpsink.New(ctx, c)
		}),
	}
}
