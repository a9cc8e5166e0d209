package consume

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// beatMsg is a fakeMsg that records when InProgress was sent.
type beatMsg struct {
	*fakeMsg
	mu    sync.Mutex
	start time.Time
	beats []time.Duration
}

func (m *beatMsg) InProgress() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.beats = append(m.beats, time.Since(m.start))
	return nil
}

// TestInProgressHeartbeat: while a handler runs, InProgress is sent every
// InProgressEvery (in virtual time), and never again once it has returned.
func TestInProgressHeartbeat(t *testing.T) {
	const every = 10 * time.Second
	cases := []struct {
		name string
		runs time.Duration
		want []time.Duration
	}{
		{"returns before the first interval", every / 2, nil},
		{"runs for four intervals and a half", 45 * time.Second, []time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second, 40 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ev, err := events.New("/test", events.ImageUploaded, "u1", map[string]string{"imageId": "img"}, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				raw, err := json.Marshal(ev)
				if err != nil {
					t.Fatal(err)
				}
				msg := &beatMsg{fakeMsg: &fakeMsg{data: raw, delivered: 1}, start: time.Now()}
				opt := Options{
					InProgressEvery: every,
					Backoff:         func(uint64) time.Duration { return time.Second },
					Logger:          slog.New(slog.DiscardHandler),
				}
				h := func(context.Context, events.Event) error {
					time.Sleep(c.runs)
					return nil
				}
				handle(context.Background(), context.Background(), deliveryOf(t, msg), h, opt, "test", 5)
				time.Sleep(time.Hour) // long after the handler returned
				synctest.Wait()
				msg.mu.Lock()
				defer msg.mu.Unlock()
				if d := cmp.Diff(c.want, msg.beats); d != "" {
					t.Errorf("InProgress sent at (-want +got):\n%s", d)
				}
				if d := cmp.Diff([]string{"ack"}, msg.settled); d != "" {
					t.Errorf("settled (-want +got):\n%s", d)
				}
			})
		})
	}
}
