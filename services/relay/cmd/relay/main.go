// Command relay delivers session events to the browsers, through Ably or its
// own Server-Sent Events endpoint. Configuration is read from the
// environment; see relay.Config.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clinicalimages/clinimg/services/relay"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := relay.ConfigFromEnv(os.Getenv)
	if err == nil {
		err = relay.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}
