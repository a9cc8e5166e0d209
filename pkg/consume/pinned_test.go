package consume

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// pinnedEnv is a server of the test's own with a pinned consumer on which
// a reader (its own handle) took two of three events and was pinned.
type pinnedEnv struct {
	stream jetstream.Stream
	cons   jetstream.Consumer // another handle, for reading the info
	group  string
	pin    string // the reader's
}

func newPinnedEnv(t *testing.T) *pinnedEnv {
	t.Helper()
	_, js, names := testenv.Streams(t)
	ctx := context.Background()
	c := events.Consumer{Name: events.ConsumerRelay, AckWait: time.Minute, MaxDeliver: -1, Pinned: true}
	cons, err := events.EnsureConsumer(ctx, js, names, c)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := js.Publish(ctx, names.Subject(events.ImageUploaded, "u1"), []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	reader, err := js.Consumer(ctx, names.Stream, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := reader.Fetch(2, jetstream.FetchPriorityGroup(c.Name), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var pin string
	n := 0
	for m := range batch.Messages() {
		pin = m.Headers().Get("Nats-Pin-Id")
		n++
	}
	if err := batch.Error(); err != nil || n != 2 || pin == "" {
		t.Fatalf("fetch: %d messages, pin %q, err %v", n, pin, err)
	}
	return &pinnedEnv{stream: stream, cons: cons, group: c.Name, pin: pin}
}

// pinned is the group's pinned client ("" if none).
func (e *pinnedEnv) pinned(t *testing.T) string {
	t.Helper()
	info, err := e.cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pinned, _ := PinnedClient(info, e.group)
	return pinned
}

func TestCheckGate(t *testing.T) {
	e := newPinnedEnv(t)
	ctx := context.Background()
	tests := []struct {
		name  string
		group string
		pin   string
		held  int
		want  Gate
	}{
		{"holds every pending event", e.group, e.pin, 2, Gate{AllHeld: true}},
		{"holds more than pending", e.group, e.pin, 3, Gate{AllHeld: true}},
		{"one pending elsewhere", e.group, e.pin, 1, Gate{}},
		{"another client pinned", e.group, "other", 2, Gate{AllHeld: true, PinnedElsewhere: true}},
		{"never delivered to", e.group, "", 0, Gate{PinnedElsewhere: true}},
		{"no such group", "nogroup", "other", 2, Gate{AllHeld: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckGate(ctx, e.cons, tt.group, tt.pin, tt.held)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("gate (-want +got):\n%s", diff)
			}
		})
	}

	// Nobody pinned (the pin given up, nothing new came to assign it):
	// the reader is not pinned either.
	if err := e.stream.UnpinConsumer(ctx, events.ConsumerRelay, e.group); err != nil {
		t.Fatal(err)
	}
	got, err := CheckGate(ctx, e.cons, e.group, e.pin, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Gate{AllHeld: true, PinnedElsewhere: true}, got); diff != "" {
		t.Errorf("gate with nobody pinned (-want +got):\n%s", diff)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := CheckGate(cctx, e.cons, e.group, e.pin, 2); err == nil {
		t.Errorf("gate with the info unreadable: no error")
	}
}

// Unpin gives up the pin only if the reader holds it: a reader never
// delivered to, or delivered under a pin that moved, leaves it where it is.
func TestUnpin(t *testing.T) {
	e := newPinnedEnv(t)
	ctx := context.Background()
	for _, pin := range []string{"", "other"} {
		if err := Unpin(ctx, e.stream, e.cons, events.ConsumerRelay, e.group, pin); err != nil {
			t.Fatalf("unpin under %q: %v", pin, err)
		}
		if got := e.pinned(t); got != e.pin {
			t.Fatalf("pinned after an unpin under %q: %q, want %q", pin, got, e.pin)
		}
	}
	if err := Unpin(ctx, e.stream, e.cons, events.ConsumerRelay, e.group, e.pin); err != nil {
		t.Fatal(err)
	}
	if got := e.pinned(t); got != "" {
		t.Fatalf("pinned after the reader's unpin: %q, want none", got)
	}
}

// A reader that cannot read the consumer takes itself to hold the pin, so
// that it gives it up: keeping a pin it may hold would hold up the next
// reader for the pin's TTL. One never delivered to holds none.
func TestHoldsPinUnreadable(t *testing.T) {
	e := newPinnedEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if !HoldsPin(ctx, e.cons, e.group, "other") {
		t.Errorf("HoldsPin with the info unreadable = false, want true")
	}
	if HoldsPin(ctx, e.cons, e.group, "") {
		t.Errorf("HoldsPin never delivered to = true, want false")
	}
}
