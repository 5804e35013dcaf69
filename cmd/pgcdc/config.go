package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"
)

// Config is the daemon's configuration file (pgcdc.example.yaml documents
// every key; docs/daemon.md too).
type Config struct {
	Sources map[string]*SourceConfig `yaml:"sources"`
	Routes  []*RouteConfig           `yaml:"routes"`
	Sinks   map[string]*SinkConfig   `yaml:"sinks"`
	HTTP    HTTPConfig               `yaml:"http"`
	Log     LogConfig                `yaml:"log"`
	Tracing TracingConfig            `yaml:"tracing"`
	// ShutdownGrace bounds a graceful stop: in-flight deliveries finish and
	// the position is confirmed within it, else they are cancelled (and
	// delivered again at the next start).
	ShutdownGrace Duration `yaml:"shutdown_grace"`

	// sourceOrder lists the sources in file order.
	sourceOrder []string
	// sinkOrder lists the sinks in file order.
	sinkOrder []string
}

// SourceConfig is one database to capture.
type SourceConfig struct {
	DSN           string           `yaml:"dsn"`
	Capture       string           `yaml:"capture"`        // logical (default) | trigger | auto
	WorkerType    string           `yaml:"worker_type"`    // part of the slot and publication names
	MaxGoroutines int              `yaml:"max_goroutines"` // concurrent deliveries per table (per-row order is kept)
	TriggerSchema string           `yaml:"trigger_schema"` // schema of the trigger engine (default pgcdc)
	Retries       RetryConfig      `yaml:"retries"`
	DeadLetters   DeadLetterConfig `yaml:"dead_letters"`
	Reconnect     BackoffConfig    `yaml:"reconnect"`
}

// RetryConfig says how a failed delivery is retried before it is
// dead-lettered.
type RetryConfig struct {
	Max        *int     `yaml:"max"`         // retries after the first attempt (default 5)
	MinBackoff Duration `yaml:"min_backoff"` // default 100ms
	MaxBackoff Duration `yaml:"max_backoff"` // default 10s
}

// DeadLetterConfig places the dead-letter table.
type DeadLetterConfig struct {
	Enabled *bool  `yaml:"enabled"` // default true; false retries for ever
	Table   string `yaml:"table"`   // default: dead_letters in pgcdc's schema (see pgcdc.SetDeadLetterTable)
}

// BackoffConfig bounds the wait between reconnection attempts.
type BackoffConfig struct {
	Min Duration `yaml:"min"` // default 1s
	Max Duration `yaml:"max"` // default 30s
}

// RouteConfig sends the changes of some tables to some sinks.
type RouteConfig struct {
	Source string   `yaml:"source"` // optional when there is one source
	Tables []string `yaml:"tables"` // "orders", "sales.orders", "sales.*"
	Sinks  []string `yaml:"sinks"`
	// Actions, if given, keeps only these actions (INSERT, UPDATE, DELETE,
	// TRUNCATE; TRUNCATE is delivered only when listed).
	Actions []string `yaml:"actions"`
	// ChangedColumns, if given, keeps an UPDATE only when one of these
	// columns changed (INSERT and DELETE pass).
	ChangedColumns []string `yaml:"changed_columns"`
	// Where, if given, keeps a change only when every listed column of its
	// row (new row; old row for DELETE) equals the given value.
	Where map[string]any `yaml:"where"`
}

// SinkConfig is one destination: its type and the type's settings.
type SinkConfig struct {
	Type     string
	Settings any // the type's decoded configuration
	// BatchSize > 1 groups concurrent deliveries into batches of up to this
	// many events (a webhook then POSTs a JSON array); BatchLinger is how
	// long the first event of a batch waits for others (default 5ms).
	BatchSize   int
	BatchLinger Duration
}

// HTTPConfig is the observability endpoint.
type HTTPConfig struct {
	Listen string `yaml:"listen"` // host:port of /metrics, /healthz, /readyz, /status; empty: none
}

// LogConfig selects the log format and level.
type LogConfig struct {
	Format string `yaml:"format"` // text (default) | json
	Level  string `yaml:"level"`  // debug | info (default) | warn | error
}

// Duration is a time.Duration written as "1s", "250ms", "2m".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. 500ms, 10s, 2m)", s)
	}
	*d = Duration(v)
	return nil
}

// problem is one thing wrong in the file, at a path ("sources.main.dsn").
type problem struct {
	path string
	line int
	msg  string
}

func (p problem) String() string {
	if p.line > 0 {
		return fmt.Sprintf("%s (line %d): %s", p.path, p.line, p.msg)
	}
	return fmt.Sprintf("%s: %s", p.path, p.msg)
}

// ConfigError holds every problem found in a configuration file.
type ConfigError struct {
	File     string
	Problems []problem
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s):", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// LoadConfig reads, expands and checks a configuration file without
// connecting anywhere. getenv looks up ${VAR} references.
func LoadConfig(path string, reg registry, getenv func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the configuration: %w", err)
	}
	return ParseConfig(path, data, reg, getenv)
}

// ParseConfig is LoadConfig of data read from file.
func ParseConfig(file string, data []byte, reg registry, getenv func(string) (string, bool)) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ConfigError{File: file, Problems: []problem{{path: "(file)", msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}}
	}
	d := &decoder{reg: reg, getenv: getenv}
	cfg := &Config{}
	if len(root.Content) == 0 {
		d.bad("(file)", 0, "the file is empty: it needs at least sources, routes and sinks")
	} else {
		d.expand(root.Content[0], "")
		d.decode(root.Content[0], reflect.ValueOf(cfg).Elem(), "")
		cfg.sourceOrder = mapKeys(root.Content[0], "sources")
		cfg.sinkOrder = mapKeys(root.Content[0], "sinks")
		cfg.check(d)
	}
	if len(d.problems) > 0 {
		return nil, &ConfigError{File: file, Problems: d.problems}
	}
	return cfg, nil
}

// mapKeys lists the keys of the mapping at key of a top-level mapping, in
// file order.
func mapKeys(top *yaml.Node, key string) []string {
	if top.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == key && top.Content[i+1].Kind == yaml.MappingNode {
			var out []string
			m := top.Content[i+1]
			for j := 0; j+1 < len(m.Content); j += 2 {
				out = append(out, m.Content[j].Value)
			}
			return out
		}
	}
	return nil
}

// decoder turns YAML nodes into the config structs, strictly (unknown keys
// are errors), collecting every problem with its path.
type decoder struct {
	reg      registry
	getenv   func(string) (string, bool)
	problems []problem
}

// has reports whether a problem was already found at path.
func (d *decoder) has(path string) bool {
	for _, p := range d.problems {
		if p.path == path {
			return true
		}
	}
	return false
}

func (d *decoder) bad(path string, line int, format string, args ...any) {
	if path == "" {
		path = "(file)"
	}
	d.problems = append(d.problems, problem{path: path, line: line, msg: fmt.Sprintf(format, args...)})
}

var settingKey = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

var envRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expand replaces ${VAR} and ${VAR:-default} in every scalar value ($$ is
// a literal $). Values come from the environment after YAML parsing, so a
// secret holding YAML syntax cannot change the file's structure.
func (d *decoder) expand(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			d.expand(c, p)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			d.expand(n.Content[i+1], join(path, n.Content[i].Value))
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		changed := false
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			changed = true
			if ref == "$$" {
				return "$"
			}
			m := envRef.FindStringSubmatch(ref)
			if v, ok := d.getenv(m[1]); ok && (v != "" || m[2] == "") {
				return v
			}
			if m[2] != "" {
				return m[3]
			}
			d.bad(path, n.Line, "environment variable %s is not set (set it, or write ${%s:-default})", m[1], m[1])
			return ""
		})
		if changed && n.Style == 0 {
			n.Tag = "" // a plain scalar: resolve its type from the expanded value
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	sinkConfigType  = reflect.TypeFor[SinkConfig]()
	durationType    = reflect.TypeFor[time.Duration]()
)

// decode sets v from n, reporting problems at path.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // left at its zero value (defaults apply)
	}
	if v.Type() == sinkConfigType {
		d.decodeSink(n, v.Addr().Interface().(*SinkConfig), path)
		return
	}
	if v.Kind() != reflect.Pointer && reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.bad(path, n.Line, "%s", yamlMessage(err))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.bad(path, n.Line, "want a mapping (key: value lines), got %s", kindName(n))
			return
		}
		fields := yamlFields(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			idx, ok := fields[key]
			if !ok {
				d.bad(join(path, key), n.Content[i].Line, "unknown key (known keys here: %s)", strings.Join(sortedKeys(fields), ", "))
				continue
			}
			d.decode(val, v.FieldByIndex(idx), join(path, key))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.bad(path, n.Line, "want a mapping (name: ...), got %s", kindName(n))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			elem := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, elem, join(path, key))
			v.SetMapIndex(reflect.ValueOf(key), elem)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode { // a single value stands for a list of one
				elem := reflect.New(v.Type().Elem()).Elem()
				d.decode(n, elem, path)
				v.Set(reflect.Append(v, elem))
				return
			}
			d.bad(path, n.Line, "want a list, got %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			elem := reflect.New(v.Type().Elem()).Elem()
			d.decode(c, elem, fmt.Sprintf("%s[%d]", path, i))
			v.Set(reflect.Append(v, elem))
		}
	default:
		if err := n.Decode(v.Addr().Interface()); err != nil {
			if v.Type() == durationType {
				d.bad(path, n.Line, "%q is not a duration (write e.g. 500ms, 10s, 2m)", n.Value)
				return
			}
			d.bad(path, n.Line, "%s", yamlMessage(err))
		}
	}
}

// decodeSink reads a sink's type and decodes its settings with the type's
// configuration struct.
func (d *decoder) decodeSink(n *yaml.Node, sc *SinkConfig, path string) {
	if n.Kind != yaml.MappingNode {
		d.bad(path, n.Line, "want a mapping with a type (e.g. {type: stdout}), got %s", kindName(n))
		return
	}
	rest := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column}
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch key, val := n.Content[i].Value, n.Content[i+1]; key {
		case "type":
			sc.Type = val.Value
		case "batch_size":
			d.decode(val, reflect.ValueOf(&sc.BatchSize).Elem(), join(path, key))
			if sc.BatchSize < 0 {
				d.bad(join(path, key), val.Line, "must not be negative")
			}
		case "batch_linger":
			d.decode(val, reflect.ValueOf(&sc.BatchLinger).Elem(), join(path, key))
		default:
			rest.Content = append(rest.Content, n.Content[i], val)
		}
	}
	if sc.Type == "" {
		d.bad(join(path, "type"), n.Line, "missing: give the sink's type (%s)", strings.Join(d.reg.names(), ", "))
		return
	}
	t, ok := d.reg[sc.Type]
	if !ok {
		d.bad(join(path, "type"), n.Line, "unknown sink type %q (known: %s)", sc.Type, strings.Join(d.reg.names(), ", "))
		return
	}
	settings := reflect.New(t.config)
	d.decode(rest, settings.Elem(), path)
	sc.Settings = settings.Interface()
	if v, ok := sc.Settings.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			for _, e := range splitJoined(err) {
				msg, p := e.Error(), path
				if key, rest, ok := strings.Cut(msg, ": "); ok && settingKey.MatchString(key) {
					msg, p = rest, join(path, key)
				}
				d.bad(p, n.Line, "%s", msg)
			}
		}
	}
}

// splitJoined undoes errors.Join.
func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func yamlMessage(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	msg = strings.TrimSpace(msg)
	if i := strings.Index(msg, ": "); strings.HasPrefix(msg, "line ") && i > 0 {
		msg = msg[i+2:]
	}
	return msg
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

// yamlFields maps the yaml keys of a struct type to field indexes.
func yamlFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			for k, idx := range yamlFields(f.Type) {
				out[k] = append([]int{i}, idx...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = []int{i}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Actions a route can keep.
var knownActions = []string{"INSERT", "UPDATE", "DELETE", "TRUNCATE"}

var tablePattern = regexp.MustCompile(`^[^.*]+(\.([^.*]+|\*))?$`)

// check validates what the types alone do not, and fills defaults.
func (c *Config) check(d *decoder) {
	if len(c.Sources) == 0 {
		d.bad("sources", 0, "no source: add one, e.g. sources: {main: {dsn: ${PG_DSN}}}")
	}
	for _, name := range c.sourceOrder {
		s := c.Sources[name]
		p := "sources." + name
		if s == nil {
			d.bad(p, 0, "empty source: give at least its dsn")
			continue
		}
		if s.DSN == "" && !d.has(p+".dsn") {
			d.bad(p+".dsn", 0, "missing: the PostgreSQL connection string (URL or key=value), e.g. ${PG_DSN}")
		} else if _, err := pgconn.ParseConfig(s.DSN); s.DSN != "" && err != nil {
			d.bad(p+".dsn", 0, "cannot be parsed as a PostgreSQL connection string (not shown: it may hold a password)")
		}
		switch s.Capture {
		case "":
			s.Capture = "logical"
		case "logical", "trigger", "auto":
		default:
			d.bad(p+".capture", 0, "%q: want logical, trigger or auto", s.Capture)
		}
		if s.MaxGoroutines < 0 {
			d.bad(p+".max_goroutines", 0, "%d: must be at least 1", s.MaxGoroutines)
		}
		if s.Retries.Max != nil && *s.Retries.Max < 0 {
			d.bad(p+".retries.max", 0, "%d: must not be negative", *s.Retries.Max)
		}
		if s.Retries.MinBackoff < 0 || (s.Retries.MaxBackoff != 0 && s.Retries.MinBackoff > s.Retries.MaxBackoff) {
			d.bad(p+".retries", 0, "need 0 <= min_backoff <= max_backoff")
		}
		if s.Reconnect.Min < 0 || (s.Reconnect.Max != 0 && s.Reconnect.Min > s.Reconnect.Max) {
			d.bad(p+".reconnect", 0, "need 0 <= min <= max")
		}
		if t := s.DeadLetters.Table; t != "" && (strings.HasPrefix(t, ".") || strings.HasSuffix(t, ".")) {
			d.bad(p+".dead_letters.table", 0, "%q: want table or schema.table", t)
		}
	}
	if len(c.Sinks) == 0 {
		d.bad("sinks", 0, "no sink: add one, e.g. sinks: {out: {type: stdout}}")
	}
	if len(c.Routes) == 0 {
		d.bad("routes", 0, "no route: add one, e.g. routes: [{tables: [orders], sinks: [out]}]")
	}
	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if r == nil {
			d.bad(p, 0, "empty route: give tables and sinks")
			continue
		}
		switch {
		case r.Source == "" && len(c.Sources) == 1:
			r.Source = c.sourceOrder[0]
		case r.Source == "" && len(c.Sources) > 1:
			d.bad(p+".source", 0, "missing: there are several sources (%s); say which one", strings.Join(c.sourceOrder, ", "))
		case r.Source != "" && c.Sources[r.Source] == nil && len(c.Sources) > 0:
			d.bad(p+".source", 0, "%q is not a source of this file (sources: %s)", r.Source, strings.Join(c.sourceOrder, ", "))
		}
		if len(r.Tables) == 0 {
			d.bad(p+".tables", 0, `missing: list tables ("orders", "sales.orders") or patterns ("sales.*")`)
		}
		for j, t := range r.Tables {
			if !tablePattern.MatchString(t) {
				d.bad(fmt.Sprintf("%s.tables[%d]", p, j), 0, `%q: want "table", "schema.table" or "schema.*"`, t)
			}
		}
		if len(r.Sinks) == 0 {
			d.bad(p+".sinks", 0, "missing: name the sinks (of the sinks section) the changes go to")
		}
		for j, s := range r.Sinks {
			if _, ok := c.Sinks[s]; !ok && len(c.Sinks) > 0 {
				d.bad(fmt.Sprintf("%s.sinks[%d]", p, j), 0, "%q is not a sink of this file (sinks: %s)", s, strings.Join(c.sinkOrder, ", "))
			}
		}
		for j, a := range r.Actions {
			if !slices.Contains(knownActions, strings.ToUpper(a)) {
				d.bad(fmt.Sprintf("%s.actions[%d]", p, j), 0, "%q: want one of %s", a, strings.Join(knownActions, ", "))
			}
			r.Actions[j] = strings.ToUpper(a)
		}
		for j, col := range r.ChangedColumns {
			if col == "" {
				d.bad(fmt.Sprintf("%s.changed_columns[%d]", p, j), 0, "empty column name")
			}
		}
	}
	used := map[string]bool{}
	for _, r := range c.Routes {
		if r != nil {
			used[r.Source] = true
		}
	}
	for _, name := range c.sourceOrder {
		if !used[name] && len(c.Routes) > 0 && c.Sources[name] != nil {
			d.bad("sources."+name, 0, "no route uses this source: add a route with source: %s, or remove it", name)
		}
	}
	for _, name := range c.sinkOrder {
		if c.Sinks[name] == nil {
			d.bad("sinks."+name, 0, "empty sink: give at least its type")
		}
	}
	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			d.bad("http.listen", 0, "%q: want host:port, e.g. 127.0.0.1:9187", c.HTTP.Listen)
		}
	}
	switch c.Log.Format {
	case "":
		c.Log.Format = "text"
	case "text", "json":
	default:
		d.bad("log.format", 0, "%q: want text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "":
		c.Log.Level = "info"
	case "debug", "info", "warn", "error":
	default:
		d.bad("log.level", 0, "%q: want debug, info, warn or error", c.Log.Level)
	}
	if c.ShutdownGrace < 0 {
		d.bad("shutdown_grace", 0, "must not be negative")
	} else if c.ShutdownGrace == 0 {
		c.ShutdownGrace = Duration(30 * time.Second)
	}
}

// errNoConfig is returned when -c is missing.
var errNoConfig = errors.New("no configuration file: give -c FILE")
