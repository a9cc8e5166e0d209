package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A secret comes from NAME or from the file NAME_FILE names, never both,
// and no problem report carries its value.
func TestSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "s3cr3t-value-Zq9"
	withNL := write("with-newline", secret+"\n")
	empty := write("empty", "\n")
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string // "" for none
	}{
		{"value", map[string]string{"K": secret}, secret, ""},
		{"file, trailing newline trimmed", map[string]string{"K_FILE": withNL}, secret, ""},
		{"neither", nil, "", ""},
		{"both", map[string]string{"K": secret, "K_FILE": withNL}, "", "both set"},
		{"missing file", map[string]string{"K_FILE": filepath.Join(dir, "nope")}, "", "K_FILE"},
		{"empty file", map[string]string{"K_FILE": empty}, "", "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(func(k string) string { return tt.env[k] })
			got := r.Secret("K")
			err := r.Err()
			if got != tt.want {
				t.Errorf("Secret = %q, want %q", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one saying %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), secret):
				t.Errorf("the error carries the secret: %v", err)
			}
		})
	}
}

// The common settings' secrets read from files, and a required secret is
// satisfied by its file.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"REDIS_URL_FILE": "rediss://default:pw@example.upstash.io:6379/0\n", "AWS_SECRET_ACCESS_KEY_FILE": "sk\n", "ALEX_CLIENT_SECRET_FILE": "cs\n"}
	env := map[string]string{"AWS_ACCESS_KEY_ID": "ak"}
	for k, v := range files {
		p := filepath.Join(dir, k)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		env[k] = p
	}
	r := New(func(k string) string { return env[k] })
	c := r.ReadCommon(":0")
	alex := r.RequiredSecret("ALEX_CLIENT_SECRET")
	missing := r.RequiredSecret("OTHER_SECRET")
	if c.RedisURL != "rediss://default:pw@example.upstash.io:6379/0" || c.S3.SecretKey != "sk" || alex != "cs" || missing != "" {
		t.Errorf("redis %q, s3 secret %q, alex %q, other %q", c.RedisURL, c.S3.SecretKey, alex, missing)
	}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "OTHER_SECRET (or OTHER_SECRET_FILE) is required") || strings.Contains(err.Error(), "ALEX") {
		t.Errorf("errors %v: want only OTHER_SECRET required", err)
	}
}
