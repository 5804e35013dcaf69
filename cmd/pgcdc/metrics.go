package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgcdc/pgcdc"
)

// metrics turns the library's hooks into Prometheus metrics. Labels are
// bounded: source and table names come from the file (and the tables its
// patterns match), actions and outcomes are fixed sets; no event ids.
type metrics struct {
	reg       *prometheus.Registry
	events    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	dead      *prometheus.CounterVec
	states    *prometheus.CounterVec
	statusFor func(ctx context.Context) []pgcdc.SourceStatus
}

func newMetrics(status func(ctx context.Context) []pgcdc.SourceStatus) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcdc_events_total",
			Help: "Events resolved, by outcome: delivered (every sink of its routes accepted it), filtered (no route kept it), dead_lettered.",
		}, []string{"source", "table", "action", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgcdc_delivery_duration_seconds",
			Help:    "Time the delivering call took for events delivered to their sinks (the successful attempt).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"source", "table"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcdc_retries_total",
			Help: "Failed delivery attempts that are retried after a backoff.",
		}, []string{"source", "table"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcdc_dead_letters_total",
			Help: "Events stored in the dead-letter table.",
		}, []string{"source", "table"}),
		states: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcdc_source_state_changes_total",
			Help: "Changes of a source's state, by the state entered (connecting, streaming, standby, backing_off, stopped).",
		}, []string{"source", "state"}),
		statusFor: status,
	}
	m.reg.MustRegister(m.events, m.duration, m.retries, m.dead, m.states, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// tableLabel is the table as a route names it: "orders" for public.orders,
// "sales.orders" otherwise.
func tableLabel(schema, table string) string {
	if schema == "public" || schema == "" {
		return table
	}
	return schema + "." + table
}

// OnEventHandled implements pgcdc.HookEventHandled.
func (m *metrics) OnEventHandled(e pgcdc.HandledEvent) {
	t := tableLabel(e.Schema, e.Table)
	m.events.WithLabelValues(e.Source, t, e.Action, string(e.Outcome)).Inc()
	if e.Outcome == pgcdc.OutcomeDelivered {
		m.duration.WithLabelValues(e.Source, t).Observe(e.Duration.Seconds())
	}
}

// OnRetry implements pgcdc.HookRetry.
func (m *metrics) OnRetry(e pgcdc.RetryEvent) {
	m.retries.WithLabelValues(e.Source, tableLabel(e.Schema, e.Table)).Inc()
}

// OnDeadLettered implements pgcdc.HookDeadLettered.
func (m *metrics) OnDeadLettered(e pgcdc.DeadLetterEvent) {
	m.dead.WithLabelValues(e.Source, tableLabel(e.Schema, e.Table)).Inc()
}

// OnSourceState implements pgcdc.HookSourceState.
func (m *metrics) OnSourceState(e pgcdc.SourceStateEvent) {
	m.states.WithLabelValues(e.Source, string(e.State)).Inc()
}

var (
	descLagBytes = prometheus.NewDesc("pgcdc_replication_lag_bytes",
		"WAL the server holds for the source's slot beyond the position pgcdc confirmed (logical engine; sampled every second).", []string{"source"}, nil)
	descLagSeconds = prometheus.NewDesc("pgcdc_replication_lag_seconds",
		"How long ago the oldest received, unconfirmed transaction committed; 0 when everything received is confirmed (logical engine).", []string{"source"}, nil)
	descUp = prometheus.NewDesc("pgcdc_source_up",
		"1 while the source captures changes (streaming), 0 otherwise (connecting, standby, backing off, stopped).", []string{"source"}, nil)
	descStandby = prometheus.NewDesc("pgcdc_source_standby",
		"1 while the source stands by because another instance reads its slot.", []string{"source"}, nil)
	descBacklog = prometheus.NewDesc("pgcdc_trigger_backlog",
		"Events waiting in the trigger engine's event table (trigger engine only).", []string{"source"}, nil)
	descHandled = prometheus.NewDesc("pgcdc_source_events_handled",
		"Events a handler accepted since the start (delivered or filtered).", []string{"source"}, nil)
)

// Describe implements prometheus.Collector for the figures read from
// Worker.Status at scrape time.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLagBytes, descLagSeconds, descUp, descStandby, descBacklog, descHandled} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range m.statusFor(ctx) {
		up, standby := 0.0, 0.0
		switch s.State {
		case pgcdc.StateStreaming:
			up = 1
		case pgcdc.StateStandby:
			standby = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, s.Name)
		ch <- prometheus.MustNewConstMetric(descStandby, prometheus.GaugeValue, standby, s.Name)
		ch <- prometheus.MustNewConstMetric(descHandled, prometheus.CounterValue, float64(s.EventsHandled), s.Name)
		if s.Engine != "trigger" {
			if s.LagBytes >= 0 {
				ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(s.LagBytes), s.Name)
			}
			ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, s.LagSeconds, s.Name)
		}
		if s.Backlog >= 0 {
			ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(s.Backlog), s.Name)
		}
	}
}
