package devissuer_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
)

// A development token verifies as a real provider's would: through the
// issuer's own verifier and through its JWKS served over HTTP, for its
// issuer and audience only, and not once expired or signed by another key.
func TestTokensVerifyThroughTheJWKS(t *testing.T) {
	iss, err := devissuer.New("clinimg-dev", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	other, err := devissuer.New("clinimg-dev", "clinimg")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(iss.JWKS()) }))
	defer srv.Close()
	token := func(i *devissuer.Issuer, ttl time.Duration) string {
		t.Helper()
		tok, err := i.Token("user_abc", ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good, expired, foreign := token(iss, time.Hour), token(iss, -time.Hour), token(other, time.Hour)

	tests := []struct {
		name  string
		v     *jwtauth.Verifier
		token string
		want  error
	}{
		{"own verifier", iss.Verifier(), good, nil},
		{"through the JWKS", jwtauth.NewVerifier(jwtauth.NewJWKS(srv.URL), "clinimg-dev", "clinimg"), good, nil},
		{"another audience", jwtauth.NewVerifier(jwtauth.NewJWKS(srv.URL), "clinimg-dev", "billing"), good, jwtauth.ErrInvalid},
		{"another issuer", jwtauth.NewVerifier(iss, "https://idp.example", "clinimg"), good, jwtauth.ErrInvalid},
		{"expired", iss.Verifier(), expired, jwtauth.ErrInvalid},
		{"another issuer's key", iss.Verifier(), foreign, jwtauth.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := tt.v.Verify(context.Background(), tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err == nil && sub != "user_abc" {
				t.Fatalf("sub = %q, want user_abc", sub)
			}
		})
	}
}
