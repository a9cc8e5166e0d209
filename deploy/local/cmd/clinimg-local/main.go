// Command clinimg-local runs the whole system in one process on embedded
// parts (see package local) and prints the URL to open. `make run` runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/clinicalimages/clinimg/deploy/local"
	"github.com/clinicalimages/clinimg/pkg/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "clinimg-local:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	port := func(name string, def int) (int, error) {
		v := os.Getenv(name)
		if v == "" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("%s: %q is not a port", name, v)
		}
		return n, nil
	}
	apiPort, err := port("PORT", 8080)
	if err != nil {
		return err
	}
	relayPort, err := port("RELAY_PORT", 8081)
	if err != nil {
		return err
	}
	st, err := local.Start(ctx, local.Options{
		Host:      envOr("HOST", "127.0.0.1"),
		APIPort:   apiPort,
		RelayPort: relayPort,
		OpsPorts:  os.Getenv("OPS_PORTS") != "false",
		DataDir:   os.Getenv("DATA_DIR"),
		RedisURL:  os.Getenv("REDIS_URL"),
		Logger:    ops.Logger(os.Stderr, "local", envOr("LOG_LEVEL", "info")),
	})
	if err != nil {
		return err
	}
	fmt.Printf(`
Clinical Images is running.

  Desktop widget:  %[1]s/
  Desktop token:   curl '%[1]s/dev/token?userId=user_abc'
  ALEX simulator:  %[2]s/FHIR   (every Media it stores: %[2]s/_sim/media)
  Realtime (SSE):  %[3]s

Press Ctrl-C to stop.
`, st.URL, st.ALEXURL, st.RelayURL)
	<-ctx.Done()
	return st.Close()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
