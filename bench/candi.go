package main

// A minimal candi service around candi v1.17.16's postgres_worker, as a user
// of candi would write it: a ServiceFactory with no Redis (so candi uses its
// NoopLocker), one module whose WorkerHandler mounts one route (the table).

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/golangid/candi/candishared"
	postgresworker "github.com/golangid/candi/codebase/app/postgres_worker"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/dependency"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/codebase/interfaces"
	candiconfig "github.com/golangid/candi/config"
	"github.com/jackc/pgx/v5"
)

type candiService struct {
	deps dependency.Dependency
	mods []factory.ModuleFactory
}

func (s *candiService) GetConfig() *candiconfig.Config              { return nil }
func (s *candiService) GetDependency() dependency.Dependency        { return s.deps }
func (s *candiService) GetApplications() []factory.AppServerFactory { return nil }
func (s *candiService) GetModules() []factory.ModuleFactory         { return s.mods }
func (s *candiService) Name() types.Service                         { return "candibench" }

type candiModule struct {
	table string
	fn    types.WorkerHandlerFunc
}

func (m *candiModule) RESTHandler() interfaces.RESTHandler       { return nil }
func (m *candiModule) GRPCHandler() interfaces.GRPCHandler       { return nil }
func (m *candiModule) GraphQLHandler() interfaces.GraphQLHandler { return nil }
func (m *candiModule) WorkerHandler(wt types.Worker) interfaces.WorkerHandler {
	if wt == types.PostgresListener {
		return m
	}
	return nil
}
func (m *candiModule) Name() types.Module                                  { return "bench" }
func (m *candiModule) ServerHandler(types.Server) interfaces.ServerHandler { return nil }
func (m *candiModule) MountHandlers(g *types.WorkerHandlerGroup)           { g.Add(m.table, m.fn) }

type candiListener struct {
	dsn, table string
	maxGor     int
	debug      bool
	c          *counter

	srv    factory.AppServerFactory
	ping   chan struct{}
	doneCh chan struct{}
}

func newCandiListener(dsn, table string, maxGor int, debug bool, c *counter) *candiListener {
	return &candiListener{dsn: dsn, table: table, maxGor: maxGor, debug: debug, c: c,
		ping: make(chan struct{}, 1), doneCh: make(chan struct{})}
}

var pingMsg = []byte(`"action":"PING"`)

func (l *candiListener) start(ctx context.Context) error {
	c := l.c
	mod := &candiModule{table: l.table, fn: func(ec *candishared.EventContext) error {
		msg := ec.Message()
		if bytes.Contains(msg, pingMsg) {
			select {
			case l.ping <- struct{}{}:
			default:
			}
			return nil
		}
		c.observe(msg)
		return nil
	}}
	svc := &candiService{deps: dependency.InitDependency(), mods: []factory.ModuleFactory{mod}}
	// candi panics (log.Panicf) on setup errors; turn that into an error.
	var perr error
	func() {
		defer func() {
			if r := recover(); r != nil {
				perr = fmt.Errorf("candi NewWorker: %v", r)
			}
		}()
		l.srv = postgresworker.NewWorker(svc,
			postgresworker.SetPostgresDSN(l.dsn),
			postgresworker.SetMaxGoroutines(l.maxGor),
			postgresworker.SetDebugMode(l.debug),
		)
	}()
	if perr != nil {
		return perr
	}
	go func() {
		l.srv.Serve()
		close(l.doneCh)
	}()
	// Ready = a PING notification went all the way to the handler.
	conn, err := pgx.Connect(ctx, l.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	payload := fmt.Sprintf(`{"event_id":"ping","table":%q,"action":"PING","data":{}}`, l.table)
	for {
		if _, err := conn.Exec(ctx, `SELECT pg_notify('events', $1)`, payload); err != nil {
			return err
		}
		select {
		case <-l.ping:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("candi listener not ready: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *candiListener) slot() string          { return "" }
func (l *candiListener) done() <-chan struct{} { return l.doneCh }
func (l *candiListener) err() error            { return nil }
func (l *candiListener) stop(ctx context.Context) error {
	fin := make(chan struct{})
	go func() { l.srv.Shutdown(ctx); close(fin) }()
	select {
	case <-fin:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
