package postgresworker

import (
	"database/sql"
	"reflect"
	"testing"
	"time"

	candipw "github.com/golangid/candi/codebase/app/postgres_worker"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/codebase/interfaces"
)

// api is candi's postgres_worker surface with its own OptionFunc type as
// the parameter O: filling it with candi's functions and with ours proves at
// compile time that every exported function has candi's signature.
type api[O any] struct {
	NewWorker                    func(factory.ServiceFactory, ...O) factory.AppServerFactory
	SetWorkerType                func(types.Worker) O
	SetPostgresDSN               func(string) O
	AddPostgresDSN               func(string, string) O
	SetMaxGoroutines             func(int) O
	SetDebugMode                 func(bool) O
	SetLocker                    func(interfaces.Locker) O
	SetMinReconnectInterval      func(time.Duration) O
	SetMaxReconnectInterval      func(time.Duration) O
	SetOnErrorConnectionCallback func(func(error)) O
	SetDBOption                  func(func(*sql.DB)) O
	CreateHandlerRoute           func(string, string) string
	ParseHandlerRoute            func(string) (string, string)
}

var (
	_ = api[candipw.OptionFunc]{
		candipw.NewWorker, candipw.SetWorkerType, candipw.SetPostgresDSN, candipw.AddPostgresDSN,
		candipw.SetMaxGoroutines, candipw.SetDebugMode, candipw.SetLocker, candipw.SetMinReconnectInterval,
		candipw.SetMaxReconnectInterval, candipw.SetOnErrorConnectionCallback, candipw.SetDBOption,
		candipw.CreateHandlerRoute, candipw.ParseHandlerRoute,
	}
	_ = api[OptionFunc]{
		NewWorker, SetWorkerType, SetPostgresDSN, AddPostgresDSN,
		SetMaxGoroutines, SetDebugMode, SetLocker, SetMinReconnectInterval,
		SetMaxReconnectInterval, SetOnErrorConnectionCallback, SetDBOption,
		CreateHandlerRoute, ParseHandlerRoute,
	}

	// Struct conversions compile only when field names and types match.
	// (EventPayload holds an EventPayloadData, a different named type in
	// each package: TestStructTagsMatchCandi compares it field by field.)
	_                         = EventPayloadData(candipw.EventPayloadData{})
	_                         = PostgresHandlerRouteKey(candipw.PostgresHandlerRouteKey{})
	_ *PostgresSource         = (*PostgresSource)(nil)
	_ *candipw.PostgresSource = (*candipw.PostgresSource)(nil)

	// Methods.
	_ func(EventPayload) string                    = EventPayload.GetID
	_ func(candipw.EventPayload) string            = candipw.EventPayload.GetID
	_ func(PostgresHandlerRouteKey) string         = PostgresHandlerRouteKey.String
	_ func(candipw.PostgresHandlerRouteKey) string = candipw.PostgresHandlerRouteKey.String

	// OptionFunc is a function of one pointer argument in both.
	_ = func(OptionFunc) {}
)

// Constants: same names, same values (untyped string constants).
var _ = [...]string{ActionInsert, ActionUpdate, ActionDelete}

func TestConstantsMatchCandi(t *testing.T) {
	pairs := [][2]string{
		{ActionInsert, candipw.ActionInsert},
		{ActionUpdate, candipw.ActionUpdate},
		{ActionDelete, candipw.ActionDelete},
	}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("constant %q, candi has %q", p[0], p[1])
		}
	}
}

// Struct tags (the JSON names) cannot be checked by conversion.
func TestStructTagsMatchCandi(t *testing.T) {
	for _, c := range []struct{ ours, candi any }{
		{EventPayload{}, candipw.EventPayload{}},
		{EventPayloadData{}, candipw.EventPayloadData{}},
		{PostgresHandlerRouteKey{}, candipw.PostgresHandlerRouteKey{}},
	} {
		o, k := reflect.TypeOf(c.ours), reflect.TypeOf(c.candi)
		if o.NumField() != k.NumField() {
			t.Fatalf("%s: %d fields, candi %d", o.Name(), o.NumField(), k.NumField())
		}
		for i := 0; i < o.NumField(); i++ {
			of, kf := o.Field(i), k.Field(i)
			sameType := of.Type == kf.Type || (of.Type.Name() == kf.Type.Name() && of.Type.Kind() == kf.Type.Kind())
			if of.Name != kf.Name || !sameType {
				t.Errorf("%s field %d: %s %s, candi %s %s", o.Name(), i, of.Name, of.Type, kf.Name, kf.Type)
			}
			if o.Field(i).Tag != k.Field(i).Tag {
				t.Errorf("%s.%s: tag %q, candi %q", o.Name(), o.Field(i).Name, o.Field(i).Tag, k.Field(i).Tag)
			}
		}
	}
	if reflect.TypeOf(OptionFunc(nil)).Kind() != reflect.TypeOf(candipw.OptionFunc(nil)).Kind() {
		t.Error("OptionFunc is not a func type like candi's")
	}
}

func TestHandlerRouteLikeCandi(t *testing.T) {
	for _, c := range [][2]string{{"", "orders"}, {"billing", "invoices"}, {"a\"b", "we\"ird"}, {"", "public.orders"}} {
		if got, want := CreateHandlerRoute(c[0], c[1]), candipw.CreateHandlerRoute(c[0], c[1]); got != want {
			t.Errorf("CreateHandlerRoute(%q,%q) = %q, candi %q", c[0], c[1], got, want)
		}
		if got, want := (PostgresHandlerRouteKey{c[0], c[1]}).String(), (candipw.PostgresHandlerRouteKey{SourceName: c[0], TableName: c[1]}).String(); got != want {
			t.Errorf("String = %q, candi %q", got, want)
		}
	}
	for _, r := range []string{"orders", "public.orders", CreateHandlerRoute("billing", "invoices"), `{"tableName":"x"}`, `{bad`, ""} {
		s1, t1 := ParseHandlerRoute(r)
		s2, t2 := candipw.ParseHandlerRoute(r)
		if s1 != s2 || t1 != t2 {
			t.Errorf("ParseHandlerRoute(%q) = %q,%q; candi %q,%q", r, s1, t1, s2, t2)
		}
	}
}

func TestGetIDLikeCandi(t *testing.T) {
	for _, d := range []EventPayloadData{{}, {IsTooLongPayload: true, NewID: "2", OldID: "1"}, {IsTooLongPayload: true, OldID: "1"}, {NewID: "3"}} {
		ours := EventPayload{Data: d}
		theirs := candipw.EventPayload{Data: candipw.EventPayloadData(d)}
		if ours.GetID() != theirs.GetID() {
			t.Errorf("GetID(%+v) = %q, candi %q", d, ours.GetID(), theirs.GetID())
		}
	}
}
