// Package proofsvc is a small candi service for the drop-in's proof: a
// service factory with one module whose WorkerHandler(types.PostgresListener)
// mounts two tables, "orders" and "customers". Each handler call is appended
// as one JSON line to a file, so a test can compare what two runs delivered,
// even across a kill -9 (a write(2) to an O_APPEND file survives the death
// of the process).
//
// The two programs under internal/proof run this service with candi's
// postgres_worker and with pgcdc's; their sources differ in one import line.
package proofsvc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/golangid/candi/candishared"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/dependency"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/codebase/interfaces"
	candiconfig "github.com/golangid/candi/config"
)

// Line is what the handlers record for each call.
type Line struct {
	Instance   string            `json:"instance"`
	Handler    string            `json:"handler"`
	Route      string            `json:"route"`
	Key        string            `json:"key"`
	WorkerType string            `json:"worker_type"`
	Header     map[string]string `json:"header"`
	Message    json.RawMessage   `json:"message"`
}

// Service is a candi service factory.
type Service struct {
	deps dependency.Dependency
	mods []factory.ModuleFactory
	apps []factory.AppServerFactory
}

// New returns the service; its handlers append to the file out, tagging each
// line with instance.
func New(out, instance string) (*Service, error) {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("proofsvc: %w", err)
	}
	h := &handler{out: f, instance: instance}
	return &Service{
		deps: dependency.InitDependency(),
		mods: []factory.ModuleFactory{&module{h: h}},
	}, nil
}

// AddApp registers an application (the worker).
func (s *Service) AddApp(a factory.AppServerFactory) { s.apps = append(s.apps, a) }

// GetConfig implements factory.ServiceFactory.
func (s *Service) GetConfig() *candiconfig.Config { return nil }

// GetDependency implements factory.ServiceFactory.
func (s *Service) GetDependency() dependency.Dependency { return s.deps }

// GetApplications implements factory.ServiceFactory.
func (s *Service) GetApplications() []factory.AppServerFactory { return s.apps }

// GetModules implements factory.ServiceFactory.
func (s *Service) GetModules() []factory.ModuleFactory { return s.mods }

// Name implements factory.ServiceFactory.
func (s *Service) Name() types.Service { return "proofsvc" }

type module struct{ h *handler }

func (m *module) RESTHandler() interfaces.RESTHandler       { return nil }
func (m *module) GRPCHandler() interfaces.GRPCHandler       { return nil }
func (m *module) GraphQLHandler() interfaces.GraphQLHandler { return nil }
func (m *module) WorkerHandler(wt types.Worker) interfaces.WorkerHandler {
	if wt == types.PostgresListener {
		return m.h
	}
	return nil
}
func (m *module) Name() types.Module                                  { return "shop" }
func (m *module) ServerHandler(types.Server) interfaces.ServerHandler { return nil }

type handler struct {
	mu       sync.Mutex
	out      *os.File
	instance string
}

// MountHandlers mounts the two tables, the way a candi module does.
func (h *handler) MountHandlers(group *types.WorkerHandlerGroup) {
	group.Add("orders", func(ec *candishared.EventContext) error { return h.record("orders", ec) })
	group.Add("customers", func(ec *candishared.EventContext) error { return h.record("customers", ec) },
		types.WorkerHandlerOptionDisableTrace())
}

func (h *handler) record(name string, ec *candishared.EventContext) error {
	msg := ec.Message()
	if !json.Valid(msg) {
		return fmt.Errorf("proofsvc: message is not JSON: %q", msg)
	}
	// The message is kept as the handler got it (no HTML escaping added).
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(Line{
		Instance: h.instance, Handler: name, Route: ec.HandlerRoute(), Key: ec.Key(),
		WorkerType: ec.WorkerType(), Header: ec.Header(), Message: msg,
	}); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.out.Write(b.Bytes()) // one write(2) per line
	return err
}
