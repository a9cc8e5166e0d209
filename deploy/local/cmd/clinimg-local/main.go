// Command clinimg-local runs the whole system in one process (see package
// local) and prints the URL to open and which parts are embedded and which
// are real. `make run` runs it. Every service variable is taken from the
// environment; PORT (8080), RELAY_PORT (8081), HOST (127.0.0.1), OPS_PORTS
// (true: 9091-9094) and DATA_DIR (JetStream's files) are its own.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/gin-gonic/gin"

	"github.com/clinicalimages/clinimg/deploy/local"
	"github.com/clinicalimages/clinimg/pkg/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	gin.SetMode(gin.ReleaseMode)
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
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	st, err := local.Start(ctx, local.Options{
		Host:      envOr("HOST", "127.0.0.1"),
		APIPort:   apiPort,
		RelayPort: relayPort,
		OpsPorts:  os.Getenv("OPS_PORTS") != "false",
		DataDir:   os.Getenv("DATA_DIR"),
		Logger:    ops.Logger(os.Stderr, "", envOr("LOG_LEVEL", "info")),
		Env:       env,
	})
	if err != nil {
		return err
	}
	fmt.Printf("\nClinical Images is running.\n\n  Desktop widget:  %s/\n", st.URL)
	if st.Issuer != nil {
		fmt.Printf("  Desktop token:   curl '%s/dev/token?userId=user_abc'\n", st.URL)
	}
	if st.ALEX != nil {
		fmt.Printf("  ALEX simulator:  %[1]s/FHIR   (every Media it stores: %[1]s/_sim/media)\n", st.ALEXURL)
	}
	fmt.Printf("\n  Parts:\n")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, p := range st.Parts {
		kind := "real"
		if p.Embedded {
			kind = "embedded"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\n", p.Name, kind, p.Where)
	}
	tw.Flush()
	fmt.Printf("\nPress Ctrl-C to stop.\n")
	<-ctx.Done()
	return st.Close()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
