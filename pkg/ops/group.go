package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stage orders a Group's shutdown: every part of one stage has returned
// before the next stage is told to stop.
type Stage int

// The stages, in the order they stop. This is the shutdown order every
// service follows.
const (
	// StageWork takes work: HTTP servers (Shutdown, then in-flight requests
	// get the grace period) and consumers (stop fetching, finish what is in
	// flight within the grace period, hand the rest back to JetStream).
	StageWork Stage = iota
	// StageFlush moves what the work wrote: the outbox publishers publish
	// what is left (bounded) and stop.
	StageFlush
	// StageOps serves /healthz, /readyz and /metrics until everything else
	// has stopped (readiness says "stopping" from the start of shutdown).
	StageOps
	numStages
)

// DefaultGrace is how long in-flight work may take once a service is told
// to stop (SHUTDOWN_GRACE).
const DefaultGrace = 10 * time.Second

// Group supervises a service's parts, like an errgroup whose parts stop in
// stages. Go starts a part at once. A part that returns before it was told
// to stop, with or without an error, stops the whole group: a service
// whose outbox publisher or consumer died must not keep serving as if
// nothing happened (its supervisor restarts it). Wait blocks until the
// group stops (the caller's context ends, Stop, or a part returned), then
// stops the stages in order, runs the Finally steps in order (drain NATS
// and wait for it to close, close Redis), and returns every error.
type Group struct {
	log    *slog.Logger
	grace  time.Duration
	health *Health

	ctx    context.Context
	cancel context.CancelFunc

	stages [numStages]struct {
		ctx    context.Context
		cancel context.CancelFunc
		wg     sync.WaitGroup
	}

	mu      sync.Mutex
	errs    []error
	finally []finalStep
}

type finalStep struct {
	name string
	f    func(ctx context.Context) error
}

// NewGroup returns a group that stops when ctx ends. grace bounds in-flight
// work at shutdown (0: DefaultGrace); parts read it from Grace.
func NewGroup(ctx context.Context, log *slog.Logger, grace time.Duration) *Group {
	if grace <= 0 {
		grace = DefaultGrace
	}
	g := &Group{log: log, grace: grace, health: &Health{}}
	g.ctx, g.cancel = context.WithCancel(ctx)
	for i := range g.stages {
		// Values (trace, logger) pass on; cancellation is the group's.
		g.stages[i].ctx, g.stages[i].cancel = context.WithCancel(context.WithoutCancel(ctx))
	}
	return g
}

// Context is done once the group is stopping. Start-up steps (waiting for
// a dependency) take it, so a service told to stop while it waits stops.
func (g *Group) Context() context.Context { return g.ctx }

// Grace is how long a part may take to finish in-flight work once told to
// stop.
func (g *Group) Grace() time.Duration { return g.grace }

// Health is the group's readiness: "starting" until Ready, "stopping" once
// the group stops.
func (g *Group) Health() *Health { return g.health }

// Ready marks the service ready with its readiness checks.
func (g *Group) Ready(checks map[string]Check) { g.health.start(checks) }

// ServeOps serves /healthz, /readyz and /metrics on addr until every other
// stage has stopped; ready, if not nil, receives the bound address.
func (g *Group) ServeOps(addr string, reg *prometheus.Registry, ready chan<- string) {
	g.Go(StageOps, "ops", func(ctx context.Context) error {
		return Server{Addr: addr, Handler: Handler(reg, g.health), Ready: ready, Grace: g.grace}.Run(ctx)
	})
}

// Go starts part name in stage s. Its context is cancelled when the stage
// is told to stop; it must then return within the grace period.
func (g *Group) Go(s Stage, name string, part func(ctx context.Context) error) {
	st := &g.stages[s]
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		err := part(st.ctx)
		switch {
		case st.ctx.Err() == nil:
			if err == nil {
				err = errors.New("stopped by itself")
			}
			g.fail(fmt.Errorf("%s: %w", name, err))
		case err != nil:
			g.record(fmt.Errorf("%s: %w", name, err))
		}
	}()
}

// Finally adds a step run after every stage has stopped, in the order
// added, each with its own 10 s limit.
func (g *Group) Finally(name string, f func(ctx context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.finally = append(g.finally, finalStep{name, f})
}

// Stop stops the group because of err (nil: a plain stop) and waits.
// Start-up code returns g.Stop(err) when it cannot go on.
func (g *Group) Stop(err error) error {
	if err != nil && !(errors.Is(err, context.Canceled) && g.ctx.Err() != nil) {
		g.record(err)
	}
	g.cancel()
	return g.Wait()
}

// Wait blocks until the group stops, then shuts it down in order and
// returns what went wrong, joined. A stage that outlives twice the grace
// period is logged and left behind so the process can still exit.
func (g *Group) Wait() error {
	<-g.ctx.Done()
	g.health.stop()
	start := time.Now()
	g.log.Info("ops.stopping")
	for i := range g.stages {
		st := &g.stages[i]
		st.cancel()
		done := make(chan struct{})
		go func() { st.wg.Wait(); close(done) }()
		t := time.NewTimer(2*g.grace + 5*time.Second)
		select {
		case <-done:
		case <-t.C:
			g.record(fmt.Errorf("stage %d did not stop within %s", i, 2*g.grace+5*time.Second))
		}
		t.Stop()
	}
	g.mu.Lock()
	steps := g.finally
	g.finally = nil
	g.mu.Unlock()
	for _, s := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.f(ctx); err != nil {
			g.record(fmt.Errorf("%s: %w", s.name, err))
		}
		cancel()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.log.Info("ops.stopped", "ms", time.Since(start).Milliseconds(), "errors", len(g.errs))
	return errors.Join(g.errs...)
}

func (g *Group) fail(err error) {
	g.record(err)
	g.cancel()
}

func (g *Group) record(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.errs = append(g.errs, err)
}
