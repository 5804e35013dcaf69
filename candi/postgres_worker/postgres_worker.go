package postgresworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/golangid/candi/candihelper"
	"github.com/golangid/candi/candishared"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/config/env"
	"github.com/golangid/candi/logger"
	"github.com/golangid/candi/tracer"
	"github.com/pgcdc/pgcdc"
)

// postgresWorker runs a pgcdc.Worker behind candi's AppServerFactory.
type postgresWorker struct {
	service factory.ServiceFactory
	opt     option
	worker  *pgcdc.Worker
	err     error // configuration error, reported by Serve
	tables  int

	ctx        context.Context
	cancel     context.CancelFunc
	serveDone  chan struct{}
	serveOnce  sync.Once
	shutdownMu sync.Mutex
	shutDown   bool

	messagePool sync.Pool
}

// NewWorker creates the Postgres event listener of a candi service: every
// module's WorkerHandler(workerType) mounts its tables, and each committed
// change of those tables is handed to the handler as a
// *candishared.EventContext, at least once.
//
// NewWorker does no I/O and never panics. A configuration error (a route
// naming a source that was not added, an invalid option, no DSN) is
// reported by Serve, which panics with it, the way candi's application
// runner expects a worker to fail (app.Run recovers it and stops).
func NewWorker(service factory.ServiceFactory, opts ...OptionFunc) factory.AppServerFactory {
	p := &postgresWorker{
		service:   service,
		opt:       getDefaultOption(service),
		serveDone: make(chan struct{}),
		messagePool: sync.Pool{
			New: func() interface{} {
				return candishared.NewEventContext(bytes.NewBuffer(make([]byte, 0, 256)))
			},
		},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, opt := range opts {
		if opt != nil {
			opt(&p.opt)
		}
	}
	p.err = p.setup()
	if p.tables == 0 {
		log.Printf("postgres listener%s: no table event provided", getWorkerTypeLog(p.opt.workerType))
	} else {
		fmt.Printf("\x1b[34;1m⇨ Postgres Event Listener%s running with %d handlers\x1b[0m\n\n", getWorkerTypeLog(p.opt.workerType), p.tables)
	}
	return p
}

func (p *postgresWorker) setup() error {
	if len(p.opt.sources) == 0 {
		dsn := env.BaseEnv().DbSQLWriteDSN
		if dsn == "" {
			return errors.New("no database to listen to: set SQL_DB_WRITE_DSN in the environment or use postgresworker.SetPostgresDSN(dsn)")
		}
		p.opt.addSource(&PostgresSource{dsn: dsn}) // default source
	}

	var serviceName string
	if p.service != nil {
		serviceName = string(p.service.Name())
	}
	logr := p.opt.logger
	if logr == nil {
		logr = newCandiLogger(p.opt.debugMode)
	}
	popts := []pgcdc.OptionFunc{
		pgcdc.SetWorkerType(string(p.opt.workerType)),
		pgcdc.SetMaxGoroutines(p.opt.maxGoroutines),
		pgcdc.SetMinReconnectInterval(p.opt.minReconnectInterval),
		pgcdc.SetMaxReconnectInterval(p.opt.maxReconnectInterval),
		pgcdc.SetCaptureMode(p.opt.captureMode),
		pgcdc.SetLogger(logr),
	}
	if fn := p.opt.onErrorConnectionFunc; fn != nil {
		popts = append(popts, pgcdc.SetOnErrorConnectionCallback(func(err error) {
			logger.LogRed("[POSTGRES-LISTENER] ERROR when listening: " + err.Error())
			fn(err)
		}))
	}
	if l := newCandiLeader(p.opt.locker, serviceName+":pgcdc-postgres-worker-lock:", p.opt.lockInterval); l != nil {
		popts = append(popts, pgcdc.SetLocker(l))
	}
	for _, name := range p.opt.order {
		src := p.opt.sources[name]
		if name == "" {
			popts = append(popts, pgcdc.SetPostgresDSN(normDSN(src.dsn)))
		} else {
			popts = append(popts, pgcdc.AddPostgresDSN(name, normDSN(src.dsn)))
		}
	}
	popts = append(popts, p.opt.pgcdcOpts...)
	w, err := pgcdc.NewWorker(popts...)
	if err != nil {
		return err
	}
	p.worker = w

	if p.service == nil {
		return nil
	}
	var errs []error
	seen := make(map[string]bool)
	for _, m := range p.service.GetModules() {
		if m == nil {
			continue
		}
		h := m.WorkerHandler(p.opt.workerType)
		if h == nil {
			continue
		}
		var group types.WorkerHandlerGroup
		h.MountHandlers(&group)
		for _, handler := range group.Handlers {
			sourceName, tableName := ParseHandlerRoute(handler.Pattern)
			src, ok := p.opt.sources[sourceName]
			if !ok || src == nil {
				errs = append(errs, fmt.Errorf("source name '%s' unregistered (when register table '%s' in module '%s'): add it with postgresworker.AddPostgresDSN",
					sourceName, tableName, m.Name()))
				continue
			}
			route := tableName
			if sourceName != "" {
				route = pgcdc.CreateHandlerRoute(sourceName, tableName)
			}
			if seen[route] {
				errs = append(errs, fmt.Errorf("table '%s'%s is mounted twice (again in module '%s'): mount it once, with WorkerHandlerOptionAddHandlers for more handler functions",
					tableName, src.getLogForSourceName(), m.Name()))
				continue
			}
			seen[route] = true
			var hopts []pgcdc.HandlerOption
			if !handler.AutoACK {
				// Not acknowledged on the handler's behalf: retried until
				// it succeeds, never dead-lettered.
				hopts = append(hopts, pgcdc.WithMaxRetries(math.MaxInt32))
			}
			p.worker.Handle(route, p.handle(handler, src, tableName), hopts...)
			p.tables++
			logger.LogYellow(fmt.Sprintf(`[POSTGRES-LISTENER]%s (table): "%s"%s  --> (module): "%s"`,
				getWorkerTypeLog(p.opt.workerType), tableName, src.getLogForSourceName(), m.Name()))
		}
	}
	return errors.Join(errs...)
}

// Serve streams until Shutdown. A configuration error, or an error that
// reconnecting cannot fix (wal_level, privileges, a lost replication slot, a
// missing table), makes it panic with that error, as candi's workers do;
// candi's app.Run recovers it and stops the application.
func (p *postgresWorker) Serve() {
	defer p.serveOnce.Do(func() { close(p.serveDone) })
	if p.err != nil {
		panic(fmt.Errorf("[POSTGRES-LISTENER]%s: %w", getWorkerTypeLog(p.opt.workerType), p.err))
	}
	p.warnCandiTriggers()
	err := p.worker.Serve(p.ctx)
	if err == nil || p.isShutDown() {
		return
	}
	panic(fmt.Errorf("[POSTGRES-LISTENER]%s: %w", getWorkerTypeLog(p.opt.workerType), err))
}

func (p *postgresWorker) isShutDown() bool {
	p.shutdownMu.Lock()
	defer p.shutdownMu.Unlock()
	return p.shutDown
}

// Shutdown stops reading, lets the handlers in flight finish and confirms
// the position reached; unhandled events are delivered again by the next
// run. If ctx ends first, handlers are cancelled.
func (p *postgresWorker) Shutdown(ctx context.Context) {
	defer func() {
		fmt.Printf("\r%s \x1b[33;1mPostgres Event Listener%s:\x1b[0m \x1b[32;1mSUCCESS\x1b[0m%s\n",
			time.Now().Format(candihelper.TimeFormatLogger), getWorkerTypeLog(p.opt.workerType), strings.Repeat(" ", 20))
	}()
	p.shutdownMu.Lock()
	p.shutDown = true
	p.shutdownMu.Unlock()
	fmt.Printf("\r%s \x1b[33;1mPostgres Event Listener%s:\x1b[0m ... ",
		time.Now().Format(candihelper.TimeFormatLogger), getWorkerTypeLog(p.opt.workerType))
	if p.worker != nil {
		if err := p.worker.Shutdown(ctx); err != nil {
			logger.LogRed("[POSTGRES-LISTENER] shutdown: " + err.Error())
		}
	}
	p.cancel()
}

// Name returns the worker type.
func (p *postgresWorker) Name() string {
	return string(p.opt.workerType)
}

// handle adapts candi handler functions to a pgcdc handler: the same
// EventContext, tracing and logging as candi's worker.
func (p *postgresWorker) handle(handler types.WorkerHandler, source *PostgresSource, tableName string) pgcdc.HandlerFunc {
	maskedDSN := candihelper.MaskingPasswordURL(source.dsn)
	return func(ec *pgcdc.EventContext) (err error) {
		ctx := ec.Context()
		if handler.DisableTrace {
			ctx = tracer.SkipTraceContext(ctx)
		}
		header := ec.Header()
		table, action := header["table"], header["action"]

		trace, ctx := tracer.StartTraceFromHeader(ctx, "PostgresEventListener", make(map[string]string, 0))
		defer func() {
			if r := recover(); r != nil {
				trace.SetTag("panic", true)
				err = fmt.Errorf("postgres listener: handler of table '%s' panicked: %v", tableName, r)
			}
			trace.Finish(tracer.FinishWithError(err))
		}()

		if p.opt.debugMode {
			var sourceLog string
			if source.name != "" {
				sourceLog = fmt.Sprintf(" (from source name '%s')", source.name)
			}
			log.Printf("\x1b[35;3mPostgres Event Listener%s: executing event from table: '%s'%s and action: '%s'\x1b[0m",
				getWorkerTypeLog(p.opt.workerType), table, sourceLog, action)
		}

		eventContext := p.messagePool.Get().(*candishared.EventContext)
		defer p.releaseMessagePool(eventContext)
		eventContext.SetContext(ctx)
		eventContext.SetWorkerType(string(p.opt.workerType))
		eventContext.SetHandlerRoute(tableName)
		eventContext.SetKey(ec.Key())
		h := make(map[string]string, len(header))
		for k, v := range header {
			h[k] = v
		}
		eventContext.SetHeader(h)
		if err := writeCandiMessage(eventContext, ec.Message()); err != nil {
			return pgcdc.Permanent(fmt.Errorf("postgres listener: cannot reshape event %s of table '%s': %w", ec.Key(), table, err))
		}

		if source.name != "" {
			trace.SetTag("source_name", source.name)
		}
		if p.opt.workerType != types.PostgresListener {
			trace.SetTag("worker_type", string(p.opt.workerType))
		}
		trace.SetTag("table_name", table)
		trace.SetTag("action", action)
		trace.Log("dsn", maskedDSN)
		trace.Log("payload", eventContext.Message())

		var errs []error
		for _, handlerFunc := range handler.HandlerFuncs {
			if herr := handlerFunc(eventContext); herr != nil {
				eventContext.SetError(herr)
				errs = append(errs, herr)
			}
		}
		return errors.Join(errs...)
	}
}

func (p *postgresWorker) releaseMessagePool(eventContext *candishared.EventContext) {
	eventContext.Reset()
	p.messagePool.Put(eventContext)
}

// warnCandiTriggers logs, for each source, candi's notify_event() triggers
// still installed, with the SQL that drops them.
func (p *postgresWorker) warnCandiTriggers() {
	if p.opt.keepTriggers {
		return
	}
	for _, name := range p.opt.order {
		src := p.opt.sources[name]
		found, err := p.findCandiNotify(src)
		if err != nil {
			log.Printf("\x1b[33;1m[POSTGRES-LISTENER]%s warning: cannot check for candi's notify_event triggers%s: %v\x1b[0m",
				getWorkerTypeLog(p.opt.workerType), src.getLogForSourceName(), err)
			continue
		}
		if !found.Found() {
			continue
		}
		log.Printf("\x1b[33;1m[POSTGRES-LISTENER]%s warning%s: candi's notify_event() function and %d trigger(s) are still installed. "+
			"This worker does not read them, but each trigger still makes every writer of its table send a pg_notify under a global lock. "+
			"Once no instance runs candi's postgres_worker any more, drop them with postgresworker.DropCandiTriggers(ctx, dsn) or this SQL:\n%s\x1b[0m",
			getWorkerTypeLog(p.opt.workerType), src.getLogForSourceName(), len(found.Triggers), found.DropSQL())
	}
}

func (p *postgresWorker) findCandiNotify(src *PostgresSource) (CandiNotify, error) {
	db, err := openDB(src.dsn)
	if err != nil {
		return CandiNotify{}, err
	}
	defer db.Close()
	if p.opt.dbOption != nil {
		p.opt.dbOption(db)
	}
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	return findCandiNotify(ctx, db)
}

func getWorkerTypeLog(name types.Worker) (workerType string) {
	if name != types.PostgresListener {
		workerType = " [worker_type: " + string(name) + "]"
	}
	return
}
