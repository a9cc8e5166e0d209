package ops_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/ops"
)

// writePEM writes a PEM block to dir/name and returns the path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// privateCA makes a CA and a server certificate for 127.0.0.1 it signed:
// the CA file, the server's certificate and key files.
func privateCA(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER), writePEM(t, dir, "server.pem", "CERTIFICATE", srvDER),
		writePEM(t, dir, "server-key.pem", "EC PRIVATE KEY", keyDER)
}

// A NATS server with TLS from a private CA and NKey users: a service
// connects with NATS_NKEY_SEED and NATS_TLS_CA, and not without either.
func TestNATSAuth(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := privateCA(t, dir)
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(dir, "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testenv.StartNATSConf(t, fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n}\nauthorization {\n  users = [ { nkey: %s } ]\n}\n", cert, key, pub))
	url := strings.Replace(srv.URL, "nats://", "tls://", 1)

	tests := []struct {
		name    string
		auth    config.NATSAuth
		wantErr string // "" connects
	}{
		{"nkey and CA", config.NATSAuth{NKeySeed: seedFile, CAFile: ca}, ""},
		{"no nkey", config.NATSAuth{CAFile: ca}, "authorization"},
		{"another nkey", config.NATSAuth{NKeySeed: otherFile, CAFile: ca}, "authorization"},
		{"no CA", config.NATSAuth{NKeySeed: seedFile}, "certificate"},
		{"missing CA file", config.NATSAuth{NKeySeed: seedFile, CAFile: filepath.Join(dir, "none.pem")}, "NATS_TLS_CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := ops.NATSAuthOptions(tt.auth)
			if err == nil {
				var nc *nats.Conn
				nc, err = nats.Connect(url, append(opts, nats.Timeout(5*time.Second))...)
				if err == nil {
					nc.Close()
				}
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("connect: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tt.wantErr))):
				t.Fatalf("connect: %v, want an error about %s", err, tt.wantErr)
			}
		})
	}

	// The services' own connect: the stream ensured over TLS with the NKey.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := config.Common{NATSURL: url, NATSAuth: config.NATSAuth{NKeySeed: seedFile, CAFile: ca}, Names: testenv.Names(), Replicas: 1}
	nc, js, err := ops.JetStream(ctx, c, "natsauth-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("ops.JetStream: %v", err)
	}
	defer nc.Close()
	if _, err := js.Stream(ctx, c.Names.Stream); err != nil {
		t.Errorf("stream %s after connect: %v", c.Names.Stream, err)
	}
}
