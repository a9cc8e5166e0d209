// Package devissuer is a development identity provider: one P-256 key made
// at start-up, its JWKS, and desktop tokens for any user id, verified by
// pkg/jwtauth as a real provider's would be. For the local stack, the
// compose "sim" profile and tests only: anyone who can reach it can act as
// any GP, so no production binary links it (the API takes it injected).
package devissuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/clinicalimages/clinimg/pkg/jwtauth"
)

// Issuer signs desktop tokens with its one key.
type Issuer struct {
	key      *ecdsa.PrivateKey
	kid      string
	issuer   string
	audience string
}

// New makes a development issuer with a fresh key, issuing tokens as issuer
// for audience.
func New(issuer, audience string) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return &Issuer{key: key, kid: "dev-1", issuer: issuer, audience: audience}, nil
}

// Token signs a desktop token for userID valid for ttl.
func (i *Issuer) Token(userID string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Issuer: i.issuer, Subject: userID, Audience: jwt.ClaimStrings{i.audience},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = i.kid
	s, err := t.SignedString(i.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// Key implements jwtauth.KeySource without any HTTP round trip.
func (i *Issuer) Key(_ context.Context, kid string) (crypto.PublicKey, error) {
	if kid != i.kid {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return &i.key.PublicKey, nil
}

// Verifier checks this issuer's tokens.
func (i *Issuer) Verifier() *jwtauth.Verifier { return jwtauth.NewVerifier(i, i.issuer, i.audience) }

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() []byte {
	pub, _ := i.key.PublicKey.Bytes() // 0x04 || X || Y
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "kid": i.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(pub[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(pub[33:65]),
	}}})
	return b
}
