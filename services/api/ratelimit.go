package api

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// rateLimiter counts attempts per key in fixed windows kept in Redis, so
// every API instance shares one count. A window's key expires with it.
type rateLimiter struct {
	rdb    redis.Cmdable
	prefix string
	limit  int
	window time.Duration
	now    func() time.Time
}

// countScript increments a window's count and sets its expiry on the first
// attempt, in one step so no count outlives its window.
var countScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
`)

// allow counts one attempt for key and reports whether it is within the
// limit; when not, retry says how long until the window ends.
func (l *rateLimiter) allow(ctx context.Context, key string) (ok bool, retry time.Duration, err error) {
	now := l.now()
	win := now.UnixMilli() / l.window.Milliseconds()
	k := l.prefix + key + ":" + strconv.FormatInt(win, 10)
	n, err := countScript.Run(ctx, l.rdb, []string{k}, l.window.Milliseconds()).Int()
	if err != nil {
		return false, 0, fmt.Errorf("rate limit: %w", err)
	}
	if n <= l.limit {
		return true, 0, nil
	}
	end := time.UnixMilli((win + 1) * l.window.Milliseconds())
	return false, end.Sub(now), nil
}
