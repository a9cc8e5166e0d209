package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Promise 6 for desktops: only a token of the configured issuer, for the
// configured audience, signed by a key of its JWKS, passes; a JWKS that
// cannot be fetched is ErrKeysUnavailable (503), never ErrInvalid (401).
func TestVerifierChecksIssuerAudienceAndKeys(t *testing.T) {
	idp, other := ecKeyPair(t, "dev-1"), ecKeyPair(t, "dev-1") // other: the same key id, another key
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{idp.jwk()}})
	}))
	defer srv.Close()
	v := NewVerifier(NewJWKS(srv.URL), "https://idp.example", "clinimg")

	signWith := func(k keyPair, c jwt.RegisteredClaims) string {
		t.Helper()
		tok := jwt.NewWithClaims(k.method, c)
		tok.Header["kid"] = k.kid
		s, err := tok.SignedString(k.priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	sign := func(c jwt.RegisteredClaims) string { return signWith(idp, c) }
	now := time.Now()
	claims := func(iss string, aud []string, exp time.Time) jwt.RegisteredClaims {
		return jwt.RegisteredClaims{Issuer: iss, Subject: "gp1", Audience: aud, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp)}
	}
	good := sign(claims("https://idp.example", []string{"clinimg"}, now.Add(time.Hour)))
	none := jwt.NewWithClaims(jwt.SigningMethodNone, claims("https://idp.example", []string{"clinimg"}, now.Add(time.Hour)))
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	otherKey := signWith(other, claims("https://idp.example", []string{"clinimg"}, now.Add(time.Hour)))

	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"good", good, nil},
		{"another application's audience", sign(claims("https://idp.example", []string{"billing"}, now.Add(time.Hour))), ErrInvalid},
		{"no audience", sign(claims("https://idp.example", nil, now.Add(time.Hour))), ErrInvalid},
		{"another issuer", sign(claims("https://evil.example", []string{"clinimg"}, now.Add(time.Hour))), ErrInvalid},
		{"no issuer", sign(claims("", []string{"clinimg"}, now.Add(time.Hour))), ErrInvalid},
		{"expired", sign(claims("https://idp.example", []string{"clinimg"}, now.Add(-time.Hour))), ErrInvalid},
		{"alg none", unsigned, ErrInvalid},
		{"key not in the JWKS", otherKey, ErrInvalid},
		{"garbage", "a.b.c", ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err == nil && sub != "gp1" {
				t.Fatalf("sub = %q", sub)
			}
		})
	}

	for _, unset := range []*Verifier{NewVerifier(NewJWKS(srv.URL), "", "clinimg"), NewVerifier(NewJWKS(srv.URL), "https://idp.example", "")} {
		if _, err := unset.Verify(context.Background(), good); !errors.Is(err, ErrInvalid) {
			t.Errorf("a verifier without issuer or audience passed a token: %v", err)
		}
	}

	// An outage before the first fetch, then keys for a new kid during one.
	down.Store(true)
	cold := NewVerifier(NewJWKS(srv.URL), "https://idp.example", "clinimg")
	for range 2 {
		if _, err := cold.Verify(context.Background(), good); !errors.Is(err, ErrKeysUnavailable) {
			t.Fatalf("JWKS down: err = %v, want ErrKeysUnavailable", err)
		}
	}
	if _, err := v.Verify(context.Background(), good); err != nil {
		t.Fatalf("cached keys stop working in an outage: %v", err)
	}
	down.Store(false)
	jw := NewJWKS(srv.URL)
	jw.failedAt = time.Now().Add(-time.Minute) // the last failure is long past
	if _, err := NewVerifier(jw, "https://idp.example", "clinimg").Verify(context.Background(), good); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
}

// ecKeyPair is a fresh P-256 signing key with id kid.
func ecKeyPair(t *testing.T, kid string) keyPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{kid, jwt.SigningMethodES256, k}
}
