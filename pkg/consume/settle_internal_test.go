package consume

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// fakeMsg is a jetstream.Msg whose settlements are recorded; its
// delivery count is delivered.
type fakeMsg struct {
	jetstream.Msg // nil: any method not below panics
	data          []byte
	delivered     uint64
	settled       []string
}

func (m *fakeMsg) Data() []byte    { return m.data }
func (m *fakeMsg) Subject() string { return "test.image.uploaded.u1" }
func (m *fakeMsg) Headers() nats.Header {
	return nats.Header{}
}
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}
func (m *fakeMsg) DoubleAck(context.Context) error { m.settled = append(m.settled, "ack"); return nil }
func (m *fakeMsg) Nak() error                      { m.settled = append(m.settled, "nak"); return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.settled = append(m.settled, "nak "+d.String())
	return nil
}
func (m *fakeMsg) InProgress() error { return nil }
func (m *fakeMsg) TermWithReason(string) error {
	m.settled = append(m.settled, "term")
	return nil
}

// deliveryOf is msg as Deliver hands it over.
func deliveryOf(t *testing.T, msg jetstream.Msg) Delivery {
	t.Helper()
	meta, err := msg.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	return Delivery{Msg: msg, Event: ev, Meta: meta}
}

// TestSettle: what the handler returns decides how the message is settled:
// ack, nak after the backoff or after a longer Retry-After (never shorter),
// dead letter then term for a permanent error or the last delivery, and a
// dead-letter step that fails keeps the message (nak, no term).
func TestSettle(t *testing.T) {
	ev, err := events.New("/test", events.ImageUploaded, "u1", map[string]string{"imageId": "img"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	cases := []struct {
		name       string
		result     error
		delivered  uint64
		deadLetter error
		want       []string
		wantDead   int
	}{
		{"success", nil, 1, nil, []string{"ack"}, 0},
		{"transient: the backoff", boom, 2, nil, []string{"nak 2s"}, 0},
		{"retry-after above the backoff", RetryAfter(boom, 90*time.Second), 2, nil, []string{"nak 1m30s"}, 0},
		{"retry-after below the backoff is floored", RetryAfter(boom, time.Millisecond), 3, nil, []string{"nak 4s"}, 0},
		{"permanent", Permanent(boom), 1, nil, []string{"term"}, 1},
		{"last delivery", boom, 5, nil, []string{"term"}, 1},
		{"dead-letter step fails", Permanent(boom), 1, errors.New("redis down"), []string{"nak 5s"}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := &fakeMsg{data: raw, delivered: c.delivered}
			dead := 0
			opt := Options{
				Backoff: func(n uint64) time.Duration { return time.Second << (n - 1) },
				DeadLetter: func(_ context.Context, got events.Event, reason string) error {
					dead++
					if got.ID != ev.ID || reason == "" {
						t.Errorf("dead letter of %q with reason %q", got.ID, reason)
					}
					return c.deadLetter
				},
				InProgressEvery: time.Hour,
				Logger:          slog.New(slog.DiscardHandler),
			}
			h := func(context.Context, events.Event) error { return c.result }
			handle(context.Background(), context.Background(), deliveryOf(t, msg), h, opt, "test", 5)
			if d := cmp.Diff(c.want, msg.settled); d != "" {
				t.Errorf("settled (-want +got):\n%s", d)
			}
			if dead != c.wantDead {
				t.Errorf("dead-letter step ran %d times, want %d", dead, c.wantDead)
			}
		})
	}
}
