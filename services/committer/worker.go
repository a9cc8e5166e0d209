package committer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// ledgerTTL keeps a finished commit's ledger long enough for any late
// redelivery to find it.
const ledgerTTL = 7 * 24 * time.Hour

// photoStore is what the committer needs of S3.
type photoStore interface {
	Open(ctx context.Context, key string) (io.ReadCloser, int64, string, error)
	Head(ctx context.Context, key string) (blob.Info, error)
	Delete(ctx context.Context, keys ...string) error
}

// worker runs commits. One per process; it is safe for concurrent commits
// of different sessions.
type worker struct {
	cfg    Config
	store  *session.Store
	rdb    redis.Cmdable
	photos photoStore
	alex   *fhir.Client
	js     jetstream.JetStream
	nc     *nats.Conn
	names  events.Names
	log    *slog.Logger
	m      *metrics
}

// permanentError is a fault a retry cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// errStale means the commit is no longer the session's current one.
var errStale = errors.New("commit is no longer current")

func transient(err error) bool {
	var p *permanentError
	if errors.As(err, &p) {
		return false
	}
	return fhir.IsTransient(err)
}

// handle is the consumer's logic for one commit.requested.
func (w *worker) handle(ctx context.Context, ev events.Event) error {
	var ce session.CommitEvent
	if err := ev.DataAs(&ce); err != nil {
		return consume.Permanent(err)
	}
	userID := ev.Subject
	log := w.log.With("user_id", userID, "session_id", ce.SessionID, "commit_id", ce.CommitID)
	sess, err := w.current(ctx, userID, ce.CommitID)
	if err != nil {
		return err
	}
	if sess == nil {
		log.Info("commit.stale")
		w.m.commits.WithLabelValues("stale").Inc()
		return nil
	}
	if sess.CommitStatus == session.CommitCommitted {
		// Redelivered after success: make sure the temporary objects are gone.
		w.cleanup(ctx, log, *sess)
		return nil
	}
	l, lctx, err := w.lock(ctx, userID, 2*w.cfg.LockTTL, log)
	if err != nil {
		if errors.Is(err, errLocked) {
			w.m.commits.WithLabelValues("retried").Inc()
			log.Info("commit.locked")
			return consume.RetryAfter(err, w.cfg.LockTTL)
		}
		return err
	}
	defer l.release(ctx)
	// Look again under the lock: another committer may have finished it.
	sess, err = w.current(lctx, userID, ce.CommitID)
	if err != nil {
		return err
	}
	if sess == nil || sess.CommitStatus == session.CommitCommitted {
		if sess != nil {
			w.cleanup(ctx, log, *sess)
		}
		return nil
	}
	return w.commit(lctx, log, *sess)
}

// current returns the session if commitID is still its commit, in progress
// or committed; nil if the commit is stale or the session gone.
func (w *worker) current(ctx context.Context, userID, commitID string) (*session.Session, error) {
	s, err := w.store.Peek(ctx, userID)
	if errors.Is(err, session.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.CommitID != commitID || (s.CommitStatus != session.CommitInProgress && s.CommitStatus != session.CommitCommitted) {
		return nil, nil
	}
	return &s, nil
}

// lock takes the user's commit lock, waiting up to wait for a holder to
// finish (the message's InProgress keeps it claimed meanwhile).
func (w *worker) lock(ctx context.Context, userID string, wait time.Duration, log *slog.Logger) (*lease, context.Context, error) {
	deadline := time.Now().Add(wait)
	for {
		l, lctx, err := acquire(ctx, w.rdb, w.store.Keys.CommitLock(userID), w.cfg.LockTTL, log)
		if !errors.Is(err, errLocked) || time.Now().After(deadline) {
			return l, lctx, err
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

// job is one delivery's work on one commit.
type job struct {
	w        *worker
	log      *slog.Logger
	sess     session.Session
	userID   string
	commitID string
	ledger   string // hash imageId -> mediaId
	pendingK string // set of image ids whose POST may have been sent

	stop    chan struct{} // closed when no new attempt should start
	mu      sync.Mutex
	done    map[string]string
	pending map[string]bool
	nhi     *string
}

func (w *worker) newJob(sess session.Session, log *slog.Logger) *job {
	l := w.store.Keys.Ledger(sess.UserID, sess.CommitID)
	return &job{w: w, log: log, sess: sess, userID: sess.UserID, commitID: sess.CommitID,
		ledger: l, pendingK: l + ":pending", stop: make(chan struct{}), done: map[string]string{}, pending: map[string]bool{}}
}

// load reads what earlier deliveries wrote.
func (j *job) load(ctx context.Context) error {
	done, err := j.w.rdb.HGetAll(ctx, j.ledger).Result()
	if err != nil {
		return fmt.Errorf("read ledger: %w", err)
	}
	pend, err := j.w.rdb.SMembers(ctx, j.pendingK).Result()
	if err != nil {
		return fmt.Errorf("read ledger: %w", err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for k, v := range done {
		j.done[k] = v
	}
	for _, id := range pend {
		j.pending[id] = true
	}
	return nil
}

// errStopped ends a photo's retries once a sibling has failed the commit.
var errStopped = errors.New("commit stopped by another photo's failure")

func (j *job) stopped() bool {
	select {
	case <-j.stop:
		return true
	default:
		return false
	}
}

// imageFailure is why one photo stopped the commit.
type imageFailure struct {
	imageID string
	err     error
}

// commit writes every photo not yet in the ledger, then finishes or fails
// the commit.
func (w *worker) commit(ctx context.Context, log *slog.Logger, sess session.Session) error {
	j := w.newJob(sess, log)
	if err := j.load(ctx); err != nil {
		return err
	}
	var todo []session.Image
	for _, img := range sess.Images {
		mid, ok := j.done[img.ID]
		if !ok {
			todo = append(todo, img)
			continue
		}
		if img.MediaID != mid {
			// Written and in the ledger, but the crash came before the
			// progress event.
			if err := j.progress(ctx, img.ID, mid); err != nil {
				return j.settle(ctx, err)
			}
		}
	}
	log.Info("commit.start", "total", len(sess.Images), "already_done", len(sess.Images)-len(todo), "parallelism", w.cfg.Parallelism)

	// A permanent failure or a stale commit stops new photos from starting
	// but lets the POSTs in flight finish and reach the ledger: cancelling
	// one could leave a Media written that nobody knows to withdraw.
	wctx := ctx
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { close(j.stop) }) }
	var (
		mu        sync.Mutex
		failures  []imageFailure
		transient []error
		stale     bool
		wg        sync.WaitGroup
	)
	sem := make(chan struct{}, w.cfg.Parallelism)
loop:
	for _, img := range todo {
		select {
		case sem <- struct{}{}:
		case <-j.stop:
			break loop
		case <-wctx.Done():
			break loop
		}
		if j.stopped() {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			id, err := j.commitImage(wctx, img)
			if err == nil {
				// Record even if a sibling failed meanwhile: it is written.
				err = j.record(context.WithoutCancel(wctx), img.ID, id)
			}
			if err == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			var p *permanentError
			switch {
			case errors.Is(err, errStale):
				stale = true
				stop()
			case errors.As(err, &p):
				failures = append(failures, imageFailure{imageID: img.ID, err: p.err})
				stop()
			case errors.Is(err, errStopped):
				// gave up retrying because a sibling failed
			default:
				transient = append(transient, err)
			}
		}()
	}
	wg.Wait()
	switch {
	case stale:
		return j.settle(ctx, errStale)
	case len(failures) > 0:
		return j.fail(ctx, failures)
	case ctx.Err() != nil:
		return fmt.Errorf("commit lock lost: %w", ctx.Err())
	case len(transient) > 0:
		w.m.commits.WithLabelValues("retried").Inc()
		var ra time.Duration
		for _, err := range transient {
			var fe *fhir.Error
			if errors.As(err, &fe) && fe.RetryAfter > ra {
				ra = fe.RetryAfter
			}
		}
		log.Warn("commit.retry_later", "photos_failing", len(transient), "err", transient[0])
		return consume.RetryAfter(transient[0], ra)
	}
	return j.finish(ctx)
}

// settle turns errStale into an ack.
func (j *job) settle(_ context.Context, err error) error {
	if errors.Is(err, errStale) || errors.Is(err, session.ErrStale) || errors.Is(err, session.ErrNotFound) {
		j.log.Info("commit.stale")
		j.w.m.commits.WithLabelValues("stale").Inc()
		return nil
	}
	return err
}

// record writes one photo's Media id to the ledger, then tells the session.
func (j *job) record(ctx context.Context, imageID, mediaID string) error {
	pipe := j.w.rdb.TxPipeline()
	pipe.HSet(ctx, j.ledger, imageID, mediaID)
	pipe.Expire(ctx, j.ledger, ledgerTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	j.mu.Lock()
	j.done[imageID] = mediaID
	j.mu.Unlock()
	return j.progress(ctx, imageID, mediaID)
}

func (j *job) progress(ctx context.Context, imageID, mediaID string) error {
	_, _, err := j.w.store.CommitProgress(ctx, j.userID, j.commitID, imageID, mediaID)
	if errors.Is(err, session.ErrStale) || errors.Is(err, session.ErrNotFound) {
		return errStale
	}
	if err != nil {
		return fmt.Errorf("commit progress: %w", err)
	}
	return nil
}

// finish marks the session committed and removes the temporary objects.
func (j *job) finish(ctx context.Context) error {
	j.mu.Lock()
	media := make(map[string]string, len(j.done))
	for k, v := range j.done {
		media[k] = v
	}
	j.mu.Unlock()
	sess, changed, err := j.w.store.FinishCommit(ctx, j.userID, j.commitID, media)
	if err != nil {
		return j.settle(ctx, fmt.Errorf("finish commit: %w", err))
	}
	if changed {
		j.w.m.commits.WithLabelValues("succeeded").Inc()
		j.observeDuration("succeeded")
		j.log.Info("commit.succeeded", "photos", len(media))
	}
	j.w.rdb.Del(ctx, j.pendingK)
	j.w.cleanup(ctx, j.log, sess)
	return nil
}

func (j *job) observeDuration(outcome string) {
	if j.sess.Commit != nil && !j.sess.Commit.RequestedAt.IsZero() {
		j.w.m.duration.WithLabelValues(outcome).Observe(time.Since(j.sess.Commit.RequestedAt).Seconds())
	}
}

// cleanup deletes a committed session's temporary objects. A failure is
// only logged: the bucket's lifecycle rule on temp/ removes them anyway.
func (w *worker) cleanup(ctx context.Context, log *slog.Logger, sess session.Session) {
	var keys []string
	for _, im := range sess.Images {
		keys = append(keys, im.S3Key, im.PreviewKey, im.ViewerKey, im.CleanKey)
	}
	if err := w.photos.Delete(ctx, keys...); err != nil {
		log.Warn("commit.cleanup", "err", err)
	}
}

// fail compensates what the commit wrote and returns the session to none
// with the per-photo errors.
func (j *job) fail(ctx context.Context, failures []imageFailure) error {
	orphans := j.compensate(ctx)
	errs := make([]session.ImageError, 0, len(failures))
	for _, f := range failures {
		errs = append(errs, session.ImageError{ImageID: f.imageID, Error: photoMessage(f.err)})
	}
	msg := fmt.Sprintf("Commit failed: %s. Nothing was saved to the patient record.", errs[0].Error)
	if len(orphans) > 0 {
		msg = fmt.Sprintf("Commit failed: %s. %d photos reached the record and could not be withdrawn; they are listed for manual clean-up.", errs[0].Error, len(orphans))
	}
	if _, _, err := j.w.store.FailCommit(ctx, j.userID, j.commitID, msg, errs, orphans); err != nil {
		return j.settle(ctx, fmt.Errorf("fail commit: %w", err))
	}
	j.w.rdb.Del(ctx, j.ledger, j.pendingK)
	j.w.m.commits.WithLabelValues("failed").Inc()
	j.observeDuration("failed")
	j.log.Warn("commit.failed", "failed_photos", len(errs), "orphans", len(orphans))
	return nil
}

// photoMessage is what the GP reads about one photo.
func photoMessage(err error) string {
	var fe *fhir.Error
	if errors.As(err, &fe) {
		if fe.Status > 0 {
			return fmt.Sprintf("ALEX refused this photo (%d): %s", fe.Status, fe.Message)
		}
		return "ALEX could not be reached"
	}
	return err.Error()
}

// compensate withdraws every Media this commit wrote: deleted, or marked
// entered-in-error, whichever the server offers. What cannot be withdrawn
// is returned for manual clean-up.
func (j *job) compensate(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := j.load(ctx); err != nil {
		j.log.Warn("commit.compensate_load", "err", err)
	}
	j.mu.Lock()
	written := map[string]string{}
	for k, v := range j.done {
		written[k] = v
	}
	var unsure []string
	for id := range j.pending {
		if _, ok := written[id]; !ok {
			unsure = append(unsure, id)
		}
	}
	j.mu.Unlock()
	var orphans []string
	// A POST in flight when the commit stopped may have landed.
	for _, id := range unsure {
		mid, err := j.lookup(ctx, id)
		switch {
		case err != nil:
			orphans = append(orphans, "unverified:"+j.w.cfg.IdentifierSystem+"|"+id)
		case mid != "":
			written[id] = mid
		}
	}
	caps := j.w.cfg.Capabilities
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, j.w.cfg.Parallelism)
	for _, mid := range written {
		if !caps.Delete && !caps.EnteredInError {
			orphans = append(orphans, mid)
			j.w.m.compensations.WithLabelValues("orphaned").Inc()
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			action := "deleted"
			op := func() error {
				var err error
				if caps.Delete {
					err = j.w.alex.DeleteMedia(ctx, mid)
				} else {
					action = "entered_in_error"
					err = j.w.alex.MarkEnteredInError(ctx, mid)
				}
				if err != nil && !fhir.IsTransient(err) {
					return backoff.Permanent(err)
				}
				return err
			}
			bo := backoff.WithContext(backoff.WithMaxRetries(newBackoff(), 4), ctx)
			if err := backoff.Retry(op, bo); err != nil {
				j.log.Error("commit.compensate", "media_id", mid, "err", err)
				mu.Lock()
				orphans = append(orphans, mid)
				mu.Unlock()
				j.w.m.compensations.WithLabelValues("orphaned").Inc()
				return
			}
			j.w.m.compensations.WithLabelValues(action).Inc()
		}()
	}
	wg.Wait()
	return orphans
}

func newBackoff() *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
}

// commitImage writes one photo, retrying transient faults with exponential
// backoff and jitter within the retry budget.
func (j *job) commitImage(ctx context.Context, img session.Image) (string, error) {
	if j.stopped() {
		return "", errStopped
	}
	ph, err := j.w.photo(ctx, img, j.w.cfg.TempDir)
	if err != nil {
		return "", err
	}
	defer ph.cleanup()
	m := fhir.NewMedia(fhir.Photo{
		IdentifierSystem: j.w.cfg.IdentifierSystem, ImageID: img.ID,
		PatientID: j.sess.PatientID, EncounterID: j.sess.EncounterID, CapturedAt: img.CapturedAt,
		ContentType: ph.contentType, Title: title(img, ph.contentType), Width: ph.width, Height: ph.height,
		BodySite: img.Metadata.BodySite, BodySiteDisplay: img.Metadata.BodySiteDisplay,
		Laterality: img.Metadata.Laterality, ViewType: img.Metadata.ViewType, Notes: img.Metadata.Notes,
	})
	bo := newBackoff()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		id, how, err := j.tryOnce(ctx, img, m, ph.src)
		if err == nil {
			j.w.m.photos.WithLabelValues(how).Inc()
			j.log.Debug("photo.committed", "image_id", img.ID, "media_id", id, "how", how, "attempts", attempt)
			return id, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if !transient(err) {
			var p *permanentError
			if errors.As(err, &p) {
				return "", err
			}
			return "", &permanentError{err: err}
		}
		d := bo.NextBackOff()
		reason := "transient"
		var fe *fhir.Error
		if errors.As(err, &fe) && fe.RetryAfter > 0 {
			reason = "retry_after"
			d = max(d, fe.RetryAfter)
		} else if errors.As(err, &fe) && fe.Status == 401 {
			reason = "token"
		}
		if time.Since(start)+d > j.w.cfg.RetryBudget {
			return "", err
		}
		if j.stopped() {
			return "", errStopped
		}
		j.w.m.retries.WithLabelValues(reason).Inc()
		j.log.Warn("photo.retry", "image_id", img.ID, "attempt", attempt, "delay_ms", d.Milliseconds(), "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-j.stop:
			return "", errStopped
		case <-time.After(d):
		}
	}
}

// tryOnce makes one attempt at one photo. A photo whose POST may already
// have been sent (in this delivery or one before a crash) is looked up
// first, or posted conditionally, so it is never written twice.
func (j *job) tryOnce(ctx context.Context, img session.Image, m fhir.Media, src fhir.Source) (id, how string, err error) {
	caps := j.w.cfg.Capabilities
	j.mu.Lock()
	wasPending := j.pending[img.ID]
	j.mu.Unlock()
	if wasPending && !caps.ConditionalCreate {
		id, err := j.lookup(ctx, img.ID)
		if err != nil {
			return "", "", err
		}
		if id != "" {
			return id, "found", nil
		}
	}
	if !wasPending {
		pipe := j.w.rdb.TxPipeline()
		pipe.SAdd(ctx, j.pendingK, img.ID)
		pipe.Expire(ctx, j.pendingK, ledgerTTL)
		if _, err := pipe.Exec(ctx); err != nil {
			return "", "", fmt.Errorf("write ledger: %w", err)
		}
		j.mu.Lock()
		j.pending[img.ID] = true
		j.mu.Unlock()
	}
	inx := ""
	if wasPending && caps.ConditionalCreate {
		inx = "identifier=" + j.w.cfg.IdentifierSystem + "|" + img.ID
	}
	c, err := j.w.alex.CreateMedia(ctx, m, src, inx)
	var fe *fhir.Error
	if errors.As(err, &fe) && fe.Status == 412 {
		// Several Media carry the identifier (an old withdrawn one and ours):
		// find the live one.
		id, lerr := j.lookup(ctx, img.ID)
		if lerr == nil && id != "" {
			return id, "found", nil
		}
	}
	if err != nil {
		return "", "", err
	}
	if c.Existing {
		if c.Status == "entered-in-error" {
			// A Media an earlier, failed commit withdrew: write anew.
			c, err = j.w.alex.CreateMedia(ctx, m, src, "")
			if err != nil {
				return "", "", err
			}
			return c.ID, "created", nil
		}
		return c.ID, "found", nil
	}
	return c.ID, "created", nil
}

// lookup finds the live Media carrying this photo's identifier: by
// identifier search where the server allows it, else (ALEX) through the
// patient's NHI, the only Media search ALEX offers.
func (j *job) lookup(ctx context.Context, imageID string) (string, error) {
	sys := j.w.cfg.IdentifierSystem
	var refs []fhir.MediaRef
	var err error
	if j.w.cfg.Capabilities.Search {
		refs, err = j.w.alex.SearchMedia(ctx, url.Values{"identifier": {sys + "|" + imageID}})
	} else {
		var nhi string
		nhi, err = j.patientNHI(ctx)
		if err == nil && nhi == "" {
			return "", &permanentError{err: errors.New("cannot check whether this photo already reached ALEX: no identifier search and the patient has no NHI")}
		}
		if err == nil {
			refs, err = j.w.alex.SearchMedia(ctx, url.Values{"patient.identifier": {fhir.NHISystem + "|" + nhi}})
		}
	}
	if err != nil {
		return "", err
	}
	for _, r := range refs {
		if r.Status == "entered-in-error" {
			continue
		}
		for _, id := range r.Identifier {
			if id.System == sys && id.Value == imageID {
				return r.ID, nil
			}
		}
	}
	return "", nil
}

func (j *job) patientNHI(ctx context.Context) (string, error) {
	j.mu.Lock()
	if j.nhi != nil {
		defer j.mu.Unlock()
		return *j.nhi, nil
	}
	j.mu.Unlock()
	nhi, err := j.w.alex.PatientNHI(ctx, j.sess.PatientID)
	if err != nil {
		return "", err
	}
	j.mu.Lock()
	j.nhi = &nhi
	j.mu.Unlock()
	return nhi, nil
}

// photo is the clean bytes of one image, ready to send.
type photo struct {
	src           fhir.Source
	contentType   string
	width, height int
	cleanup       func()
}

// photo picks the bytes to commit: the thumbnailer's clean copy, or the
// original cleaned here when there is none yet.
func (w *worker) photo(ctx context.Context, img session.Image, dir string) (photo, error) {
	if img.CleanKey != "" {
		info, err := w.photos.Head(ctx, img.CleanKey)
		if errors.Is(err, blob.ErrNotFound) {
			return photo{}, &permanentError{err: errors.New("the clean copy of this photo is missing from storage")}
		}
		if err != nil {
			return photo{}, err
		}
		ct := info.ContentType
		if !strings.HasPrefix(ct, "image/") {
			ct = "image/jpeg"
		}
		key := img.CleanKey
		return photo{
			src: func(ctx context.Context) (io.ReadCloser, int64, error) {
				body, size, _, err := w.photos.Open(ctx, key)
				return body, size, err
			},
			contentType: ct, width: img.Width, height: img.Height, cleanup: func() {},
		}, nil
	}
	body, _, _, err := w.photos.Open(ctx, img.S3Key)
	if errors.Is(err, blob.ErrNotFound) {
		return photo{}, &permanentError{err: errors.New("this photo is missing from storage")}
	}
	if err != nil {
		return photo{}, err
	}
	c, err := cleanPhoto(body, dir)
	body.Close()
	if errors.Is(err, errNotImage) && img.Status == session.ImageProcessing {
		// HEIC or WebP: only the thumbnailer can clean it; wait for it.
		return photo{}, fmt.Errorf("waiting for the clean copy: %w", err)
	}
	if err != nil {
		return photo{}, &permanentError{err: fmt.Errorf("this photo cannot be read: %w", err)}
	}
	return photo{
		src: func(context.Context) (io.ReadCloser, int64, error) {
			f, err := os.Open(c.path)
			return f, c.size, err
		},
		contentType: c.contentType, width: c.width, height: c.height,
		cleanup: func() { os.Remove(c.path) },
	}, nil
}

// title names the attachment after the image id, with the extension of
// the content type (never the phone's file name).
func title(img session.Image, contentType string) string {
	ext := ".jpg"
	switch contentType {
	case "image/png":
		ext = ".png"
	case "image/webp":
		ext = ".webp"
	case "image/heic":
		ext = ".heic"
	}
	return "clinical-photo-" + path.Base(img.ID) + ext
}

// deadLetter runs when a commit's last delivery failed: the event goes to
// the dead-letter subject, what was written is compensated, and the session
// learns the commit failed.
func (w *worker) deadLetter(ctx context.Context, ev events.Event, reason string) error {
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(w.names.DeadLetterSubject(events.ConsumerCommitter))
	msg.Data = raw
	msg.Header.Set("Clinimg-Reason", reason)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, serr := w.js.StreamNameBySubject(pctx, msg.Subject); serr == nil {
		if _, err := w.js.PublishMsg(pctx, msg); err != nil {
			return fmt.Errorf("publish dead letter: %w", err)
		}
	} else if err := w.nc.PublishMsg(msg); err != nil {
		// No stream keeps dead letters: a plain publish still reaches
		// whoever listens.
		return fmt.Errorf("publish dead letter: %w", err)
	}
	var ce session.CommitEvent
	if err := ev.DataAs(&ce); err != nil {
		return nil
	}
	log := w.log.With("user_id", ev.Subject, "session_id", ce.SessionID, "commit_id", ce.CommitID)
	sess, err := w.current(ctx, ev.Subject, ce.CommitID)
	if err != nil {
		return err
	}
	if sess == nil || sess.CommitStatus != session.CommitInProgress {
		return nil
	}
	l, lctx, err := w.lock(ctx, ev.Subject, 2*w.cfg.LockTTL, log)
	if err != nil {
		return err
	}
	defer l.release(ctx)
	j := w.newJob(*sess, log)
	orphans := j.compensate(lctx)
	msgText := "Commit could not be completed: ALEX kept failing. Nothing was saved to the patient record; please try again."
	if len(orphans) > 0 {
		msgText = fmt.Sprintf("Commit could not be completed: ALEX kept failing. %d photos reached the record and could not be withdrawn; they are listed for manual clean-up.", len(orphans))
	}
	if _, _, err := w.store.FailCommit(lctx, ev.Subject, ce.CommitID, msgText, nil, orphans); err != nil && !errors.Is(err, session.ErrStale) {
		return fmt.Errorf("fail commit: %w", err)
	}
	w.rdb.Del(lctx, j.ledger, j.pendingK)
	w.m.commits.WithLabelValues("dead_lettered").Inc()
	j.observeDuration("dead_lettered")
	log.Error("commit.dead_lettered", "reason", reason, "orphans", len(orphans))
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
