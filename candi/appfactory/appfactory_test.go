package appfactory

import (
	"reflect"
	"testing"

	candipw "github.com/golangid/candi/codebase/app/postgres_worker"
	"github.com/golangid/candi/codebase/factory"
	candiappfactory "github.com/golangid/candi/codebase/factory/appfactory"
	"github.com/golangid/candi/codebase/factory/dependency"
	"github.com/golangid/candi/codebase/factory/types"
	candiconfig "github.com/golangid/candi/config"
	"github.com/golangid/candi/config/env"

	postgresworker "github.com/pgcdc/pgcdc/candi/postgres_worker"
)

// Same signatures as candi's appfactory (the Postgres one with this
// module's OptionFunc).
var (
	_ = [...]any{
		candiappfactory.NewAppFromEnvironmentConfig, candiappfactory.SetupCronWorker, candiappfactory.SetupGraphQLServer,
		candiappfactory.SetupGRPCServer, candiappfactory.SetupKafkaWorker, candiappfactory.SetupRabbitMQWorker,
		candiappfactory.SetupRedisWorker, candiappfactory.SetupRESTServer, candiappfactory.SetupTaskQueueWorker,
	}
	_ func(factory.ServiceFactory, ...candipw.OptionFunc) factory.AppServerFactory        = candiappfactory.SetupPostgresWorker
	_ func(factory.ServiceFactory, ...postgresworker.OptionFunc) factory.AppServerFactory = SetupPostgresWorker
)

func TestSameSignaturesAsCandi(t *testing.T) {
	pairs := [][2]any{
		{NewAppFromEnvironmentConfig, candiappfactory.NewAppFromEnvironmentConfig},
		{SetupCronWorker, candiappfactory.SetupCronWorker},
		{SetupGraphQLServer, candiappfactory.SetupGraphQLServer},
		{SetupGRPCServer, candiappfactory.SetupGRPCServer},
		{SetupKafkaWorker, candiappfactory.SetupKafkaWorker},
		{SetupRabbitMQWorker, candiappfactory.SetupRabbitMQWorker},
		{SetupRedisWorker, candiappfactory.SetupRedisWorker},
		{SetupRESTServer, candiappfactory.SetupRESTServer},
		{SetupTaskQueueWorker, candiappfactory.SetupTaskQueueWorker},
	}
	for _, p := range pairs {
		if a, b := reflect.TypeOf(p[0]), reflect.TypeOf(p[1]); a != b {
			t.Errorf("%s, candi %s", a, b)
		}
	}
}

type svc struct{}

func (svc) GetConfig() *candiconfig.Config              { return nil }
func (svc) GetDependency() dependency.Dependency        { return dependency.InitDependency() }
func (svc) GetApplications() []factory.AppServerFactory { return nil }
func (svc) GetModules() []factory.ModuleFactory         { return nil }
func (svc) Name() types.Service                         { return "svc" }

// USE_POSTGRES_LISTENER_WORKER still decides, and gives pgcdc's worker.
func TestEnvWiring(t *testing.T) {
	old := env.BaseEnv()
	defer env.SetEnv(old)

	env.SetEnv(env.Env{})
	if apps := NewAppFromEnvironmentConfig(svc{}); len(apps) != 0 {
		t.Fatalf("apps without USE_*: %v", apps)
	}
	env.SetEnv(env.Env{UsePostgresListenerWorker: true, DbSQLWriteDSN: "postgres://u:p@127.0.0.1:1/db"})
	apps := NewAppFromEnvironmentConfig(svc{})
	if len(apps) != 1 || apps[0].Name() != string(types.PostgresListener) {
		t.Fatalf("apps: %v", apps)
	}
	if got, want := reflect.TypeOf(apps[0]).String(), reflect.TypeOf(postgresworker.NewWorker(svc{})).String(); got != want {
		t.Errorf("worker type %s, want pgcdc's %s", got, want)
	}
}
