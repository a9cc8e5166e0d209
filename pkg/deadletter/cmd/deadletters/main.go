// Command deadletters lists and replays the events the services gave up on
// (package deadletter):
//
//	deadletters list              every dead letter, oldest first
//	deadletters replay SEQ...     publish each again on its event's own subject
//	                              (every consumer of it gets it), then delete it
//
// It reaches NATS as the services do: NATS_URL, NATS_STREAM,
// NATS_SUBJECT_PREFIX.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "deadletters:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: deadletters list, or deadletters replay SEQ [SEQ]")

func run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") || (args[0] == "replay" && len(args) < 2) {
		return errUsage
	}
	r := config.New(getenv)
	c := r.ReadCommon("")
	if err := r.Err(); err != nil {
		return err
	}
	nc, err := nats.Connect(c.NATSURL, nats.Name("deadletters"))
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store := deadletter.New(js, c.Names)
	if args[0] == "list" {
		letters, err := store.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tSTORED\tCONSUMER\tTYPE\tEVENT ID\tSUBJECT\tREASON")
		for _, l := range letters {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Seq, l.Stored.UTC().Format(time.RFC3339), l.Consumer,
				l.EventType, l.EventID, l.Subject, l.Reason)
		}
		return tw.Flush()
	}
	for _, a := range args[1:] {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a sequence number", a)
		}
		l, err := store.Replay(ctx, seq)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "replayed %d: %s %s on %s\n", seq, l.EventType, l.EventID, l.Subject)
	}
	return nil
}
