package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/ablysim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// TestMain lets the kill test run a relay in a child process of this test
// binary: with RELAY_TEST_CHILD=1 it is a relay configured from the
// environment, nothing else. The SSE benchmark's subscribers are a child
// role too.
func TestMain(m *testing.M) {
	if os.Getenv("RELAY_TEST_CHILD") == "1" {
		cfg, err := ConfigFromEnv(os.Getenv)
		if err == nil {
			err = Run(context.Background(), cfg)
		}
		fmt.Fprintln(os.Stderr, "relay child:", err)
		os.Exit(1)
	}
	testenv.ChildMain(m, map[string]testenv.Role{"subscribe": subscribeRole})
}

var ablyKey = realtime.Key{Name: "appid.keyid", Secret: "ably-secret"}

func startSim(t testing.TB, opt ablysim.Options) *ablysim.Server {
	t.Helper()
	opt.Keys = []realtime.Key{ablyKey}
	sim, err := ablysim.Start("127.0.0.1:0", opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

func (s *stack) ablyConfig(sim *ablysim.Server) Config {
	cfg := s.config()
	cfg.Realtime = realtime.Settings{Mode: realtime.ModeAbly, Key: ablyKey}
	cfg.AblyEndpoint = "http://" + sim.Endpoint()
	cfg.PublishTimeout = 300 * time.Millisecond
	// Claims lapse in seconds, so a test shows what happens when an outage
	// outlasts them without waiting the default 15 s several times over.
	cfg.Common.AckWait = 2 * time.Second
	return cfg
}

// published is one message as the stand-in keeps it.
type published struct {
	Name, ID string
}

// wantPublished is what the stand-in must hold for channel: each stored
// event of the channel once, in stream order, under its own event id.
func wantPublished(stored []events.Event, channel string) []published {
	var out []published
	for _, ev := range stored {
		if realtime.Channel(ev.Subject) == channel {
			out = append(out, published{Name: ev.Type.BrowserName(), ID: ev.ID})
		}
	}
	return out
}

// checkOneIDPerEvent fails if any publish the stand-in received, accepted or
// not, carried more than one message or an id that is not an event's own:
// an event sent twice must be recognisable to Ably as a repeat.
func checkOneIDPerEvent(t *testing.T, stored []events.Event, reqs []ablysim.Request) {
	t.Helper()
	ids := map[string]bool{}
	for _, ev := range stored {
		ids[ev.ID] = true
	}
	for _, rq := range reqs {
		if len(rq.IDs) != 1 || !ids[rq.IDs[0]] {
			t.Errorf("publish to %s carried ids %v: want one event's own id", rq.Channel, rq.IDs)
		}
	}
}

// checkSessionChannels fails unless each event of users' current sessions
// (every stored event: each user here has one session) is also on that
// session's channel, once, in order.
func (s *stack) checkSessionChannels(t *testing.T, sim *ablysim.Server, stored []events.Event, users ...string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "every session channel", func() bool {
		return len(sim.Messages("")) == 2*len(stored)
	})
	for _, u := range users {
		cur, err := s.store.Peek(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		ch := realtime.SessionChannel(u, cur.SessionID)
		if d := cmp.Diff(wantPublished(stored, realtime.Channel(u)), gotPublished(sim, ch)); d != "" {
			t.Errorf("%s (-want +got):\n%s", ch, d)
		}
	}
}

// userMessages are the messages on users' channels (not sessions'): one
// per event.
func userMessages(sim *ablysim.Server) []ablysim.Message {
	var out []ablysim.Message
	for _, m := range sim.Messages("") {
		if _, ok := realtime.ChannelUser(m.Channel); ok {
			out = append(out, m)
		}
	}
	return out
}

func gotPublished(sim *ablysim.Server, channel string) []published {
	var out []published
	for _, m := range sim.Messages(channel) {
		out = append(out, published{Name: m.Name, ID: m.ID})
	}
	return out
}

// lifecycle emits one of every browser event for userID (but commit-failed).
func (s *stack) lifecycle(t *testing.T, userID string) {
	t.Helper()
	ctx := context.Background()
	st := s.store
	s.sessionFor(t, userID)
	s.addImage(t, userID, "a")
	s.addImage(t, userID, "b")
	notes := "left forearm lesion, 4 mm"
	if _, err := st.UpdateMetadata(ctx, userID, "", "a", session.MetadataPatch{Notes: &notes}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.SetProcessed(ctx, userID, "a", session.Processed{Status: session.ImageReady, PreviewKey: "p/a.jpg"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.SetProcessed(ctx, userID, "b", session.Processed{Status: session.ImageRejected, RejectReason: "not an image"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RemoveImage(ctx, userID, "", "b"); err != nil {
		t.Fatal(err)
	}
	sess, err := st.BeginCommit(ctx, userID, "", "c1")
	if err != nil {
		t.Fatal(err)
	}
	a := sess.Images[0]
	if _, _, err := st.RecordPhoto(ctx, userID, session.PhotoUpdate{CommitID: "c1", ImageID: a.ID, Identifier: a.MediaIdentifier, State: session.PhotoInRecord, MediaID: "m1"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.FinishCommit(ctx, userID, "c1"); err != nil {
		t.Fatal(err)
	}
}

// Must show 1: each event published once with the expected name, channel
// and id, and data without presigned URLs.
func TestAblyPublishesEachEventOnce(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{ChannelRate: 50})
	r := s.start(t, s.ablyConfig(sim))
	s.lifecycle(t, "u1")
	s.sessionFor(t, "u2")
	s.addImage(t, "u2", "x")

	var stored []events.Event
	testenv.Eventually(t, 10*time.Second, "every event published", func() bool {
		stored = s.storedEvents(t)
		return len(stored) == 12 && len(userMessages(sim)) == len(stored)
	})
	wantNames := []string{"session-started", "image-uploaded", "image-uploaded", "image-updated", "image-processed",
		"image-rejected", "image-removed", "commit-started", "commit-progress", "session-committed"}
	var names []string
	for _, m := range sim.Messages("session:u1") {
		names = append(names, m.Name)
	}
	if d := cmp.Diff(wantNames, names); d != "" {
		t.Errorf("u1 names (-want +got):\n%s", d)
	}
	checkOneIDPerEvent(t, stored, sim.Requests())
	for _, ch := range []string{"session:u1", "session:u2"} {
		if d := cmp.Diff(wantPublished(stored, ch), gotPublished(sim, ch)); d != "" {
			t.Errorf("%s (-want +got):\n%s", ch, d)
		}
	}
	s.checkSessionChannels(t, sim, stored, "u1", "u2")

	// The data is the event payload, minus the presigned URL, JSON-encoded.
	m := sim.Messages("session:u2")[1]
	var got, want map[string]any
	if err := json.Unmarshal([]byte(m.Data), &got); err != nil || m.Encoding != "json" {
		t.Fatalf("data %q encoding %q: %v", m.Data, m.Encoding, err)
	}
	_ = json.Unmarshal(stored[11].Data, &want)
	delete(want["image"].(map[string]any), "s3Url")
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("data (-want +got):\n%s", d)
	}
	if strings.Contains(m.Data, "X-Amz-Signature") {
		t.Errorf("presigned URL relayed: %s", m.Data)
	}
	if n := r.metric(t, "relay_events_relayed_total"); n != 12 {
		t.Errorf("relayed metric = %v", n)
	}
	if n := r.metric(t, "relay_ably_publish_seconds"); n == 0 {
		t.Errorf("no publish latency observed")
	}
}

// Must show 1: 500, 503, timeouts (one after Ably took the messages), then
// recovery: every event arrives, and a message seen twice has one id.
func TestAblyRetriesThroughFaults(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	sim.Inject(
		ablysim.Fault{Status: 500},
		ablysim.Fault{Status: 503},
		ablysim.Fault{Delay: time.Hour},               // timeout, not taken
		ablysim.Fault{Accept: true, Delay: time.Hour}, // timeout after Ably took them
		ablysim.Fault{Status: 504},
		ablysim.Fault{Accept: true, Status: 502}, // error after Ably took them
		ablysim.Fault{Status: 429, Code: 42910},
	)
	r := s.start(t, s.ablyConfig(sim))
	for _, u := range []string{"u1", "u2"} {
		s.sessionFor(t, u)
		for i := range 9 {
			s.addImage(t, u, fmt.Sprintf("img%d", i))
		}
	}
	var stored []events.Event
	testenv.Eventually(t, 30*time.Second, "every event published", func() bool {
		stored = s.storedEvents(t)
		return len(stored) == 20 && len(userMessages(sim)) == 20
	})
	if n := sim.PendingFaults(); n != 0 {
		t.Errorf("%d faults never hit", n)
	}
	reqs := sim.Requests()
	checkOneIDPerEvent(t, stored, reqs)
	dupes := 0
	for _, rq := range reqs {
		dupes += rq.Dupes
	}
	if dupes < 2 {
		t.Errorf("dupes = %d, want the two publishes Ably took before failing to come back as duplicates", dupes)
	}
	for _, ch := range []string{"session:u1", "session:u2"} {
		if d := cmp.Diff(wantPublished(stored, ch), gotPublished(sim, ch)); d != "" {
			t.Errorf("%s (-want +got):\n%s", ch, d)
		}
	}
	if n := r.metric(t, "relay_ably_publish_failures_total"); n < 7 {
		t.Errorf("failures metric = %v, want >= 7", n)
	}
}

// Events that piled up go out within Ably's limits: at most 50 messages
// per channel per second, 64 KiB per publish, each event alone under its
// own id; a payload too big for one message becomes a resync marker.
func TestAblyPiledUpEventsWithinLimits(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{ChannelRate: 50})
	ctx := context.Background()
	s.sessionFor(t, "u1")
	for i := range 100 {
		s.addImage(t, "u1", fmt.Sprintf("img%03d", i))
	}
	long := strings.Repeat("n", 20*1024)
	for i := range 4 {
		if _, err := s.store.UpdateMetadata(ctx, "u1", "", fmt.Sprintf("img%03d", i), session.MetadataPatch{Notes: &long}); err != nil {
			t.Fatal(err)
		}
	}
	huge := strings.Repeat("h", 70*1024)
	if _, err := s.store.UpdateMetadata(ctx, "u1", "", "img099", session.MetadataPatch{Notes: &huge}); err != nil {
		t.Fatal(err)
	}
	s.sessionFor(t, "u2")
	testenv.Eventually(t, 10*time.Second, "all events in the stream", func() bool { return len(s.storedEvents(t)) == 107 })

	s.start(t, s.ablyConfig(sim))
	testenv.Eventually(t, 20*time.Second, "every event published", func() bool { return len(userMessages(sim)) == 107 })

	// A loaded machine can delay one publish and not the next, so the
	// stand-in may count a rate refusal (42910) that the relay retries; any
	// other refusal means the relay broke one of Ably's rules.
	refused := sim.Refused()
	delete(refused, realtime.CodeRateLimited)
	if d := cmp.Diff(map[int]int{}, refused); d != "" {
		t.Errorf("publishes refused by the stand-in (code: count):\n%s", d)
	}
	stored := s.storedEvents(t)
	reqs := sim.Requests()
	checkOneIDPerEvent(t, stored, reqs)
	for _, rq := range reqs {
		if rq.Bytes > 64*1024 {
			t.Errorf("publish of %d bytes", rq.Bytes)
		}
	}
	if d := cmp.Diff(wantPublished(stored, "session:u1"), gotPublished(sim, "session:u1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	msgs := sim.Messages("session:u1")
	var marker map[string]any
	if err := json.Unmarshal([]byte(msgs[len(msgs)-1].Data), &marker); err != nil {
		t.Fatal(err)
	}
	if marker["resync"] != true || marker["imageId"] != "img099" || marker["version"] != float64(106) {
		t.Errorf("oversized event sent as %v", marker)
	}
}

// Must show 1: a relay killed (SIGKILL) while Ably holds its publishes,
// another started: no event lost, each once under its own id, in order.
func TestAblyRelayKilledMidFlowLosesNothing(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	// The first publishes are taken and never answered: the child is
	// killed while it waits.
	sim.Inject(ablysim.Fault{Accept: true, Delay: time.Hour}, ablysim.Fault{Accept: true, Delay: time.Hour})
	for _, u := range []string{"u1", "u2", "u3"} {
		s.sessionFor(t, u)
		for i := range 10 {
			s.addImage(t, u, fmt.Sprintf("img%d", i))
		}
	}
	testenv.Eventually(t, 10*time.Second, "events in the stream", func() bool { return len(s.storedEvents(t)) == 33 })

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(),
		"RELAY_TEST_CHILD=1",
		"NATS_URL="+s.nats.URL,
		"NATS_STREAM="+s.names.Stream,
		"NATS_SUBJECT_PREFIX="+s.names.Prefix,
		"NATS_ACK_WAIT=2s",
		"OPS_ADDR=127.0.0.1:0",
		"ABLY_API_KEY="+ablyKey.Encode(),
		"ABLY_ENDPOINT=http://"+sim.Endpoint(),
		"ABLY_PUBLISH_TIMEOUT=1m",
		"RELAY_PUBLISHERS=2",
		"LOG_LEVEL=error",
	)
	child.Stderr = io.Discard
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	testenv.Eventually(t, 10*time.Second, "the child's publishes hang", func() bool { return sim.PendingFaults() == 0 })
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	if n := len(userMessages(sim)); n == 0 || n == 33 {
		t.Fatalf("%d messages taken before the kill: not mid-flow", n)
	}

	// A new relay is pinned once the dead one's pin lapses, after its
	// claims did: it gets the unacked events first, in order.
	s.start(t, s.ablyConfig(sim))
	testenv.Eventually(t, 40*time.Second, "every event published", func() bool { return len(userMessages(sim)) == 33 })
	stored := s.storedEvents(t)
	checkOneIDPerEvent(t, stored, sim.Requests())
	for _, u := range []string{"u1", "u2", "u3"} {
		ch := realtime.Channel(u)
		if d := cmp.Diff(wantPublished(stored, ch), gotPublished(sim, ch)); d != "" {
			t.Errorf("%s (-want +got):\n%s", ch, d)
		}
	}
}

// Must show 5 (issue 14), in seconds: Ably refuses one channel for six
// times the relays' AckWait while its events keep coming, and the relay
// holding them is stopped mid-outage. The held events are never redelivered
// while held, the other channel is not held up, and when Ably recovers
// every event has reached it once, under its own id, in stream order.
func TestAblyChannelOutageLongerThanAckWait(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	cfg := s.ablyConfig(sim)
	relays := []*running{s.start(t, cfg), s.start(t, cfg)}
	s.sessionFor(t, "u1")
	s.sessionFor(t, "u2")
	testenv.Eventually(t, 10*time.Second, "sessions published", func() bool { return len(userMessages(sim)) == 2 })

	outage := 6 * cfg.Common.AckWait
	until := time.Now().Add(outage)
	sim.Refuse(ablysim.Outage{Channel: "session:u1", Until: until, Status: 401, Code: realtime.CodeNotPermitted})
	for i := range 8 {
		s.addImage(t, "u1", fmt.Sprintf("img%d", i))
		s.addImage(t, "u2", fmt.Sprintf("img%d", i))
	}
	testenv.Eventually(t, 10*time.Second, "u2's events published during u1's outage", func() bool {
		return len(sim.Messages("session:u2")) == 9
	})
	if time.Now().After(until) {
		t.Fatalf("u2's events took the whole outage")
	}

	// Wait until the outage has lasted over twice the AckWait: nothing was
	// redelivered, the relay kept its claims.
	cons, err := s.js.Consumer(context.Background(), s.names.Stream, events.ConsumerRelay)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, outage, "the outage outlasting the claims", func() bool {
		return time.Until(until) < outage-2*cfg.Common.AckWait-time.Second
	})
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.NumAckPending != 8 {
		t.Errorf("mid-outage: %d redelivered, %d pending; want 0 and u1's 8 held", info.NumRedelivered, info.NumAckPending)
	}
	// Stop the pinned relay (the one that published): it hands u1's events
	// back in order and the other takes over.
	pinned := slices.IndexFunc(relays, func(r *running) bool { return r.metric(t, "relay_events_relayed_total") > 0 })
	if pinned < 0 {
		t.Fatal("no relay published")
	}
	relays[pinned].stop()
	s.addImage(t, "u1", "late")

	t.Cleanup(func() {
		if t.Failed() {
			for i, r := range relays {
				for _, l := range r.logs.Lines() {
					t.Logf("relay %d: %s", i, l)
				}
			}
		}
	})
	testenv.Eventually(t, outage+30*time.Second, "u1's events published after the outage", func() bool {
		return len(sim.Messages("session:u1")) == 10
	})
	stored := s.storedEvents(t)
	checkOneIDPerEvent(t, stored, sim.Requests())
	for _, ch := range []string{"session:u1", "session:u2"} {
		if d := cmp.Diff(wantPublished(stored, ch), gotPublished(sim, ch)); d != "" {
			t.Errorf("%s (-want +got):\n%s", ch, d)
		}
	}
	s.checkSessionChannels(t, sim, stored, "u1", "u2")
	refused := 0
	for _, rq := range sim.Requests() {
		if rq.Channel == "session:u1" && rq.Status == 401 {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("no publish was refused: the outage never hit")
	}
}

func key(t testing.TB, m ablysim.Message) string {
	var d struct {
		Image struct {
			ID string `json:"id"`
		} `json:"image"`
	}
	if err := json.Unmarshal([]byte(m.Data), &d); err != nil {
		t.Fatal(err)
	}
	return userOf(m.Channel) + "/" + d.Image.ID
}

// Must show 2 (Ably): the browser token, signed with the Ably key, opens
// its own channel on the stand-in's SSE, where the relayed events arrive,
// and is refused on another user's channel by capability.
func TestAblyTokenRefusedByCapability(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	s.start(t, s.ablyConfig(sim))
	settings := realtime.Settings{Mode: realtime.ModeAbly, Key: ablyKey, URL: sim.URL() + "/sse", TTL: time.Hour}
	tok, err := settings.Issue(realtime.Grant{UserID: "userA"}, time.Now().Add(2*time.Hour), time.Now())
	if err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get(realtime.SubscribeURL(tok.URL, "session:userB", tok.Token, ""))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e, _ := realtime.ReadError(b); resp.StatusCode != 401 || e.Code != realtime.CodeNotPermitted {
		t.Errorf("user B's channel: %d %s", resp.StatusCode, b)
	}

	resp, err = http.Get(realtime.SubscribeURL(tok.URL, tok.Channel, tok.Token, ""))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("own channel: %v %v", err, resp)
	}
	defer resp.Body.Close()
	s.sessionFor(t, "userB")
	s.sessionFor(t, "userA")
	rd := realtime.NewReader(resp.Body)
	ev, err := rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseReceived(ev)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "session-started" || got.Channel != "session:userA" {
		t.Errorf("first event = %+v", got)
	}
}

// Relays side by side share the durable consumer: each event is published
// by one of them, once.
func TestAblyRelaysSideBySide(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	a := s.start(t, s.ablyConfig(sim))
	b := s.start(t, s.ablyConfig(sim))
	for i := range 8 {
		u := fmt.Sprintf("u%d", i)
		s.sessionFor(t, u)
		for j := range 4 {
			s.addImage(t, u, fmt.Sprintf("img%d", j))
		}
	}
	// Each event on its user's channel and its session's: 80 messages.
	testenv.Eventually(t, 10*time.Second, "every event published", func() bool { return len(sim.Messages("")) == 80 })
	dupes := 0
	for _, rq := range sim.Requests() {
		dupes += rq.Dupes
	}
	seen := map[string]int{}
	for _, m := range userMessages(sim) {
		seen[m.Channel+" "+m.Name+" "+key(t, m)]++
	}
	if len(seen) != 40 || dupes != 0 {
		t.Errorf("%d distinct events, %d duplicates; want 40 and 0", len(seen), dupes)
	}
	// Counted once acked, just after Ably answered.
	testenv.Eventually(t, 10*time.Second, "40 relayed in all", func() bool {
		return a.metric(t, "relay_events_relayed_total")+b.metric(t, "relay_events_relayed_total") == 40
	})
}

// An event Ably refuses for good (a 400) is not retried for ever nor lost:
// it is kept as a dead letter, and the events after it go on.
func TestAblyRefusedEventIsDeadLettered(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	sim.Inject(ablysim.Fault{Status: 400, Code: 40000})
	s.start(t, s.ablyConfig(sim))
	s.sessionFor(t, "u1")
	s.addImage(t, "u1", "a")
	testenv.Eventually(t, 10*time.Second, "the second event published", func() bool { return len(userMessages(sim)) == 1 })
	stored := s.storedEvents(t)
	var letters []deadletter.Letter
	testenv.Eventually(t, 10*time.Second, "a dead letter", func() bool {
		var err error
		letters, err = deadletter.New(s.js, s.names).List(context.Background())
		return err == nil && len(letters) == 1
	})
	got := []string{letters[0].Consumer, letters[0].EventID, userMessages(sim)[0].ID}
	want := []string{events.ConsumerRelay, stored[0].ID, stored[1].ID}
	if d := cmp.Diff(want, got); d != "" || !strings.Contains(letters[0].Reason, "refused by ably") {
		t.Errorf("[consumer, dead event, published event] (-want +got):\n%s\nreason %q", d, letters[0].Reason)
	}
}

// A standby relay that stops must not take the pin from the relay that
// holds the events: with a third relay standing by, the pin would move to
// it, and it publishes nothing (its gate stays shut) until the first has
// published every event it holds, so one channel's Ably outage would hold
// up every other channel until it ends.
func TestAblyStandbyStopKeepsThePin(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	cfg := s.ablyConfig(sim)
	relays := []*running{s.start(t, cfg), s.start(t, cfg), s.start(t, cfg)}
	s.sessionFor(t, "u1")
	s.sessionFor(t, "u2")
	testenv.Eventually(t, 10*time.Second, "sessions published", func() bool { return len(userMessages(sim)) == 2 })
	pinned := -1
	testenv.Eventually(t, 10*time.Second, "the pinned relay counted its events", func() bool {
		pinned = slices.IndexFunc(relays, func(r *running) bool { return r.metric(t, "relay_events_relayed_total") > 0 })
		return pinned >= 0
	})

	// Longer than every wait below put together: u2's events must not
	// wait for its end.
	until := time.Now().Add(15 * cfg.Common.AckWait)
	sim.Refuse(ablysim.Outage{Channel: "session:u1", Until: until, Status: 401, Code: realtime.CodeNotPermitted})
	s.addImage(t, "u1", "held")
	s.addImage(t, "u2", "before")
	testenv.Eventually(t, 10*time.Second, "u2's event published during u1's outage", func() bool {
		return len(sim.Messages("session:u2")) == 2
	})
	// Stop both standbys, one after the other: each stop must leave the
	// pin where it is.
	want := 2
	for i := range relays {
		if i == pinned {
			continue
		}
		relays[i].stop()
		s.addImage(t, "u2", fmt.Sprintf("after-stop-%d", i))
		want++
		testenv.Eventually(t, 5*cfg.Common.AckWait, "u2's event published after a standby stopped", func() bool {
			return len(sim.Messages("session:u2")) == want
		})
	}
	if time.Now().After(until) {
		t.Fatalf("u2's events waited for u1's outage to end")
	}
}
