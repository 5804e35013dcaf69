package natssink_test

import (
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgcdc/pgcdc/sink/natssink"
)

// The yaml keys of a daemon sink entry map onto Config.
func TestConfigYAML(t *testing.T) {
	var c natssink.Config
	err := yaml.Unmarshal([]byte(`
url: nats://10.0.0.1:4222
subject: cdc.{table}.{action}
max_in_flight: 64
timeout: 5s
creds_file: /etc/pgcdc/nats.creds
stream: {name: CDC, create: true, subjects: ["cdc.>"], storage: memory, max_age: 24h, duplicates: 10m}
tls: {ca_file: /etc/ca.pem, server_name: nats.internal}
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "nats://10.0.0.1:4222" || c.Subject != "cdc.{table}.{action}" || c.MaxInFlight != 64 || c.Timeout != 5*time.Second ||
		c.CredsFile != "/etc/pgcdc/nats.creds" || c.Stream.Name != "CDC" || !c.Stream.Create || c.Stream.Subjects[0] != "cdc.>" ||
		c.Stream.Storage != "memory" || c.Stream.MaxAge != 24*time.Hour || c.Stream.Duplicates != 10*time.Minute ||
		c.TLS.CAFile != "/etc/ca.pem" || c.TLS.ServerName != "nats.internal" {
		t.Errorf("decoded %+v", c)
	}
}
