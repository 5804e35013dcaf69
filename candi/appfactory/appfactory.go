// Package appfactory is candi's codebase/factory/appfactory (v1.17.16) with
// the Postgres listener served by pgcdc's drop-in worker. Services that
// build their applications from the environment (USE_POSTGRES_LISTENER_WORKER
// and friends, as candi's generated configs do) switch by changing one
// import:
//
//	"github.com/golangid/candi/codebase/factory/appfactory"
//
// becomes
//
//	"github.com/pgcdc/pgcdc/candi/appfactory"
//
// Every other Setup function calls candi's own.
package appfactory

import (
	candiappfactory "github.com/golangid/candi/codebase/factory/appfactory"

	cronworker "github.com/golangid/candi/codebase/app/cron_worker"
	graphqlserver "github.com/golangid/candi/codebase/app/graphql_server"
	grpcserver "github.com/golangid/candi/codebase/app/grpc_server"
	kafkaworker "github.com/golangid/candi/codebase/app/kafka_worker"
	rabbitmqworker "github.com/golangid/candi/codebase/app/rabbitmq_worker"
	redisworker "github.com/golangid/candi/codebase/app/redis_worker"
	restserver "github.com/golangid/candi/codebase/app/rest_server"
	taskqueueworker "github.com/golangid/candi/codebase/app/task_queue_worker"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/config/env"

	postgresworker "github.com/pgcdc/pgcdc/candi/postgres_worker"
)

// NewAppFromEnvironmentConfig is candi's: it builds the servers and workers
// the environment turns on (USE_REST, USE_GRPC, USE_GRAPHQL,
// USE_KAFKA_CONSUMER, USE_CRON_SCHEDULER, USE_REDIS_SUBSCRIBER,
// USE_TASK_QUEUE_WORKER, USE_POSTGRES_LISTENER_WORKER,
// USE_RABBITMQ_CONSUMER), with pgcdc's Postgres listener.
func NewAppFromEnvironmentConfig(service factory.ServiceFactory) (apps []factory.AppServerFactory) {
	if env.BaseEnv().UseKafkaConsumer {
		apps = append(apps, SetupKafkaWorker(service))
	}
	if env.BaseEnv().UseCronScheduler {
		apps = append(apps, SetupCronWorker(service))
	}
	if env.BaseEnv().UseTaskQueueWorker {
		apps = append(apps, SetupTaskQueueWorker(service))
	}
	if env.BaseEnv().UseRedisSubscriber {
		apps = append(apps, SetupRedisWorker(service))
	}
	if env.BaseEnv().UsePostgresListenerWorker {
		apps = append(apps, SetupPostgresWorker(service))
	}
	if env.BaseEnv().UseRabbitMQWorker {
		apps = append(apps, SetupRabbitMQWorker(service))
	}

	if env.BaseEnv().UseREST {
		apps = append(apps, SetupRESTServer(service))
	}
	if env.BaseEnv().UseGRPC {
		apps = append(apps, SetupGRPCServer(service))
	}
	if !env.BaseEnv().UseREST && env.BaseEnv().UseGraphQL {
		apps = append(apps, SetupGraphQLServer(service))
	}

	return
}

// SetupPostgresWorker sets up pgcdc's Postgres listener with candi's default
// configuration (debug mode from DEBUG_MODE), then opts.
func SetupPostgresWorker(service factory.ServiceFactory, opts ...postgresworker.OptionFunc) factory.AppServerFactory {
	postgresOptions := []postgresworker.OptionFunc{
		postgresworker.SetDebugMode(env.BaseEnv().DebugMode),
	}
	postgresOptions = append(postgresOptions, opts...)
	return postgresworker.NewWorker(service, postgresOptions...)
}

// SetupCronWorker is candi's.
func SetupCronWorker(service factory.ServiceFactory, opts ...cronworker.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupCronWorker(service, opts...)
}

// SetupGraphQLServer is candi's.
func SetupGraphQLServer(service factory.ServiceFactory, opts ...graphqlserver.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupGraphQLServer(service, opts...)
}

// SetupGRPCServer is candi's.
func SetupGRPCServer(service factory.ServiceFactory, opts ...grpcserver.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupGRPCServer(service, opts...)
}

// SetupKafkaWorker is candi's.
func SetupKafkaWorker(service factory.ServiceFactory, opts ...kafkaworker.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupKafkaWorker(service, opts...)
}

// SetupRabbitMQWorker is candi's.
func SetupRabbitMQWorker(service factory.ServiceFactory, opts ...rabbitmqworker.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupRabbitMQWorker(service, opts...)
}

// SetupRedisWorker is candi's.
func SetupRedisWorker(service factory.ServiceFactory, opts ...redisworker.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupRedisWorker(service, opts...)
}

// SetupRESTServer is candi's.
func SetupRESTServer(service factory.ServiceFactory, opts ...restserver.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupRESTServer(service, opts...)
}

// SetupTaskQueueWorker is candi's.
func SetupTaskQueueWorker(service factory.ServiceFactory, opts ...taskqueueworker.OptionFunc) factory.AppServerFactory {
	return candiappfactory.SetupTaskQueueWorker(service, opts...)
}
