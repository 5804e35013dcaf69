package kafkasink_test

import (
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgcdc/pgcdc/sink/kafkasink"
)

// The yaml keys of a daemon sink entry map onto Config.
func TestConfigYAML(t *testing.T) {
	var c kafkasink.Config
	err := yaml.Unmarshal([]byte(`
brokers: [k1:9092, k2:9092]
topic: cdc.{schema}.{table}
auto_create_topics: true
linger: 5ms
sasl: {mechanism: SCRAM-SHA-512, username: pgcdc, password: secret}
tls: {enable: true}
client_id: shop
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Brokers) != 2 || c.Topic != "cdc.{schema}.{table}" || !c.AutoCreateTopics || c.Linger != 5*time.Millisecond ||
		c.SASL.Mechanism != "SCRAM-SHA-512" || c.SASL.Username != "pgcdc" || c.SASL.Password != "secret" || !c.TLS.Enable || c.ClientID != "shop" {
		t.Errorf("decoded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}
