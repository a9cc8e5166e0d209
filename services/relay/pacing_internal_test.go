package relay

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"
)

// TestChannelLimiterPacing: a channel's publishes, sent as fast as its
// limiter lets them (virtual time), start with a burst of half Ably's limit
// at once, then keep to 75-85% of the limit, and Ably (modelled as
// ablysim does: a bucket of perSecond, refilled at perSecond a second)
// accepts every one with at least half the limit to spare, room for
// publishes a loaded machine delays and then sends bunched together.
func TestChannelLimiterPacing(t *testing.T) {
	const run = 20 * time.Second
	for _, perSecond := range []int{1, 2, 50} {
		t.Run(fmt.Sprintf("%d per second", perSecond), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lim := channelLimiter(perSecond)
				ctx, cancel := context.WithTimeout(context.Background(), run)
				defer cancel()
				start := time.Now()
				var at []time.Duration
				for lim.Wait(ctx) == nil {
					at = append(at, time.Since(start))
				}
				burst := max(1, perSecond/2)
				if len(at) < burst || at[burst-1] != 0 {
					t.Fatalf("%d/s: the first %d publishes were not sent at once: %v", perSecond, burst, at[:min(burst, len(at))])
				}
				rate := float64(len(at)-burst) / run.Seconds() / float64(perSecond)
				if rate < 0.75 || rate > 0.85 {
					t.Errorf("%d/s: after the burst, %.2f of the limit, want 0.75-0.85", perSecond, rate)
				}
				limit := float64(perSecond)
				tokens, last := limit, time.Duration(0)
				for i, a := range at {
					tokens = min(limit, tokens+limit*(a-last).Seconds())
					last = a
					tokens--
					if tokens < float64(perSecond/2)-1e-9 {
						t.Fatalf("%d/s: publish %d at %v leaves Ably %.2f to spare, want at least %d", perSecond, i, a, tokens, perSecond/2)
					}
				}
			})
		})
	}
}
