package outbox

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Promise 2 under attack. While photos are recorded, several publishers run
// at once and each dies again and again at a random step of a batch (after
// the read, after sending, after the acks, after the delete), killed with
// its NATS connection cut or stopped politely, and comes back under its own
// name or under a new one (leaving its entries for another to claim). When
// the dust settles every outbox entry is in the stream exactly once and
// nothing is left in the outbox, pending or not.
//
// OUTBOX_SEED=n replays one schedule.
func TestEveryEntryLandsOnceWhatever(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("OUTBOX_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seed %d (OUTBOX_SEED=%d replays it)", seed, seed)
	rdb, prefix := testenv.Redis(t)
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	for round := range 3 {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		names := testenv.Names()
		if _, err := events.Ensure(context.Background(), js, names, 1); err != nil {
			t.Fatal(err)
		}
		st := session.NewStore(rdb, session.Options{Prefix: fmt.Sprintf("%sr%d:", prefix, round), Names: names, MaxImages: 1000})
		want := crashRound(t, rng, rdb, srv, st)
		checkStream(t, js, names, want, seed)
	}
}

// crashRound records photos of three users while three actors run
// publishers that keep dying; then one healthy publisher finishes. It
// returns the number of entries the outbox received.
func crashRound(t *testing.T, rng *rand.Rand, rdb *redis.Client, srv *testenv.NATS, st *session.Store) int {
	const users, photos, actors, lives = 3, 30, 3, 5
	ctx := context.Background()
	var producers sync.WaitGroup
	for u := range users {
		user := fmt.Sprintf("u%d", u)
		if _, err := st.Start(ctx, session.StartParams{UserID: user, PatientID: "p", EncounterID: "e", Token: "t" + testenv.ID(), SessionID: "s" + user}); err != nil {
			t.Fatal(err)
		}
		producers.Add(1)
		go func() {
			defer producers.Done()
			for i := range photos {
				img := session.Image{ID: fmt.Sprintf("%s-%d", user, i), S3Key: fmt.Sprintf("temp/%s/%d.jpg", user, i), ContentType: "image/jpeg"}
				if _, _, err := st.AddImage(ctx, user, "", img); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}

	// Each actor's schedule is drawn up front so the seed fixes it.
	type life struct {
		name   string
		die    string // step to die at, or "" to be stopped after stopAt
		after  int    // die at this occurrence of the step
		cut    bool   // cut its NATS connection as it dies
		drop   string // from this step on, what it sends is lost (a partition before the kill)
		stopAt time.Duration
		batch  int
	}
	steps := []string{"read", "sent", "acked", "deleted"}
	plans := make([][]life, actors)
	for a := range actors {
		for l := range lives {
			lf := life{name: fmt.Sprintf("a%d", a), after: 1 + rng.IntN(3), batch: 1 + rng.IntN(16),
				stopAt: time.Duration(20+rng.IntN(200)) * time.Millisecond}
			if rng.IntN(2) == 0 {
				lf.name = fmt.Sprintf("a%d-life%d", a, l) // a new process: the old name's entries wait for a claim
			}
			if rng.IntN(4) > 0 {
				lf.die = steps[rng.IntN(len(steps))]
				lf.cut = rng.IntN(2) == 0
				if lf.cut && rng.IntN(2) == 0 {
					lf.drop = steps[rng.IntN(slices.Index(steps, lf.die)+1)]
				}
			}
			plans[a] = append(plans[a], lf)
		}
	}
	opt := func(batch int) Options {
		return Options{Batch: batch, Block: 50 * time.Millisecond, ClaimIdle: 300 * time.Millisecond, AckWait: time.Second}
	}
	var wg sync.WaitGroup
	for _, plan := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, lf := range plan {
				link := newLink(t, srv.URL)
				nc, err := nats.Connect(link.url, nats.NoReconnect())
				if err != nil {
					t.Error(err)
					return
				}
				log, _ := testenv.Logger(t)
				p, err := New(rdb, nc, st.Keys.Outbox(), lf.name, log, opt(lf.batch))
				if err != nil {
					t.Error(err)
					return
				}
				seen := 0
				p.step = func(step string) bool {
					if step == lf.drop {
						link.drop()
					}
					if step != lf.die {
						return true
					}
					if seen++; seen < lf.after {
						return true
					}
					if lf.cut {
						link.cut() // killed: what it sent and was still on its way is lost
					}
					return false
				}
				// A life that never reaches its step (nothing to read) ends
				// at its stop time, politely.
				lctx, cancel := context.WithTimeout(ctx, lf.stopAt)
				_ = p.Run(lctx)
				cancel()
				nc.Close()
				link.cut()
			}
		}()
	}
	producers.Wait()
	wg.Wait()

	// One healthy publisher finishes what the others left: its own name
	// is new, so everything pending elsewhere is reached by claim.
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	log, _ := testenv.Logger(t)
	p, err := New(rdb, nc, st.Keys.Outbox(), "survivor", log, opt(64))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(ctx, p)
	defer stop()
	testenv.Eventually(t, 30*time.Second, "an empty outbox, nothing pending", func() bool {
		n, _ := Depth(ctx, rdb, st.Keys.Outbox())
		pend, err := rdb.XPending(ctx, st.Keys.Outbox(), Group).Result()
		return n == 0 && err == nil && pend.Count == 0
	})
	return users * (1 + photos)
}

// checkStream reads every message of the round's stream: each event id once,
// want of them, and every photo's image.uploaded there once.
func checkStream(t *testing.T, js jetstream.JetStream, names events.Names, want int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	images := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("seed %d: message %d: %v", seed, seq, err)
		}
		ev, err := events.Decode(m.Data)
		if err != nil {
			t.Fatalf("seed %d: message %d: %v", seed, seq, err)
		}
		if h := m.Header.Get(jetstream.MsgIDHeader); h != ev.ID {
			t.Fatalf("seed %d: Nats-Msg-Id %q for event %q", seed, h, ev.ID)
		}
		ids[ev.ID]++
		if ev.Type == events.ImageUploaded {
			var d struct {
				Image struct{ ID string } `json:"image"`
			}
			if err := ev.DataAs(&d); err != nil {
				t.Fatal(err)
			}
			images[d.Image.ID]++
		}
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("seed %d: event %s in the stream %d times", seed, id, n)
		}
	}
	for id, n := range images {
		if n != 1 {
			t.Errorf("seed %d: photo %s uploaded %d times", seed, id, n)
		}
	}
	if len(ids) != want || info.State.Msgs != uint64(want) {
		t.Fatalf("seed %d: %d distinct events, %d messages in the stream, want %d", seed, len(ids), info.State.Msgs, want)
	}
}

// link is one process's network path to the NATS server: a TCP relay the
// test can partition (what the client sends is lost) or cut.
type link struct {
	url     string
	ln      net.Listener
	dropped atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func newLink(t *testing.T, server string) *link {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{url: "nats://" + ln.Addr().String(), ln: ln}
	t.Cleanup(l.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				return
			}
			l.mu.Lock()
			l.conns = append(l.conns, c, s)
			l.mu.Unlock()
			go func() { _, _ = io.Copy(s, l.filter(c)); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return l
}

// filter passes what the client sends until the link is partitioned.
func (l *link) filter(r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		if l.dropped.Load() {
			return 0, err
		}
		return n, err
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func (l *link) drop() { l.dropped.Store(true) }

func (l *link) cut() {
	l.dropped.Store(true)
	l.ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}
