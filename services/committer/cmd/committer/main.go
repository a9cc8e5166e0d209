// Command committer writes committed sessions' photos to ALEX as FHIR Media.
// Configuration is from the environment; see committer.ConfigFromEnv.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clinicalimages/clinimg/services/committer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := committer.ConfigFromEnv(os.Getenv)
	if err == nil {
		err = committer.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "committer:", err)
		os.Exit(1)
	}
}
