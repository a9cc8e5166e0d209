package session

import (
	"context"
	"errors"
	"time"

	"github.com/clinicalimages/clinimg/pkg/retry"
)

// Recheck is how a worker confirms that what it came to do is really gone
// before it drops the work. Upstash (like any Redis read from a replica)
// promises only eventual consistency across replicas, so one read from
// another process may miss a photo or a commit the API has just written;
// dropping the work on that read would lose a preview or leave a commit
// in_progress for ever. Writes (the scripts) go to the primary and decide
// again atomically, so only the decision to do nothing needs confirming.
type Recheck struct {
	// Reads is how many reads in all must miss (default 3).
	Reads int
	// Delay is the wait before each read after the first (default 500ms;
	// Upstash replicates within milliseconds).
	Delay time.Duration
}

// DefaultRecheck reads three times over a second.
var DefaultRecheck = Recheck{Reads: 3, Delay: 500 * time.Millisecond}

// PeekFunc reads a session without touching its TTL (Store.Peek).
type PeekFunc func(ctx context.Context, userID string) (Session, error)

// Peek reads userID's session with peek until has accepts it, up to
// rc.Reads reads rc.Delay apart. found reports whether a read was accepted
// (sess is that read); when none was, sess is the last read (zero if the
// session was not found). Errors other than ErrNotFound end it at once.
func (rc Recheck) Peek(ctx context.Context, peek PeekFunc, userID string, has func(Session) bool) (sess Session, found bool, err error) {
	reads, delay := rc.Reads, rc.Delay
	if reads <= 0 {
		reads = DefaultRecheck.Reads
	}
	if delay <= 0 {
		delay = DefaultRecheck.Delay
	}
	for i := range reads {
		if i > 0 {
			if err := retry.Sleep(ctx, delay); err != nil {
				return Session{}, false, err
			}
		}
		sess, err = peek(ctx, userID)
		switch {
		case errors.Is(err, ErrNotFound):
			sess = Session{}
		case err != nil:
			return Session{}, false, err
		case has(sess):
			return sess, true, nil
		}
	}
	return sess, false, nil
}
