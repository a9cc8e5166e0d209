// Command s3local serves the signature-checking S3 server of package s3local
// in a process of its own: the tests' S3 (dev/testenv starts one per test),
// so neither they nor a benchmark measuring the service beside it link or
// pay for S3 in their own process.
//
// Environment: S3LOCAL_ADDR (default 127.0.0.1:9000), S3LOCAL_ACCESS_KEY and
// S3LOCAL_SECRET_KEY (required).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clinicalimages/clinimg/deploy/local/s3local"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "s3local:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string) error {
	addr := getenv("S3LOCAL_ADDR")
	if addr == "" {
		addr = "127.0.0.1:9000"
	}
	key, secret := getenv("S3LOCAL_ACCESS_KEY"), getenv("S3LOCAL_SECRET_KEY")
	if key == "" || secret == "" {
		return errors.New("S3LOCAL_ACCESS_KEY and S3LOCAL_SECRET_KEY are required")
	}
	srv, err := s3local.Start(addr, key, secret)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "s3local: serving", srv.URL)
	<-ctx.Done()
	return srv.Close()
}
