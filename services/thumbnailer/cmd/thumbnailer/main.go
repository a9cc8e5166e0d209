// Command thumbnailer makes the previews and clean copies of uploaded photos.
// Configuration is from the environment; see thumbnailer.ConfigFromEnv.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clinicalimages/clinimg/services/thumbnailer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := thumbnailer.ConfigFromEnv(os.Getenv)
	if err == nil {
		err = thumbnailer.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "thumbnailer:", err)
		os.Exit(1)
	}
}
