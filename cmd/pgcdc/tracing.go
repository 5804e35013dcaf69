package main

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgcdc/pgcdc/sink"
)

// TracingConfig turns on OpenTelemetry tracing: one span per delivery,
// exported with OTLP over HTTP to the endpoint of the standard
// OTEL_EXPORTER_OTLP_* environment variables.
type TracingConfig struct {
	Enabled bool `yaml:"enabled"`
}

// startTracing returns a tracer (nil when tracing is off) and the function
// that flushes and stops the exporter.
func startTracing(ctx context.Context, c TracingConfig) (trace.Tracer, func(context.Context) error, error) {
	if !c.Enabled {
		return nil, func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName("pgcdc")))
	if err != nil {
		res = resource.Default()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp.Tracer("github.com/pgcdc/pgcdc/cmd/pgcdc"), tp.Shutdown, nil
}

// traced wraps one delivery in a span named "pgcdc.deliver".
func traced(tr trace.Tracer, ctx context.Context, msg sink.Message, deliver func(context.Context) (bool, error)) (bool, error) {
	if tr == nil {
		return deliver(ctx)
	}
	ctx, span := tr.Start(ctx, "pgcdc.deliver", trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("pgcdc.source", msg.Source),
		attribute.String("pgcdc.schema", msg.Schema),
		attribute.String("pgcdc.table", msg.Table),
		attribute.String("pgcdc.action", msg.Action),
		attribute.String("pgcdc.event_id", msg.EventID),
	))
	defer span.End()
	kept, err := deliver(ctx)
	switch {
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	case !kept:
		span.SetAttributes(attribute.String("pgcdc.outcome", "filtered"))
	default:
		span.SetAttributes(attribute.String("pgcdc.outcome", "delivered"))
	}
	return kept, err
}
