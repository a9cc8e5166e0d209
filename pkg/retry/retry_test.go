package retry_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/clinicalimages/clinimg/pkg/retry"
)

func TestDelay(t *testing.T) {
	cases := []struct {
		n    uint64
		want time.Duration
	}{{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {7, time.Minute}, {1 << 40, time.Minute}}
	for _, c := range cases {
		if got := retry.Delay(c.n, time.Second, time.Minute); got != c.want {
			t.Errorf("Delay(%d) = %v, want %v", c.n, got, c.want)
		}
	}
}

// TestBackoffStaysWithinBounds: jittered delays grow but never pass max
// (plus its jitter), and never stop.
func TestBackoffStaysWithinBounds(t *testing.T) {
	b := retry.Backoff(100*time.Millisecond, 5*time.Second)
	for i := range 50 {
		d := b.NextBackOff()
		if d < 50*time.Millisecond || d > 7500*time.Millisecond {
			t.Fatalf("attempt %d: delay %v outside 50ms..7.5s", i, d)
		}
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := retry.Sleep(context.Background(), 3*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 3*time.Second {
			t.Errorf("slept %v, want 3s", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start = time.Now()
		if err := retry.Sleep(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err %v, want the context's", err)
		}
		if got := time.Since(start); got != time.Second {
			t.Errorf("a cancelled sleep took %v, want 1s", got)
		}
	})
}
