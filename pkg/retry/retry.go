// Package retry is the one way this project waits between attempts: an
// exponential backoff from cenkalti/backoff/v4 that never gives up by
// itself (the caller's context decides), the same schedule as a pure
// function of an attempt number (for NakWithDelay, where the count comes
// from JetStream), and a sleep that ends with its context.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Backoff starts at initial and doubles, with the library's ±50 % jitter,
// up to max; it has no elapsed-time limit. Call Reset after a success.
func Backoff(initial, max time.Duration) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMaxElapsedTime(0),
		backoff.WithMultiplier(2),
	)
}

// Delay is the n-th delay (n from 1) of Backoff(initial, max) without
// jitter: initial, 2×initial, 4×initial, ... at most max.
func Delay(n uint64, initial, max time.Duration) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMaxElapsedTime(0),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0),
	)
	d := b.NextBackOff()
	for i := uint64(1); i < n && d < max; i++ {
		d = b.NextBackOff()
	}
	return d
}

// Sleep waits d, or until ctx is done and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
