package consume

import (
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
)

// renewedMsg is a fakeMsg named name whose InProgress calls renewed.
type renewedMsg struct {
	*fakeMsg
	name    string
	renewed func() error
}

func (m *renewedMsg) InProgress() error { return m.renewed() }

// TestClaimsRenewInStreamOrderUntilReleased: every interval (virtual time)
// each held message is renewed once, in stream order whatever order they
// were held in, through its latest delivery; a released one is renewed no
// more, ReleaseAll returns the rest in stream order, and nothing is
// renewed once Stop returned.
func TestClaimsRenewInStreamOrderUntilReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const every = 10 * time.Second
		start := time.Now()
		var mu sync.Mutex
		var got []string
		msg := func(name string) jetstream.Msg {
			return &renewedMsg{fakeMsg: &fakeMsg{}, name: name, renewed: func() error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, fmt.Sprintf("%v %s", time.Since(start), name))
				return nil
			}}
		}
		c := KeepClaims(every)
		for _, seq := range []uint64{5, 2, 8, 1, 7, 3, 6, 4} {
			c.Hold(seq, msg(fmt.Sprint(seq)))
		}
		time.Sleep(every + every/2)
		if m := c.Release(1); m == nil {
			t.Error("Release(1) returned no message")
		}
		c.Release(5)
		c.Hold(3, msg("3 redelivered"))
		time.Sleep(every)
		held := c.ReleaseAll()
		c.Hold(9, msg("9"))
		c.Stop()
		time.Sleep(time.Hour)
		synctest.Wait()

		want := []string{
			"10s 1", "10s 2", "10s 3", "10s 4", "10s 5", "10s 6", "10s 7", "10s 8",
			"20s 2", "20s 3 redelivered", "20s 4", "20s 6", "20s 7", "20s 8",
		}
		mu.Lock()
		defer mu.Unlock()
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("renewals (-want +got):\n%s", d)
		}
		var names []string
		for _, m := range held {
			names = append(names, m.(*renewedMsg).name)
		}
		if d := cmp.Diff([]string{"2", "3 redelivered", "4", "6", "7", "8"}, names); d != "" {
			t.Errorf("ReleaseAll, the messages still held in stream order (-want +got):\n%s", d)
		}
	})
}
