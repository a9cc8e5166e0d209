// Command miniredis serves the Redis-compatible server the local stack
// embeds (alicebob/miniredis) in a process of its own, so the session
// store's contract tests run on it without linking it into their module.
//
// Environment: MINIREDIS_ADDR (default 127.0.0.1:6380).
package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alicebob/miniredis/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr(cmp.Or(os.Getenv("MINIREDIS_ADDR"), "127.0.0.1:6380")); err != nil {
		fmt.Fprintln(os.Stderr, "miniredis:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "miniredis: serving", m.Addr())
	<-ctx.Done()
	m.Close()
}
