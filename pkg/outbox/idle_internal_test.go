package outbox

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"
)

// idleRedis is an empty outbox stream: a blocking read waits its Block (in
// virtual time) and finds nothing, as does every claim. It records when
// each claim and each read was made. Any other command panics.
type idleRedis struct {
	redis.Cmdable

	mu     sync.Mutex
	start  time.Time
	claims []time.Duration
	minIdl []time.Duration
	reads  []time.Duration // the Block of each read of new entries (0: none)
}

func (f *idleRedis) XGroupCreateMkStream(context.Context, string, string, string) *redis.StatusCmd {
	return redis.NewStatusResult("", errors.New("BUSYGROUP Consumer Group name already exists"))
}

func (f *idleRedis) XReadGroup(_ context.Context, a *redis.XReadGroupArgs) *redis.XStreamSliceCmd {
	f.mu.Lock()
	if a.Streams[1] == ">" {
		f.reads = append(f.reads, max(a.Block, 0))
	}
	spinning := len(f.reads) > 10000
	f.mu.Unlock()
	if spinning {
		time.Sleep(time.Hour) // a busy loop: let the test see it
	}
	if a.Block > 0 {
		time.Sleep(a.Block) // a blocked read does not see its context end
	}
	return redis.NewXStreamSliceCmdResult(nil, redis.Nil)
}

func (f *idleRedis) XAutoClaim(_ context.Context, a *redis.XAutoClaimArgs) *redis.XAutoClaimCmd {
	f.mu.Lock()
	f.claims = append(f.claims, time.Since(f.start))
	f.minIdl = append(f.minIdl, a.MinIdle)
	spinning := len(f.claims) > 10000
	f.mu.Unlock()
	if spinning {
		time.Sleep(time.Hour) // a busy loop: let the test see it
	}
	cmd := redis.NewXAutoClaimCmd(context.Background())
	cmd.SetVal(nil, "0-0")
	return cmd
}

// TestIdlePublisher: a publisher with nothing to publish costs one blocking
// read per Block and one claim per ClaimEvery (virtual time): it claims at
// once, then again no sooner than ClaimEvery and no later than a Block
// after it, with ClaimIdle; every read of new entries blocks for Block
// (never a busy loop); and once its context ends Run returns within a
// Block (the read in progress).
func TestIdlePublisher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const run = 5 * time.Minute
		opt := Options{Block: 5 * time.Second, ClaimIdle: 20 * time.Second, ClaimEvery: 30 * time.Second}.withDefaults()
		f := &idleRedis{start: time.Now()}
		p := &Publisher{rdb: f, stream: "outbox", consumer: "c1", log: slog.New(slog.DiscardHandler), opt: opt}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan time.Duration, 1)
		go func() {
			if err := p.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
			done <- time.Since(f.start)
		}()
		time.Sleep(run + time.Second)
		cancel()
		stopped := <-done

		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.claims) == 0 || f.claims[0] != 0 {
			t.Fatalf("%d claims, the first at %v; want the first at once", len(f.claims), f.claims[:min(1, len(f.claims))])
		}
		for i := 1; i < len(f.claims); i++ {
			if gap := f.claims[i] - f.claims[i-1]; gap < opt.ClaimEvery || gap > opt.ClaimEvery+opt.Block {
				t.Errorf("claim %d at %v came %v after the one before, want %v to %v", i, f.claims[i], gap, opt.ClaimEvery, opt.ClaimEvery+opt.Block)
				break
			}
		}
		if want := int(run / (opt.ClaimEvery + opt.Block)); len(f.claims) < want {
			t.Errorf("%d claims in %v, want at least %d", len(f.claims), run, want)
		}
		for _, m := range f.minIdl {
			if m != opt.ClaimIdle {
				t.Errorf("claimed entries idle for %v, want %v", m, opt.ClaimIdle)
				break
			}
		}
		blocking := 0
		for _, b := range f.reads {
			if b == opt.Block {
				blocking++
			}
		}
		if most := int(run/opt.Block) + 2; blocking < int(run/opt.Block)-len(f.claims) || blocking > most {
			t.Errorf("%d blocking reads in %v, want about one per %v", blocking, run, opt.Block)
		}
		// Non-blocking reads are the flush's at the stop (one of new entries).
		if n := len(f.reads) - blocking; n > 1 {
			t.Errorf("%d reads of new entries that did not block while idle", n)
		}
		if after := stopped - (run + time.Second); after > opt.Block {
			t.Errorf("Run returned %v after its context ended, want within %v", after, opt.Block)
		}
	})
}
