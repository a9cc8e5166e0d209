package consume

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// infoConsumer is a fakeConsumer whose Info says its AckWait.
type infoConsumer struct {
	*fakeConsumer
	ackWait time.Duration
}

func (c *infoConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	return &jetstream.ConsumerInfo{Name: "test", Config: jetstream.ConsumerConfig{AckWait: c.ackWait}}, nil
}

// TestWaitingMessageStaysClaimed: with one worker busy on a long handler,
// the next message, already delivered, waits for the worker; its claim
// must not lapse meanwhile (no gap between delivery and InProgress longer
// than AckWait), or JetStream hands it to another process while it waits
// or once its handler runs.
func TestWaitingMessageStaysClaimed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ackWait = 30 * time.Second
		start := time.Now()
		var msgs []*beatMsg
		for _, user := range []string{"u1", "u2"} {
			ev, err := events.New("/test", events.ImageUploaded, user, map[string]string{"imageId": "img"}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(ev)
			msgs = append(msgs, &beatMsg{fakeMsg: &fakeMsg{data: raw, delivered: 1}, start: start})
		}
		iter := queueIter(msgs[0], msgs[1])
		c := &infoConsumer{fakeConsumer: &fakeConsumer{messages: func(...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) { return iter, nil }}, ackWait: ackWait}
		h := func(ctx context.Context, ev events.Event) error {
			time.Sleep(25 * time.Second) // each handler well within AckWait
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- Run(ctx, c, h, Options{Workers: 1, Logger: slog.New(slog.DiscardHandler)}) }()
		time.Sleep(time.Minute)
		cancel()
		<-done
		m := msgs[1]
		m.mu.Lock()
		defer m.mu.Unlock()
		last := time.Duration(0) // delivered at start
		for _, b := range m.beats {
			if b-last > ackWait {
				t.Errorf("second message unclaimed from %v to %v (AckWait %v): beats %v", last, b, ackWait, m.beats)
			}
			last = b
		}
		if len(m.beats) == 0 {
			t.Errorf("second message never renewed; its handler ran from 25s to 50s (AckWait %v)", ackWait)
		}
	})
}
