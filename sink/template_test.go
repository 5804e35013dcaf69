package sink_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink"
)

func TestTemplate(t *testing.T) {
	m := &sink.Message{Source: "", Schema: "public", Table: "or.ders", Action: "INSERT"}
	tm, err := sink.ParseTemplate("pgcdc.{source}.{schema}.{table}.{action}")
	if err != nil {
		t.Fatal(err)
	}
	if got := tm.Render(m, nil); got != "pgcdc.default.public.or.ders.INSERT" {
		t.Errorf("Render = %q", got)
	}
	esc := func(s string) string { return strings.ReplaceAll(s, ".", "_") }
	if got := tm.Render(m, esc); got != "pgcdc.default.public.or_ders.INSERT" {
		t.Errorf("Render with escape = %q", got)
	}
	if tm.Static() || !sink.MustParseTemplate("fixed").Static() {
		t.Error("Static wrong")
	}
	for text, want := range map[string]string{
		"":          "empty template",
		"a.{tabl}":  "unknown placeholder {tabl}",
		"a.{table":  "unclosed placeholder",
		"{}":        "unknown placeholder {}",
		"x{source}": "",
	} {
		_, err := sink.ParseTemplate(text)
		if want == "" {
			if err != nil {
				t.Errorf("ParseTemplate(%q): %v", text, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTemplate(%q) = %v, want an error containing %q", text, err, want)
		}
	}
}

func TestTLSConfig(t *testing.T) {
	if c, err := (sink.TLSConfig{}).Build(); c != nil || err != nil {
		t.Errorf("zero TLSConfig: %v, %v; want nil, nil", c, err)
	}
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgcdc-test"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write := func(path, typ string, b []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(certFile, "CERTIFICATE", der)
	write(keyFile, "EC PRIVATE KEY", kder)

	c, err := sink.TLSConfig{CAFile: certFile, CertFile: certFile, KeyFile: keyFile, ServerName: "broker"}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if c.RootCAs == nil || len(c.Certificates) != 1 || c.ServerName != "broker" {
		t.Errorf("Build: %+v", c)
	}
	for _, bad := range []struct {
		cfg  sink.TLSConfig
		want string
	}{
		{sink.TLSConfig{CAFile: filepath.Join(dir, "missing.pem")}, "tls.ca_file"},
		{sink.TLSConfig{CAFile: keyFile}, "no PEM certificate"},
		{sink.TLSConfig{CertFile: certFile}, "both cert_file and key_file"},
		{sink.TLSConfig{CertFile: certFile, KeyFile: certFile}, "tls.cert_file/key_file"},
	} {
		if _, err := bad.cfg.Build(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Build(%+v) = %v; want an error containing %q", bad.cfg, err, bad.want)
		}
	}
}
