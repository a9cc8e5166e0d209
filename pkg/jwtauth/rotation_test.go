package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// keyPair is one signing key of a test identity provider.
type keyPair struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
}

func (k keyPair) jwk() map[string]string {
	enc := base64.RawURLEncoding.EncodeToString
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": k.kid, "use": "sig", "n": enc(pub.N.Bytes()), "e": enc(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, _ := pub.Bytes() // 0x04 || X || Y
		return map[string]string{"kty": "EC", "kid": k.kid, "crv": "P-256", "x": enc(b[1:33]), "y": enc(b[33:])}
	}
	panic("unknown key type")
}

func (k keyPair) token(t *testing.T, now time.Time) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, jwt.RegisteredClaims{Issuer: "https://idp.example", Subject: "gp-" + k.kid,
		Audience: []string{"clinimg"}, ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))})
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestJWKSRSAAndECWithRotation: an httptest identity provider publishes an
// RSA and a P-256 key, then rotates to a new RSA key. Tokens of both kinds
// verify; after the rotation a token of the new key verifies once the key
// set may be fetched again (30 s after the last fetch), and one of a
// retired key stops verifying at that point.
func TestJWKSRSAAndECWithRotation(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey2, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r1 := keyPair{"rsa-1", jwt.SigningMethodRS256, rsaKey}
	e1 := keyPair{"ec-1", jwt.SigningMethodES256, ecKey}
	r2 := keyPair{"rsa-2", jwt.SigningMethodRS256, rsaKey2}

	var mu sync.Mutex
	published := []keyPair{r1, e1}
	fetches := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fetches++
		var set struct {
			Keys []map[string]string `json:"keys"`
		}
		for _, k := range published {
			set.Keys = append(set.Keys, k.jwk())
		}
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer srv.Close()

	{
		jwks := NewJWKS(srv.URL)
		v := NewVerifier(jwks, "https://idp.example", "clinimg")
		ctx := context.Background()
		verify := func(k keyPair, want error) {
			t.Helper()
			sub, err := v.Verify(ctx, k.token(t, time.Now()))
			if !errors.Is(err, want) || (want == nil && sub != "gp-"+k.kid) {
				t.Errorf("%s: got %q, %v; want %v", k.kid, sub, err, want)
			}
		}
		verify(r1, nil)
		verify(e1, nil)

		mu.Lock()
		published = []keyPair{r2, e1}
		mu.Unlock()
		// The key set was fetched moments ago: the new key id is unknown
		// until it may be fetched again, and the cached keys still serve.
		verify(r2, ErrInvalid)
		verify(r1, nil)
		jwks.mu.Lock()
		jwks.fetched = jwks.fetched.Add(-31 * time.Second) // as if 31 s had passed
		jwks.mu.Unlock()
		verify(r2, nil)
		verify(e1, nil)
		verify(r1, ErrInvalid) // retired: the refetched set replaced it
	}
	mu.Lock()
	defer mu.Unlock()
	if fetches != 2 {
		t.Errorf("%d fetches of the key set, want 2 (the first use, and the rotation)", fetches)
	}
}
