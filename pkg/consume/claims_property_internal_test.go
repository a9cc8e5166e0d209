package consume

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// claimServer is a model, in virtual time, of one explicit-ack JetStream
// consumer as Claims meets it: each pending stream sequence has a deadline
// that InProgress (through any of its deliveries) moves to now+ackWait; once
// it passes, the sequence is delivered again. While NATS is down, renewals
// and acks are lost. It records every breach of Claims' promises.
type claimServer struct {
	mu      sync.Mutex
	ackWait time.Duration
	down    bool
	lastOut time.Time // when the last outage ended (zero: none yet)
	pending map[uint64]*seqState
	settled map[uint64]int // acks applied to a pending sequence
	held    map[uint64]*claimMsg
	renewed []renewal // the renewals of the current instant
	broken  []string
	// What the schedule exercised: redeliveries of a held sequence (its
	// claim lapsed in an outage) and of a released, unsettled one.
	lapsedHeld, lapsedReleased int
}

type seqState struct {
	deadline time.Time
	n        int // deliveries so far
}

type renewal struct {
	at  time.Time
	seq uint64
}

// claimMsg is one delivery of seq. gone is when it stopped being the one
// Claims should renew (superseded by a redelivery, or released).
type claimMsg struct {
	jetstream.Msg // nil: any method not below panics
	s             *claimServer
	seq           uint64
	n             int
	gone          time.Time
}

func (m *claimMsg) InProgress() error {
	s := m.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !m.gone.IsZero() && now.After(m.gone) {
		s.breakf("%v: seq %d delivery %d renewed after it was released or superseded at %v", now, m.seq, m.n, m.gone)
	}
	if k := len(s.renewed); k > 0 && s.renewed[k-1].at.Equal(now) && s.renewed[k-1].seq >= m.seq {
		s.breakf("%v: seq %d renewed after seq %d in the same round: not in stream order", now, m.seq, s.renewed[k-1].seq)
	}
	if k := len(s.renewed); k > 0 && !s.renewed[k-1].at.Equal(now) {
		s.renewed = s.renewed[:0]
	}
	s.renewed = append(s.renewed, renewal{now, m.seq})
	if s.down {
		return fmt.Errorf("nats down")
	}
	if p := s.pending[m.seq]; p != nil {
		p.deadline = now.Add(s.ackWait)
	}
	return nil
}

func (m *claimMsg) Ack() error {
	s := m.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return fmt.Errorf("nats down")
	}
	if s.pending[m.seq] != nil {
		delete(s.pending, m.seq)
		s.settled[m.seq]++
	}
	return nil // an ack of a settled sequence is ignored, as JetStream does
}

func (s *claimServer) breakf(format string, args ...any) {
	s.broken = append(s.broken, fmt.Sprintf(format, args...))
}

// deliver hands seq's next delivery to c, as the consumer would on
// receiving it: Claims holds it. s.mu is held.
func (s *claimServer) deliver(c *Claims, seq uint64) {
	p := s.pending[seq]
	p.n++
	p.deadline = time.Now().Add(s.ackWait)
	m := &claimMsg{s: s, seq: seq, n: p.n}
	if old := s.held[seq]; old != nil {
		old.gone = time.Now()
	}
	s.held[seq] = m
	c.Hold(seq, m)
}

// TestClaimsProperty: under seeded random schedules of first deliveries,
// NATS outages, redeliveries of lapsed claims, and releases settled after a
// random pause (so a redelivery may come between release and ack), Claims
// keeps its promises: Release returns the latest delivery of what is held;
// a held message's claim never lapses while NATS is up; renewals of a
// round go in stream order and none reaches a delivery after it was
// released or superseded; in the end every sequence is settled exactly
// once and nothing is held. A failure names its seed: rerun it with
// -run 'TestClaimsProperty/seed=N$'.
func TestClaimsProperty(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8, uint64(time.Now().UnixNano())}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { claimsSchedule(t, seed) })
		})
	}
}

func claimsSchedule(t *testing.T, seed uint64) {
	const ackWait = 8 * time.Second
	const seqs = 60
	s := &claimServer{ackWait: ackWait, pending: map[uint64]*seqState{}, settled: map[uint64]int{}, held: map[uint64]*claimMsg{}}
	c := KeepClaims(ackWait / 4)
	var wg sync.WaitGroup
	done := make(chan struct{})

	// JetStream: each sequence first delivered in order, at random
	// intervals; a lapsed claim delivered again.
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(seed, 1))
		for seq := uint64(1); seq <= seqs; seq++ {
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			s.mu.Lock()
			s.pending[seq] = &seqState{}
			s.deliver(c, seq)
			s.mu.Unlock()
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			s.mu.Lock()
			now := time.Now()
			for _, seq := range slices.Sorted(maps.Keys(s.pending)) {
				p := s.pending[seq]
				if !now.After(p.deadline) {
					continue
				}
				if m := s.held[seq]; m != nil && m.gone.IsZero() {
					s.lapsedHeld++
					if !s.down && now.Sub(s.lastOut) > ackWait {
						s.breakf("%v: seq %d (delivery %d) held, NATS up for over an AckWait, yet its claim lapsed", now, seq, p.n)
					}
				} else {
					s.lapsedReleased++
				}
				s.deliver(c, seq)
			}
			s.mu.Unlock()
		}
	})
	// NATS outages, some longer than the AckWait.
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(seed, 2))
		for range 4 {
			select {
			case <-done:
				return
			case <-time.After(time.Duration(5+rng.IntN(20)) * time.Second):
			}
			s.mu.Lock()
			s.down = true
			s.mu.Unlock()
			time.Sleep(time.Duration(rng.IntN(int(2 * ackWait))))
			s.mu.Lock()
			s.down, s.lastOut = false, time.Now()
			s.mu.Unlock()
		}
	})
	// The consumer: releases what it holds, in no order, and settles the
	// delivery Release returns after a pause; until every sequence is
	// settled and nothing is held.
	rng := rand.New(rand.NewPCG(seed, 3))
	end := time.Now().Add(time.Hour) // virtual: the schedule takes minutes
	for {
		if time.Now().After(end) {
			s.mu.Lock()
			s.breakf("not every sequence settled within an hour: %d of %d", len(s.settled), seqs)
			s.mu.Unlock()
			break
		}
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
		s.mu.Lock()
		var mine []uint64
		for seq, m := range s.held {
			if m.gone.IsZero() {
				mine = append(mine, seq)
			}
		}
		slices.Sort(mine)
		finished := len(s.settled) == seqs && len(mine) == 0
		s.mu.Unlock()
		if finished {
			break
		}
		if len(mine) == 0 {
			continue
		}
		seq := mine[rng.IntN(len(mine))]
		s.mu.Lock()
		want := s.held[seq]
		got := c.Release(seq)
		if got != jetstream.Msg(want) {
			s.breakf("%v: Release(%d) returned %v, want its latest delivery %d", time.Now(), seq, got, want.n)
		}
		want.gone = time.Now()
		s.mu.Unlock()
		if got == nil {
			continue
		}
		time.Sleep(time.Duration(rng.IntN(2)) * ackWait / 8)
		_ = got.Ack() // while NATS is down it is lost: the sequence comes back
	}
	close(done)
	wg.Wait()
	if left := c.ReleaseAll(); len(left) != 0 {
		s.breakf("%d messages still held at the end", len(left))
	}
	c.Stop()
	s.mu.Lock()
	stopped := len(s.broken)
	for _, m := range s.held {
		m.gone = time.Now()
	}
	s.mu.Unlock()
	time.Sleep(time.Hour)
	synctest.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.broken) != stopped {
		t.Errorf("seed %d: renewed after Stop: %v", seed, s.broken[stopped:])
	}
	for seq := uint64(1); seq <= seqs; seq++ {
		if s.settled[seq] != 1 {
			s.breakf("seq %d settled %d times, want once", seq, s.settled[seq])
		}
	}
	t.Logf("seed %d: redelivered %d times while held, %d times after a release", seed, s.lapsedHeld, s.lapsedReleased)
	for _, b := range s.broken {
		t.Errorf("seed %d: %s", seed, b)
	}
}
