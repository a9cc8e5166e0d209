package committer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// errLocked means another committer is working on the session's commit.
var errLocked = errors.New("another committer holds this session's commit")

// Lock scripts compare the holder's token so a committer that lost its lock
// (paused past the TTL) never extends or frees the next holder's.
var (
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
)

// lease is a held commit lock, renewed in the background. Its context ends
// when the lock is lost, so work under it stops.
type lease struct {
	rdb    redis.Cmdable
	key    string
	token  string
	cancel context.CancelFunc
	done   chan struct{}
}

// acquire takes the lock at key for ttl, or returns errLocked. The returned
// context is cancelled if renewal finds the lock gone.
func acquire(ctx context.Context, rdb redis.Cmdable, key string, ttl time.Duration, log *slog.Logger) (*lease, context.Context, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ok, err := rdb.SetNX(ctx, key, token, ttl).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("commit lock: %w", err)
	}
	if !ok {
		return nil, nil, errLocked
	}
	wctx, cancel := context.WithCancel(ctx)
	l := &lease{rdb: rdb, key: key, token: token, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				n, err := renewScript.Run(wctx, rdb, []string{key}, token, ttl.Milliseconds()).Int()
				if err != nil {
					if wctx.Err() == nil {
						log.Warn("commit.lock_renew", "err", err)
					}
					continue // a blip: the lock outlives a few failed renewals
				}
				if n == 0 {
					log.Error("commit.lock_lost")
					cancel()
					return
				}
			}
		}
	}()
	return l, wctx, nil
}

// release stops renewing and frees the lock if it is still ours.
func (l *lease) release(ctx context.Context) {
	l.cancel()
	<-l.done
	_ = releaseScript.Run(context.WithoutCancel(ctx), l.rdb, []string{l.key}, l.token).Err()
}
