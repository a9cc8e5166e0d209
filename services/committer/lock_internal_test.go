package committer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"
)

// fakeLockStore models the commit lock's Redis key in the bubble's virtual
// time: an owner token and an expiry, changed only by what acquire and
// release send (SET NX, and the renew and release scripts by their hashes).
// Any other command panics (the embedded Cmdable is nil).
type fakeLockStore struct {
	redis.Cmdable

	mu       sync.Mutex
	token    string
	expires  time.Time
	calls    int // renew script runs, whatever they returned
	renewErr func(call int) error
}

func (f *fakeLockStore) heldLocked(now time.Time) bool {
	return f.token != "" && now.Before(f.expires)
}

// holder is the lock's owner now, "" if the key is absent or expired.
func (f *fakeLockStore) holder() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.heldLocked(time.Now()) {
		return ""
	}
	return f.token
}

func (f *fakeLockStore) takeOver(token string, ttl time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token, f.expires = token, time.Now().Add(ttl)
}

func (f *fakeLockStore) renewCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeLockStore) SetNX(_ context.Context, _ string, value any, ttl time.Duration) *redis.BoolCmd {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.heldLocked(now) {
		return redis.NewBoolResult(false, nil)
	}
	f.token, f.expires = value.(string), now.Add(ttl)
	return redis.NewBoolResult(true, nil)
}

func (f *fakeLockStore) EvalSha(ctx context.Context, sha string, _ []string, args ...any) *redis.Cmd {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	ours := f.heldLocked(now) && f.token == args[0]
	switch sha {
	case renewScript.Hash():
		f.calls++
		if err := ctx.Err(); err != nil {
			return redis.NewCmdResult(nil, err)
		}
		if f.renewErr != nil {
			if err := f.renewErr(f.calls); err != nil {
				return redis.NewCmdResult(nil, err)
			}
		}
		if !ours {
			return redis.NewCmdResult(int64(0), nil)
		}
		f.expires = now.Add(time.Duration(args[1].(int64)) * time.Millisecond)
		return redis.NewCmdResult(int64(1), nil)
	case releaseScript.Hash():
		if !ours {
			return redis.NewCmdResult(int64(0), nil)
		}
		f.token = ""
		return redis.NewCmdResult(int64(1), nil)
	}
	panic(fmt.Sprintf("unexpected script %s", sha))
}

var discard = slog.New(slog.DiscardHandler)

// TestLeaseRenewedBeforeExpiry: a lease held for many TTLs stays ours in
// the store the whole time (each renewal lands before the key expires) and
// its work context is never cancelled.
func TestLeaseRenewedBeforeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		f := &fakeLockStore{}
		start := time.Now()
		l, wctx, err := acquire(context.Background(), f, "lock", ttl, discard)
		if err != nil {
			t.Fatal(err)
		}
		mine := f.holder()
		// Look between the renewals' ticks, never on one.
		for range 40 {
			time.Sleep(ttl/2 + time.Second)
			synctest.Wait()
			if got := f.holder(); got != mine || mine == "" {
				t.Fatalf("at %v the lock's holder is %q, want ours", time.Since(start), got)
			}
			if wctx.Err() != nil {
				t.Fatal("the work context was cancelled while the lock was held")
			}
		}
		if n := f.renewCalls(); n < 40 {
			t.Errorf("%d renewals over 40 half-TTLs", n)
		}
		l.release(context.Background())
		if got := f.holder(); got != "" {
			t.Errorf("after release the lock is held by %q", got)
		}
	})
}

// TestLeaseOutlivesFailedRenewal: a renewal that fails (a Redis blip) does
// not give up the lease; the next one keeps the lock before it expires.
func TestLeaseOutlivesFailedRenewal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		f := &fakeLockStore{renewErr: func(call int) error {
			if call == 1 {
				return errors.New("i/o timeout")
			}
			return nil
		}}
		l, wctx, err := acquire(context.Background(), f, "lock", ttl, discard)
		if err != nil {
			t.Fatal(err)
		}
		mine := f.holder()
		time.Sleep(3 * ttl)
		synctest.Wait()
		if wctx.Err() != nil {
			t.Fatal("a failed renewal cancelled the work")
		}
		if got := f.holder(); got != mine {
			t.Fatalf("after one failed renewal the lock's holder is %q, want ours", got)
		}
		if f.renewCalls() < 2 {
			t.Errorf("%d renewals, want the failed one and later ones", f.renewCalls())
		}
		l.release(context.Background())
	})
}

// TestLeaseStopsRenewingWhenWorkEnds: after release, or when the caller's
// context ends, no renewal is sent again.
func TestLeaseStopsRenewingWhenWorkEnds(t *testing.T) {
	for _, how := range []string{"release", "caller cancels"} {
		t.Run(how, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const ttl = 30 * time.Second
				f := &fakeLockStore{}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				l, wctx, err := acquire(ctx, f, "lock", ttl, discard)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(ttl + time.Second)
				if how == "release" {
					l.release(context.Background())
					if got := f.holder(); got != "" {
						t.Errorf("after release the lock is held by %q", got)
					}
				} else {
					cancel()
				}
				synctest.Wait()
				select {
				case <-l.done:
				default:
					t.Fatal("the renewal loop is still running after the work ended")
				}
				if wctx.Err() == nil {
					t.Error("the work context outlived the work")
				}
				before := f.renewCalls()
				time.Sleep(10 * ttl)
				synctest.Wait()
				if n := f.renewCalls() - before; n != 0 {
					t.Errorf("%d renewals after the work ended", n)
				}
			})
		})
	}
}

// TestLeaseLost: when a renewal finds the lock held by another committer
// (ours expired and was taken), the work context is cancelled at that
// renewal, and release leaves the other holder's lock alone.
func TestLeaseLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		f := &fakeLockStore{}
		start := time.Now()
		l, wctx, err := acquire(context.Background(), f, "lock", ttl, discard)
		if err != nil {
			t.Fatal(err)
		}
		var lostAt time.Duration
		context.AfterFunc(wctx, func() { lostAt = time.Since(start) })
		time.Sleep(ttl/3 + time.Second) // past the first renewal
		synctest.Wait()
		if wctx.Err() != nil {
			t.Fatal("lost before anyone else took the lock")
		}
		f.takeOver("other", time.Hour)
		takenAt := time.Since(start)
		time.Sleep(ttl)
		synctest.Wait()
		if wctx.Err() == nil {
			t.Fatal("the work goes on after the lock passed to another committer")
		}
		// Found out by the next renewal, a third of the TTL at most.
		if lostAt <= takenAt || lostAt > takenAt+ttl/3 {
			t.Errorf("taken over at %v, work cancelled at %v; want within %v", takenAt, lostAt, ttl/3)
		}
		l.release(context.Background())
		if got := f.holder(); got != "other" {
			t.Errorf("after release the lock's holder is %q, want the other committer's", got)
		}
	})
}
