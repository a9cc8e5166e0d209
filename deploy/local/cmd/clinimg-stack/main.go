// Command clinimg-stack runs the production topology deploy/compose.yaml
// describes as processes on this machine (see package stack) until
// interrupted: `make stack`. The variables compose interpolates are taken
// from the environment (as deploy/.env would give them); STACK_DIR keeps
// the data, logs and binaries (default a new temporary directory).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/clinicalimages/clinimg/deploy/local/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "clinimg-stack:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir := os.Getenv("STACK_DIR")
	if dir == "" {
		if dir, err = os.MkdirTemp("", "clinimg-stack-"); err != nil {
			return err
		}
	}
	t, err := stack.Start(ctx, stack.Options{Root: root, Dir: dir, Env: os.Environ(), Progress: os.Stderr})
	if err != nil {
		return err
	}
	defer t.Close()
	fmt.Printf("\nThe production topology is running (%s to start).\n\n", t.StartTime.Round(1e6))
	fmt.Printf("  Desktop token:  curl '%s/token?userId=user_abc'\n", t.AuthURL)
	fmt.Printf("  Desktop widget: %s/#token=<token>&patientId=pat_1&encounterId=enc_1\n", t.URL)
	fmt.Printf("  ALEX simulator: %s/_sim/media\n\n", t.ALEXURL)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  process\tpid\tlog")
	for _, p := range t.Procs() {
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", p.Name, p.Pid(), p.LogPath())
	}
	tw.Flush()
	fmt.Println("\nCtrl-C stops it.")
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping")
	return nil
}

// repoRoot is the directory above this one holding deploy/compose.yaml.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "deploy", "compose.yaml")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no deploy/compose.yaml above %s", strings.TrimSpace(dir))
}
