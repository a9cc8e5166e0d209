package api

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// fakeSweepStore answers DueForSweep from due, one answer a call (then
// nothing due), and records the calls the sweeper makes.
type fakeSweepStore struct {
	mu      sync.Mutex
	start   time.Time
	due     []func() ([]session.Ended, bool, error)
	sweeps  []time.Duration // when DueForSweep was called
	holds   []time.Duration
	swept   []string
	ends    int
	deleted [][]string
}

func (f *fakeSweepStore) DueForSweep(_ context.Context, _ string, hold time.Duration, _ int) ([]session.Ended, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweeps = append(f.sweeps, time.Since(f.start))
	f.holds = append(f.holds, hold)
	if len(f.due) == 0 {
		return nil, true, nil
	}
	next := f.due[0]
	f.due = f.due[1:]
	return next()
}

func (f *fakeSweepStore) Swept(_ context.Context, e session.Ended) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.swept = append(f.swept, e.SessionID)
	return nil
}

func (f *fakeSweepStore) EndSweep(context.Context, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ends++
	return nil
}

func (f *fakeSweepStore) Delete(_ context.Context, keys ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, keys)
	return nil
}

// TestSweeperRunsEveryInterval: the sweeper sweeps once every interval
// (virtual time), holding the sweep lock for twice that (30 s at least);
// a failed sweep is tried again at the next interval; an ended session's
// original and derived objects are deleted before it is forgotten; and
// once the context ends Run returns and sweeps no more.
func TestSweeperRunsEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeSweepStore{start: time.Now(), due: []func() ([]session.Ended, bool, error){
			func() ([]session.Ended, bool, error) { return nil, true, errors.New("redis down") },
			func() ([]session.Ended, bool, error) {
				return []session.Ended{{UserID: "u1", SessionID: "s1", Keys: []string{"temp/u1/a.jpg"}}}, true, nil
			},
		}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		s := sweeper{store: f, objects: f, every: time.Minute, log: slog.New(slog.DiscardHandler)}
		go func() { done <- s.Run(ctx) }()
		time.Sleep(3*time.Minute + 30*time.Second)
		synctest.Wait()
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		default:
			t.Fatal("Run goes on after its context ended")
		}
		time.Sleep(time.Hour)
		synctest.Wait()

		f.mu.Lock()
		defer f.mu.Unlock()
		if d := cmp.Diff([]time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute}, f.sweeps); d != "" {
			t.Errorf("sweeps at (-want +got):\n%s", d)
		}
		for _, h := range f.holds {
			if h != 2*time.Minute {
				t.Errorf("sweep lock held for %v, want 2m", h)
			}
		}
		want := [][]string{{"temp/u1/a.jpg", "temp/u1/a.preview.jpg", "temp/u1/a.viewer.jpg", "temp/u1/a.clean.jpg"}}
		if d := cmp.Diff(want, f.deleted); d != "" {
			t.Errorf("deleted (-want +got):\n%s", d)
		}
		if d := cmp.Diff([]string{"s1"}, f.swept); d != "" {
			t.Errorf("swept (-want +got):\n%s", d)
		}
		if f.ends != 3 {
			t.Errorf("the sweep lock was released %d times, want after each of the 3 sweeps", f.ends)
		}
	})
}
