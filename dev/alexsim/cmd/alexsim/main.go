// Command alexsim serves the ALEX simulator (package alexsim) over HTTP, for
// the compose stack's "sim" profile and manual testing. The committer points
// ALEX_API_URL at <url>/FHIR and ALEX_OAUTH_TOKEN_URL at
// <url>/oauth2/v2.0/token.
//
// Environment: ALEXSIM_ADDR (default :8090), ALEXSIM_CLIENT_ID and
// ALEXSIM_CLIENT_SECRET (default the package's), ALEXSIM_SCOPE,
// ALEXSIM_FACILITY_ID, ALEXSIM_CAPABILITIES (as ALEX_CAPABILITIES),
// ALEXSIM_LATENCY (e.g. 200ms), ALEXSIM_DROP_DATA (true keeps no photo bytes),
// ALEXSIM_AUTO_PATIENTS (true: any patient id is known, with a test NHI, so
// a committer can look its Media up again by NHI as it must on ALEX).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "alexsim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string) error {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	opt := alexsim.Options{
		Clients:    map[string]string{env("ALEXSIM_CLIENT_ID", alexsim.DefaultClientID): env("ALEXSIM_CLIENT_SECRET", alexsim.DefaultClientSecret)},
		Scope:      env("ALEXSIM_SCOPE", alexsim.DefaultScope),
		Facilities: []string{env("ALEXSIM_FACILITY_ID", alexsim.DefaultFacility)},
		Logger:     slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", "alexsim"),
	}
	var err error
	if opt.Capabilities, err = fhir.ParseCapabilities(getenv("ALEXSIM_CAPABILITIES")); err != nil {
		return fmt.Errorf("ALEXSIM_CAPABILITIES: %w", err)
	}
	if v := getenv("ALEXSIM_LATENCY"); v != "" {
		if opt.Latency, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("ALEXSIM_LATENCY: %w", err)
		}
	}
	for name, dst := range map[string]*bool{"ALEXSIM_DROP_DATA": &opt.DropData, "ALEXSIM_AUTO_PATIENTS": &opt.AutoPatients} {
		if v := getenv(name); v != "" {
			if *dst, err = strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	sim := alexsim.New(opt)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	mux.Handle("/", sim)
	srv := &http.Server{Addr: env("ALEXSIM_ADDR", ":8090"), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	opt.Logger.Info("alexsim.start", "addr", srv.Addr, "fhir_base", alexsim.BasePath, "token_path", alexsim.TokenPath)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
