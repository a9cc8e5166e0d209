package audit_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// pinOf is the consumer's pinned client for the audit group ("" if none).
func pinOf(t *testing.T, cons jetstream.Consumer) string {
	t.Helper()
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pinned, _ := consume.PinnedClient(info, events.ConsumerAudit)
	return pinned
}

// A standby reader (a stopping standby API) that stops must leave the pin
// with the active reader: had it unpinned, the active reader would find
// nobody pinned and give back everything it holds, and the trail would
// wait for the pin to be assigned again.
func TestStandbyStopKeepsThePin(t *testing.T) {
	s3, js, names, cons, stream := trailServers(t)
	ctx := context.Background()
	start := func() (stop func()) {
		rctx, cancel := context.WithCancel(ctx)
		// A handle of its own, as each process has: the pin is the handle's.
		h, err := js.Consumer(ctx, names.Stream, events.ConsumerAudit)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- audit.NewWriter(audit.NewStore(s3), nil).Consume(rctx, stream, h, consume.Options{})
		}()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("consume: %v", err)
			}
		}
	}
	stopActive := start()
	defer stopActive()
	for _, ev := range sessionEvents(t, "s-"+testenv.ID(), 1) {
		if _, err := events.Publish(ctx, js, names, ev); err != nil {
			t.Fatal(err)
		}
	}
	var pin string
	testenv.Eventually(t, 30*time.Second, "the active reader pinned and its events written", func() bool {
		info, err := cons.Info(ctx)
		if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
			return false
		}
		pin = pinOf(t, cons)
		return pin != ""
	})

	stopStandby := start()
	testenv.Eventually(t, 30*time.Second, "both readers pulling", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumWaiting >= 2
	})
	stopStandby()
	if got := pinOf(t, cons); got != pin {
		t.Fatalf("pinned client after the standby stopped: %q, want the active reader's %q", got, pin)
	}
}
