package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
)

// The documented way: list shows the dead letter, replay puts its event
// back on the event stream and removes it from the list.
func TestListAndReplay(t *testing.T) {
	n, js, names := testenv.Streams(t)
	ctx := context.Background()
	ev, err := events.New("/test", events.CommitRequested, "u1", map[string]string{"commitId": "c1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Publish(ctx, js, names, ev); err != nil {
		t.Fatal(err)
	}
	cons, err := events.EnsureConsumer(ctx, js, names, events.Consumer{Name: events.ConsumerCommitter, Type: events.CommitRequested, MaxDeliver: -1})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	msg := <-batch.Messages()
	if err := deadletter.New(js, names).Put(ctx, events.ConsumerCommitter, msg, "alex kept failing"); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NATS_URL": n.URL, "NATS_STREAM": names.Stream, "NATS_SUBJECT_PREFIX": names.Prefix}
	getenv := func(k string) string { return env[k] }

	var out bytes.Buffer
	if err := run(ctx, []string{"list"}, getenv, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{ev.ID, "committer", "commit.requested", "alex kept failing"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("list does not show %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(ctx, []string{"replay", "1"}, getenv, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "replayed 1: commit.requested "+ev.ID) {
		t.Errorf("replay said %q", out.String())
	}
	st, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetMsg(ctx, 2)
	if err != nil {
		t.Fatalf("the replayed event is not in the event stream: %v", err)
	}
	if got, _ := events.Decode(raw.Data); got.ID != ev.ID || raw.Subject != names.SubjectOf(ev) {
		t.Errorf("replayed %s on %s", got.ID, raw.Subject)
	}
	out.Reset()
	if err := run(ctx, []string{"list"}, getenv, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), ev.ID) {
		t.Errorf("still listed after replay:\n%s", out.String())
	}
	if err := run(ctx, []string{"replay"}, getenv, &out); err != errUsage {
		t.Errorf("replay without a sequence: %v", err)
	}
}
