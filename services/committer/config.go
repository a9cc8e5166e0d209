// Package committer writes every photo of a session to Medtech's ALEX FHIR
// R4 API as one Media resource each, exactly once, in the session's
// patient, with its own bytes. It takes commit.requested from a durable
// JetStream pull consumer (several committers may share it; a lock keeps
// one per session at work).
//
// Each photo's state is its ledger entry, kept on the session until the
// session ends (pkg/session: pending, sending, in_record, refused, unknown,
// needs_checking, conflict). A write is recorded as sending before it
// leaves; its answer makes the photo in_record (201 and an id), refused
// (ALEX stored nothing), or unknown (timeout, reset, 5xx, a 2xx without an
// id), and an unknown photo is looked up before anything is sent again. A
// Media found is claimed only when its identifier, patient and SHA-1 are
// this photo's (decide.go). ALEX offers no delete, so a commit completes
// only when every photo is in the record, and a failed or stopped one
// keeps every photo's state: the next commit sends only the rest.
//
// One attempt writes each photo once. Transient faults end the attempt
// and the commit waits (the session says why and until when) by going
// back to JetStream with a delay, until COMMIT_RETRY_BUDGET from the GP's
// request runs out; a crash is JetStream redelivering after NATS_ACK_WAIT. Session
// changes go through the session store's outbox, which this service also
// publishes.
package committer

import (
	"cmp"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/config"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// Config is everything the committer needs. Build it with ConfigFromEnv.
type Config struct {
	Common config.Common

	// ALEX is where and who: ALEX_API_URL (FHIR base), ALEX_OAUTH_TOKEN_URL,
	// ALEX_CLIENT_ID, ALEX_CLIENT_SECRET, ALEX_SCOPE, ALEX_FACILITY_ID
	// (mt-facilityid), ALEX_APP_ID (mt-appid), ALEX_REQUEST_TIMEOUT (2m).
	ALEX fhir.Config
	// IdentifierSystem is the Media.identifier system whose value is the
	// image id (ALEX_IDENTIFIER_SYSTEM, default
	// https://clinicalimages.nz/ns/image-id).
	IdentifierSystem string
	// Capabilities is what the server offers beyond plain create
	// (ALEX_CAPABILITIES: conditional-create,delete,entered-in-error,search).
	Capabilities fhir.Capabilities
	// Parallelism is how many photos of one commit upload at once
	// (COMMIT_PARALLELISM, default 4).
	Parallelism int
	// Workers is how many commits this process runs at once
	// (COMMIT_WORKERS, default 2).
	Workers int
	// RetryBudget is how long a commit keeps trying through ALEX's
	// transient faults, from the GP's request, before it fails with
	// nothing lost (COMMIT_RETRY_BUDGET, default 10m).
	RetryBudget time.Duration
	// RetryInitial and RetryMax bound the wait between attempts: it
	// doubles from RetryInitial to RetryMax, with jitter, and is never
	// shorter than ALEX's Retry-After (COMMIT_RETRY_INITIAL, default 1s;
	// COMMIT_RETRY_MAX, default 30s).
	RetryInitial, RetryMax time.Duration
	// LockTTL is how long a commit lock outlives a dead committer
	// (COMMIT_LOCK_TTL, default 20s; renewed every third of it).
	LockTTL time.Duration
	// TempDir holds photos the committer cleans itself (TMPDIR).
	TempDir string
	// Recheck confirms a commit has moved on before its event is acked on
	// a read that says so (default session.DefaultRecheck).
	Recheck session.Recheck
	// SweepAfter is how long a commit may stay in_progress without a
	// commit.requested being handled before the sweep sends it again
	// (COMMIT_SWEEP_AFTER, default 15m); SweepEvery how often each
	// committer looks (COMMIT_SWEEP_EVERY, default 1m).
	SweepAfter, SweepEvery time.Duration

	wrapPeek func(session.PeekFunc) session.PeekFunc // tests: a stale replica

	// Logger is the service's logger (nil: JSON on stderr at LOG_LEVEL).
	Logger *slog.Logger
	// Registry receives the metrics (nil: a new one with Go and process
	// collectors).
	Registry *prometheus.Registry
}

// ConfigFromEnv reads the configuration, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	r := config.New(getenv)
	c := Config{
		Common:           r.ReadCommon(":9093"),
		ALEX:             fhir.ReadConfig(r, 2*time.Minute),
		IdentifierSystem: r.String("ALEX_IDENTIFIER_SYSTEM", fhir.DefaultImageIDNS),
		Parallelism:      r.Int("COMMIT_PARALLELISM", 4),
		Workers:          r.Int("COMMIT_WORKERS", 2),
		RetryBudget:      r.Duration("COMMIT_RETRY_BUDGET", 10*time.Minute),
		RetryInitial:     r.Duration("COMMIT_RETRY_INITIAL", time.Second),
		RetryMax:         r.Duration("COMMIT_RETRY_MAX", 30*time.Second),
		LockTTL:          r.Duration("COMMIT_LOCK_TTL", 20*time.Second),
		TempDir:          r.String("TMPDIR", ""),
		SweepAfter:       r.Duration("COMMIT_SWEEP_AFTER", 15*time.Minute),
		SweepEvery:       r.Duration("COMMIT_SWEEP_EVERY", time.Minute),
	}
	caps, err := fhir.ParseCapabilities(r.String("ALEX_CAPABILITIES", ""))
	if err != nil {
		r.Fail("ALEX_CAPABILITIES: %v", err)
	}
	c.Capabilities = caps
	if c.Parallelism < 1 || c.Parallelism > 32 {
		r.Fail("COMMIT_PARALLELISM: %d is not between 1 and 32", c.Parallelism)
	}
	if c.Workers < 1 {
		r.Fail("COMMIT_WORKERS: %d is not at least 1", c.Workers)
	}
	if c.SweepAfter < time.Minute || c.SweepEvery <= 0 {
		r.Fail("COMMIT_SWEEP_AFTER must be at least 1m and COMMIT_SWEEP_EVERY positive")
	}
	if c.LockTTL < 3*time.Second {
		r.Fail("COMMIT_LOCK_TTL: %s is shorter than 3s", c.LockTTL)
	}
	if c.RetryBudget < time.Second {
		r.Fail("COMMIT_RETRY_BUDGET: %s is shorter than 1s", c.RetryBudget)
	}
	if c.RetryInitial <= 0 || c.RetryMax < c.RetryInitial {
		r.Fail("COMMIT_RETRY_INITIAL %s and COMMIT_RETRY_MAX %s: want 0 < initial <= max", c.RetryInitial, c.RetryMax)
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Consumer is the committer's JetStream consumer. A commit of 50 photos
// takes a while: the worker sends InProgress to hold its claim, and
// AckWait (NATS_ACK_WAIT, default 30s) is how long a crashed worker's claim
// lasts. A commit ends when its retry budget runs out, not after a number
// of deliveries; 64 commits at most are claimed at once.
func (c Config) Consumer() events.Consumer {
	return events.Consumer{Name: events.ConsumerCommitter, Type: events.CommitRequested,
		AckWait: cmp.Or(c.Common.AckWait, 30*time.Second), MaxDeliver: -1, MaxAckPending: 64}
}

// withDefaults fills what a Config built by hand (as tests do) leaves zero
// with the defaults ConfigFromEnv documents.
func (c Config) withDefaults() Config {
	if c.Parallelism <= 0 {
		c.Parallelism = 4
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.RetryBudget <= 0 {
		c.RetryBudget = 10 * time.Minute
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = time.Second
	}
	if c.RetryMax < c.RetryInitial {
		c.RetryMax = max(30*time.Second, c.RetryInitial)
	}
	if c.ALEX.Timeout <= 0 {
		c.ALEX.Timeout = 2 * time.Minute
	}
	if c.LockTTL <= 0 {
		c.LockTTL = 20 * time.Second
	}
	if c.IdentifierSystem == "" {
		c.IdentifierSystem = fhir.DefaultImageIDNS
	}
	return c
}
