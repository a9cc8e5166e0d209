// Package jwtauth verifies the desktop's bearer tokens: JWTs signed by the
// practice's identity provider, checked against its JWKS (issuer, audience,
// expiry), with `sub` as the user id. It only verifies: the development
// issuer that signs tokens for the local stack and tests is dev/devissuer.
package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalid is returned for any token that does not verify; the reason is
// deliberately not told to the caller.
var ErrInvalid = errors.New("invalid or expired token")

// ErrKeysUnavailable is returned when the identity provider's keys cannot
// be fetched: the token may well be good, so the caller answers 503, not
// 401.
var ErrKeysUnavailable = errors.New("identity provider keys unavailable")

// KeySource finds the public key for a key id.
type KeySource interface {
	Key(ctx context.Context, kid string) (crypto.PublicKey, error)
}

// Verifier checks tokens from one issuer for one audience.
type Verifier struct {
	keys     KeySource
	issuer   string
	audience string
	now      func() time.Time
}

// NewVerifier checks tokens whose keys come from keys, issued by issuer for
// audience. Both are required: with either empty every token is refused, so
// a token the same identity provider issued for another application never
// passes.
func NewVerifier(keys KeySource, issuer, audience string) *Verifier {
	return &Verifier{keys: keys, issuer: issuer, audience: audience, now: time.Now}
}

// Verify returns the token's subject (the user id). It fails with
// ErrKeysUnavailable when the keys cannot be fetched, ErrInvalid otherwise.
func (v *Verifier) Verify(ctx context.Context, token string) (string, error) {
	if v.issuer == "" || v.audience == "" {
		return "", ErrInvalid
	}
	tok, err := jwt.ParseWithClaims(token, &jwt.RegisteredClaims{}, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return v.keys.Key(ctx, kid)
	},
		jwt.WithValidMethods([]string{"RS256", "ES256", "PS256"}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(30*time.Second),
		jwt.WithTimeFunc(v.now),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
	)
	if errors.Is(err, ErrKeysUnavailable) {
		return "", ErrKeysUnavailable
	}
	if err != nil || !tok.Valid {
		return "", ErrInvalid
	}
	sub, err := tok.Claims.GetSubject()
	if err != nil || sub == "" {
		return "", ErrInvalid
	}
	return sub, nil
}

// JWKS is a key source fetched from a URL, cached, and refetched (at most
// every 30 s) when an unknown key id appears, so key rotation just works.
// A fetch that fails is not retried for 2 s: during an outage requests get
// ErrKeysUnavailable at once rather than each waiting on the fetch.
type JWKS struct {
	url    string
	client *http.Client

	mu       sync.Mutex
	keys     map[string]crypto.PublicKey
	fetched  time.Time
	failedAt time.Time
}

// NewJWKS returns a key source for url; nothing is fetched until first use.
func NewJWKS(url string) *JWKS {
	return &JWKS{url: url, client: &http.Client{Timeout: 5 * time.Second}}
}

// Key returns the key with id kid.
func (j *JWKS) Key(ctx context.Context, kid string) (crypto.PublicKey, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if k, ok := j.keys[kid]; ok {
		return k, nil
	}
	if time.Since(j.fetched) < 30*time.Second && j.keys != nil {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	if time.Since(j.failedAt) < 2*time.Second {
		return nil, ErrKeysUnavailable
	}
	keys, err := j.fetch(ctx)
	if err != nil {
		j.failedAt = time.Now()
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	j.fetched = time.Now()
	j.keys = keys
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown key id %q", kid)
}

// Ping fetches the key set (readiness).
func (j *JWKS) Ping(ctx context.Context) error {
	_, err := j.fetch(ctx)
	return err
}

func (j *JWKS) fetch(ctx context.Context) (map[string]crypto.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks request: %w", err)
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch jwks: status %d", resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read jwks: %w", err)
	}
	return ParseJWKS(raw)
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
}

// ParseJWKS reads the RSA and P-256 signing keys of a JWK set.
func ParseJWKS(raw []byte) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("decode jwks: %w", err)
	}
	out := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Kty {
		case "RSA":
			n, err1 := b64(k.N)
			e, err2 := b64(k.E)
			if err1 != nil || err2 != nil {
				continue
			}
			out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case "EC":
			if k.Crv != "P-256" {
				continue
			}
			x, err1 := b64(k.X)
			y, err2 := b64(k.Y)
			if err1 != nil || err2 != nil {
				continue
			}
			pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, pad32(x)...), pad32(y)...))
			if err != nil {
				continue
			}
			out[k.Kid] = pk
		}
	}
	return out, nil
}

func b64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func pad32(b []byte) []byte {
	if len(b) >= 32 {
		return b
	}
	return append(make([]byte, 32-len(b)), b...)
}
