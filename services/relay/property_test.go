package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/ablysim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/deadletter"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

// ablyFaults are the ways Ably fails a publish that a retry can get past.
var ablyFaults = []ablysim.Fault{
	{Status: 500},
	{Status: 503},
	{Status: 504},
	{Delay: time.Hour},               // timeout, not taken
	{Accept: true, Delay: time.Hour}, // timeout after Ably took it
	{Accept: true, Status: 502},      // error after Ably took it
	{Status: 429, Code: realtime.CodeRateLimited},
}

// wantChannels is, for each channel, the stored events it must carry in
// stream order: the user's channel, and the session's for an event of one.
func wantChannels(t *testing.T, stored []events.Event) map[string][]published {
	t.Helper()
	out := map[string][]published{}
	for _, ev := range stored {
		bm, ok, err := toBrowser(ev)
		if err != nil || !ok {
			t.Fatalf("event %s: browser message %v %v", ev.ID, ok, err)
		}
		p := published{Name: bm.Name, ID: ev.ID}
		out[bm.Channel] = append(out[bm.Channel], p)
		if sc := bm.SessionChannel(); sc != "" {
			out[sc] = append(out[sc], p)
		}
	}
	return out
}

// checkPrefixes fails unless each channel carries so far a prefix of its
// events in stream order: nothing out of order, nothing twice, no gap. The
// stand-in is read before the stream, so every event it holds is stored.
func (s *stack) checkPrefixes(t *testing.T, sim *ablysim.Server, when string) {
	t.Helper()
	got := map[string][]published{}
	for _, m := range sim.Messages("") {
		got[m.Channel] = append(got[m.Channel], published{Name: m.Name, ID: m.ID})
	}
	want := wantChannels(t, s.storedEvents(t))
	for ch, g := range got {
		w := want[ch]
		if len(g) > len(w) || !slices.Equal(g, w[:len(g)]) {
			t.Errorf("%s: %s is not a prefix of its events in stream order (-want +got):\n%s", when, ch, cmp.Diff(w, g))
		}
	}
}

// TestAblyRandomFaultSchedule: the relay's promises under a seeded random
// schedule, round after round, of Ably faults (errors, timeouts before
// and after Ably took the message, rate refusals), channel outages longer
// than the AckWait, events of several users, and the pinned relay stopped
// and a new one started. After every round each channel carries a prefix
// of its events in stream order; in the end every event is on its
// channels once, in order, each publish under one event's own id, nothing
// pending on the consumer and nothing dead-lettered. RELAY_PROPERTY_SEED
// replays a schedule (its steps; their timing against real servers on a
// loaded machine varies); a failure names its seed. Planted mutations
// caught: the gate opening without counting, a redelivery queued at the
// end instead of in stream order.
func TestAblyRandomFaultSchedule(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("RELAY_PROPERTY_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with RELAY_PROPERTY_SEED=%d", seed)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0))
	s := newStack(t)
	sim := startSim(t, ablysim.Options{ChannelRate: 50})
	cfg := s.ablyConfig(sim)
	relays := []*running{s.start(t, cfg), s.start(t, cfg)}
	users := []string{"u1", "u2", "u3"}
	for _, u := range users {
		s.sessionFor(t, u)
	}
	images := 0
	for round := range 6 {
		for range rng.IntN(4) {
			sim.Inject(ablyFaults[rng.IntN(len(ablyFaults))])
		}
		if rng.IntN(2) == 0 {
			u := users[rng.IntN(len(users))]
			d := time.Duration(500+rng.IntN(3000)) * time.Millisecond // up to almost twice the AckWait
			sim.Refuse(ablysim.Outage{Channel: realtime.Channel(u), Until: time.Now().Add(d), Status: 401, Code: realtime.CodeNotPermitted})
		}
		for range 2 + rng.IntN(6) {
			images++
			s.addImage(t, users[rng.IntN(len(users))], fmt.Sprintf("img%d", images))
		}
		if rng.IntN(3) == 0 {
			// A stopped relay hands back what it holds and unpins (if it
			// was pinned); a new one stands by.
			i := rng.IntN(len(relays))
			relays[i].stop()
			relays[i] = s.start(t, cfg)
		}
		// A step of the schedule, not a wait for a condition: the next
		// round's faults and events come while this one is partly or
		// wholly played out.
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		s.checkPrefixes(t, sim, fmt.Sprintf("seed %d round %d", seed, round))
	}

	var stored []events.Event
	testenv.Eventually(t, 60*time.Second, "every event on its channels", func() bool {
		stored = s.storedEvents(t)
		n := 0
		for _, want := range wantChannels(t, stored) {
			n += len(want)
		}
		return len(sim.Messages("")) >= n
	})
	want := wantChannels(t, stored)
	for ch, w := range want {
		if d := cmp.Diff(w, gotPublished(sim, ch)); d != "" {
			t.Errorf("seed %d: %s (-want +got):\n%s", seed, ch, d)
		}
	}
	checkOneIDPerEvent(t, stored, sim.Requests())
	cons, err := s.js.Consumer(context.Background(), s.names.Stream, events.ConsumerRelay)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "every event acked", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	letters, err := deadletter.New(s.js, s.names).List(context.Background())
	if err != nil || len(letters) != 0 {
		t.Errorf("seed %d: dead letters %v (%v): a retryable fault gave an event up", seed, letters, err)
	}
}
