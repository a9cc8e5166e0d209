package consume

import (
	"context"
	"encoding/json"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// fakeConsumer is a jetstream.Consumer whose Messages is messages.
type fakeConsumer struct {
	jetstream.Consumer // nil: any method not below panics
	messages           func(...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error)
}

func (c *fakeConsumer) CachedInfo() *jetstream.ConsumerInfo {
	return &jetstream.ConsumerInfo{Name: "test"}
}
func (c *fakeConsumer) Messages(opts ...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) {
	return c.messages(opts...)
}

// fakeIter is a jetstream.MessagesContext of function fields.
type fakeIter struct {
	jetstream.MessagesContext // nil: any method not below panics
	next                      func() (jetstream.Msg, error)
	drain                     func()
}

func (it *fakeIter) Next(...jetstream.NextOpt) (jetstream.Msg, error) { return it.next() }
func (it *fakeIter) Drain()                                           { it.drain() }

// queueIter hands out msgs in order, then waits for Drain and reports the
// iterator closed.
func queueIter[M jetstream.Msg](msgs ...M) *fakeIter {
	drained := make(chan struct{})
	return &fakeIter{
		next: func() (jetstream.Msg, error) {
			if len(msgs) > 0 {
				m := msgs[0]
				msgs = msgs[1:]
				return m, nil
			}
			<-drained
			return nil, jetstream.ErrMsgIteratorClosed
		},
		drain: func() { close(drained) },
	}
}

// TestDeliver: each decodable message is handed over, decoded with its
// metadata, in the order it came; an undecodable one is given up (the
// service's step, which needs an event, not run) and not handed over; once
// the context ends the pull is drained and Deliver returns when the
// iterator is closed.
func TestDeliver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ids []string
		var msgs []*fakeMsg
		for _, user := range []string{"u1", "", "u2"} {
			if user == "" {
				msgs = append(msgs, &fakeMsg{data: []byte(`{"not": an event`), delivered: 1})
				continue
			}
			ev, err := events.New("/test", events.ImageUploaded, user, map[string]string{"imageId": "img"}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			raw, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, ev.ID)
			msgs = append(msgs, &fakeMsg{data: raw, delivered: 2})
		}
		iter := queueIter(msgs...)
		c := &fakeConsumer{messages: func(...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) { return iter, nil }}
		ctx, cancel := context.WithCancel(context.Background())
		hooked := 0
		opt := Options{DeadLetter: func(context.Context, events.Event, string) error { hooked++; return nil }}
		var got []string
		done := make(chan error)
		go func() {
			done <- Deliver(ctx, c, opt, func(d Delivery) {
				got = append(got, d.Event.ID)
				if d.Meta.NumDelivered != 2 || d.Msg == nil {
					t.Errorf("handed over %s with %d deliveries and msg %v", d.Event.ID, d.Meta.NumDelivered, d.Msg)
				}
			})
		}()
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(ids, got); d != "" {
			t.Errorf("handed over (-want +got):\n%s", d)
		}
		settled := [][]string{msgs[0].settled, msgs[1].settled, msgs[2].settled}
		if d := cmp.Diff([][]string{nil, {"term"}, nil}, settled); d != "" || hooked != 0 {
			t.Errorf("settled (-want +got):\n%s\nservice's dead-letter step ran %d times, want 0", d, hooked)
		}
	})
}
