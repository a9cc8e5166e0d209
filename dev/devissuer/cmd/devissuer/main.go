// Command devissuer is a development identity provider for the compose
// stack's "sim" profile: it signs desktop tokens for any user id with a key
// made at start-up and publishes the JWKS the API verifies them against.
// Never run it where real patients are: anyone who can reach it can act as
// any GP.
//
//	GET /jwks.json              the key set (the API's AUTH_JWKS_URL)
//	GET /token?userId=user_abc  {"token": "<JWT>", "userId": "user_abc"}
//	GET /healthz
//
// Environment: DEVISSUER_ADDR (default :8070), AUTH_ISSUER (default
// clinimg-dev), AUTH_AUDIENCE (default clinimg), DEVISSUER_TTL (default 12h).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/clinicalimages/clinimg/dev/devissuer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "devissuer:", err)
		os.Exit(1)
	}
}

var userID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func run(ctx context.Context) error {
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	ttl, err := time.ParseDuration(env("DEVISSUER_TTL", "12h"))
	if err != nil {
		return fmt.Errorf("DEVISSUER_TTL: %w", err)
	}
	iss, err := devissuer.New(env("AUTH_ISSUER", "clinimg-dev"), env("AUTH_AUDIENCE", "clinimg"))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(iss.JWKS())
	})
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		id := r.URL.Query().Get("userId")
		if !userID.MatchString(id) {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "userId must be 1-64 letters, digits, _ or -", "code": "invalid_user"})
			return
		}
		tok, err := iss.Token(id, ttl)
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "could not sign", "code": "internal"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "userId": id})
	})
	srv := &http.Server{Addr: env("DEVISSUER_ADDR", ":8070"), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Fprintf(os.Stderr, "{\"msg\":\"devissuer.start\",\"addr\":%q}\n", srv.Addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
