package postgresworker

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/golangid/candi/candishared"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/dependency"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/codebase/interfaces"
	candiconfig "github.com/golangid/candi/config"
	"github.com/golangid/candi/tracer"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestMain(m *testing.M) {
	tracer.SetTracerPlatformType(spans) // once per process, like candi's
	pgtest.Main(m)
}

// testService is a candi service with the modules given.
type testService struct{ mods []factory.ModuleFactory }

func (s *testService) GetConfig() *candiconfig.Config              { return nil }
func (s *testService) GetDependency() dependency.Dependency        { return dependency.InitDependency() }
func (s *testService) GetApplications() []factory.AppServerFactory { return nil }
func (s *testService) GetModules() []factory.ModuleFactory         { return s.mods }
func (s *testService) Name() types.Service                         { return "testsvc" }

// testModule mounts routes for one worker type.
type testModule struct {
	wt    types.Worker
	mount func(*types.WorkerHandlerGroup)
}

func (m *testModule) RESTHandler() interfaces.RESTHandler       { return nil }
func (m *testModule) GRPCHandler() interfaces.GRPCHandler       { return nil }
func (m *testModule) GraphQLHandler() interfaces.GraphQLHandler { return nil }
func (m *testModule) WorkerHandler(wt types.Worker) interfaces.WorkerHandler {
	if wt == m.wt {
		return m
	}
	return nil
}
func (m *testModule) Name() types.Module                                  { return "testmod" }
func (m *testModule) ServerHandler(types.Server) interfaces.ServerHandler { return nil }
func (m *testModule) MountHandlers(g *types.WorkerHandlerGroup)           { m.mount(g) }

// seen is one handler call, copied out of the EventContext.
type seen struct {
	Route, Key, WorkerType string
	Header                 map[string]string
	Message                []byte
	Payload                EventPayload
	HasCtx                 bool
}

type recorder struct {
	mu  sync.Mutex
	got []seen
	ch  chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 1)} }

func (r *recorder) handler(ec *candishared.EventContext) error {
	s := seen{Route: ec.HandlerRoute(), Key: ec.Key(), WorkerType: ec.WorkerType(), HasCtx: ec.Context() != nil,
		Message: append([]byte(nil), ec.Message()...), Header: map[string]string{}}
	for k, v := range ec.Header() {
		s.Header[k] = v
	}
	if err := json.Unmarshal(s.Message, &s.Payload); err != nil {
		return err
	}
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) snapshot() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.got...)
}

// waitN waits until at least n calls were recorded.
func (r *recorder) waitN(t *testing.T, n int, timeout time.Duration) []seen {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if got := r.snapshot(); len(got) >= n {
			return got
		}
		select {
		case <-r.ch:
		case <-deadline.C:
			t.Fatalf("waited %s for %d events, got %d: %+v", timeout, n, len(r.snapshot()), r.snapshot())
		}
	}
}

// serve runs the worker until the test ends.
func serve(t *testing.T, w factory.AppServerFactory) {
	t.Helper()
	done := make(chan any)
	go func() {
		defer func() { done <- recover() }()
		w.Serve()
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w.Shutdown(ctx)
		if p := <-done; p != nil {
			t.Errorf("Serve panicked: %v", p)
		}
	})
}

// spanRecorder is a candi tracer platform that records finished spans.
type spanRecorder struct {
	mu    sync.Mutex
	spans []*span
}

var spans = &spanRecorder{}

type span struct {
	rec  *spanRecorder
	ctx  context.Context
	Name string
	Tags map[string]any
	Logs map[string]any
	Err  error
}

func (r *spanRecorder) StartSpan(ctx context.Context, name string) tracer.Tracer {
	return &span{rec: r, ctx: ctx, Name: name, Tags: map[string]any{}, Logs: map[string]any{}}
}
func (r *spanRecorder) StartRootSpan(ctx context.Context, name string, _ map[string]string) tracer.Tracer {
	return r.StartSpan(ctx, name)
}
func (r *spanRecorder) GetTraceID(context.Context) string  { return "" }
func (r *spanRecorder) GetTraceURL(context.Context) string { return "" }
func (r *spanRecorder) Disconnect(context.Context) error   { return nil }

func (r *spanRecorder) finished() []*span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*span(nil), r.spans...)
}

func (s *span) Context() context.Context              { return s.ctx }
func (s *span) NewContext() context.Context           { return s.ctx }
func (s *span) SetTag(key string, value any)          { s.Tags[key] = value }
func (s *span) InjectRequestHeader(map[string]string) {}
func (s *span) SetError(err error)                    { s.Err = err }
func (s *span) Log(key string, value any)             { s.Logs[key] = value }
func (s *span) Finish(opts ...tracer.FinishOptionFunc) {
	var o tracer.FinishOption
	for _, opt := range opts {
		opt(&o)
	}
	if o.Err != nil {
		s.Err = o.Err
	}
	s.rec.mu.Lock()
	s.rec.spans = append(s.rec.spans, s)
	s.rec.mu.Unlock()
}
