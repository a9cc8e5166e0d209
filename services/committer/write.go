package committer

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// attempt is one try at one commit: each photo not yet in the record is
// taken one step further, once. It never retries; the caller decides
// whether the commit waits, fails or finishes.
type attempt struct {
	w      *worker
	log    *slog.Logger
	sess   session.Session
	ledger ledger

	mu      sync.Mutex
	nhi     *string         // the patient's NHI, once read
	media   []fhir.MediaRef // the patient's Media, once searched (ALEX)
	orphans []string        // Media of ours that could not be withdrawn
}

// photoResult is where one photo stands after this attempt.
type photoResult struct {
	img   session.Image // as last recorded
	state session.PhotoState
	err   error // a transient fault the commit waits out, if any
	stale bool  // the commit or the photo moved on without us
	// recheck: the write's outcome is unknown but ALEX answered, so it can
	// be looked up before the attempt ends (answered).
	recheck bool
}

// run takes every photo one step, Parallelism at a time, and returns the
// results in the session's order. Once one photo finds the commit stale no
// new write starts; writes already on their way finish and are recorded.
func (a *attempt) run(ctx context.Context) []photoResult {
	out := make([]photoResult, len(a.sess.Images))
	var stale sync.Once
	stop := make(chan struct{})
	sem := make(chan struct{}, a.w.cfg.Parallelism)
	var wg sync.WaitGroup
	for i, img := range a.sess.Images {
		if img.State() == session.PhotoInRecord {
			out[i] = photoResult{state: session.PhotoInRecord}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-stop:
			out[i] = photoResult{stale: true}
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			select {
			case <-stop:
				out[i] = photoResult{stale: true}
				return
			default:
			}
			out[i] = a.write(ctx, img)
			if out[i].stale {
				stale.Do(func() { close(stop) })
			}
		}()
	}
	wg.Wait()
	a.recheck(ctx, out)
	return out
}

// recheck looks up, once the attempt's writes are done, the photos whose
// outcome is unknown although ALEX answered: each is then in the record,
// or known absent and free to change until the next attempt sends it.
func (a *attempt) recheck(ctx context.Context, out []photoResult) {
	var idx []int
	for i, r := range out {
		if r.recheck && !r.stale {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return
	}
	a.mu.Lock()
	a.media = nil // searched before these writes: search again
	a.mu.Unlock()
	for _, i := range idx {
		r := out[i]
		refs, err := a.lookUp(ctx, r.img)
		if err != nil {
			return // still unknown; the next attempt looks again
		}
		switch v, id, extra, why := judge(refs, a.claim(r.img)); v {
		case found:
			out[i] = a.inRecord(ctx, r.img, id, extra, "found", hashOf(refs, id))
		case conflicting:
			out[i] = a.set(ctx, r.img, session.PhotoConflict, nil, why)
		default:
			if res := a.set(ctx, r.img, session.PhotoPending, r.err, ""); res.stale {
				out[i] = res
			} else {
				out[i].state = session.PhotoPending
			}
		}
	}
}

// write takes one photo as far as it can go in this attempt.
func (a *attempt) write(ctx context.Context, img session.Image) photoResult {
	k := known{state: img.State(), conditional: a.w.cfg.Capabilities.ConditionalCreate}
	for {
		switch nextStep(k) {
		case stepNone:
			return photoResult{state: img.State()}
		case stepSend:
			return a.send(ctx, img, false)
		case stepSendNew:
			if r, wait := a.settling(img); wait {
				return r
			}
			return a.send(ctx, img, true)
		case stepWaitInfo:
			can, err := a.canLookUp(ctx)
			if err != nil {
				return photoResult{state: img.State(), err: err}
			}
			k.lookUpKnown, k.canLookUp = true, can
		case stepAskGP:
			return a.set(ctx, img, session.PhotoNeedsChecking, nil,
				"ALEX may have this photo but offers no way to check (no identifier search, and the patient has no NHI). "+
					"Look in the patient's record: if the photo is not there, send it again; if it is, delete it here.")
		case stepLookUp:
			refs, err := a.lookUp(ctx, img)
			if err != nil {
				return photoResult{state: img.State(), err: err}
			}
			switch v, id, extra, why := judge(refs, a.claim(img)); v {
			case found:
				return a.inRecord(ctx, img, id, extra, "found", hashOf(refs, id))
			case conflicting:
				return a.set(ctx, img, session.PhotoConflict, nil, why)
			}
			// ALEX does not hold it: safe to send once no earlier write
			// can still land. The ledger still checks that nobody moved the
			// photo on since it was read.
			if r, wait := a.settling(img); wait {
				return r
			}
			k.state = session.PhotoPending
		}
	}
}

// settling holds back a photo whose last write may still be under way at
// ALEX: its answer was lost (a gateway's 504, a reset, a crash) less than
// ALEX_REQUEST_TIMEOUT after it was sent, so a lookup that finds nothing,
// or a conditional create, cannot yet say it is absent.
func (a *attempt) settling(img session.Image) (photoResult, bool) {
	if img.SentAt == nil {
		return photoResult{}, false
	}
	left := img.SentAt.Add(a.w.cfg.ALEX.Timeout).Sub(a.w.now())
	if left <= 0 {
		return photoResult{}, false
	}
	return photoResult{state: img.State(), err: &settlingError{left: left}}, true
}

// send writes one photo: recorded as sending first, so a crash at any
// point leaves a photo that is looked up before it is sent again. With
// ifAbsent the write is conditional on no Media carrying its identifier.
func (a *attempt) send(ctx context.Context, img session.Image, ifAbsent bool) photoResult {
	p, err := a.w.photo(ctx, img, a.w.cfg.TempDir)
	var unusable *unusableError
	if errors.As(err, &unusable) {
		return a.set(ctx, img, session.PhotoRefused, nil, unusable.reason+"; delete it and take it again")
	}
	if err != nil {
		return photoResult{state: img.State(), err: err}
	}
	defer p.remove()
	sent, err := a.ledger.sending(ctx, img, p.hash)
	if err != nil {
		return a.moved(img, err)
	}
	inx := ""
	if ifAbsent {
		inx = "identifier=" + a.w.cfg.IdentifierSystem + "|" + sent.MediaIdentifier
	}
	c, err := a.w.alex.CreateMedia(ctx, a.w.media(a.sess, sent, p), p.src, inx)
	switch classify(err) {
	case written:
		if !c.Existing {
			return a.inRecord(ctx, sent, c.ID, nil, "created", p.hash)
		}
		// Conditional create found a Media with the identifier: it is this
		// photo only if its patient and bytes are.
		ref := c.Ref
		ref.ID = c.ID
		switch v, _, _, why := judge([]fhir.MediaRef{ref}, a.claim(sent)); v {
		case found:
			return a.inRecord(ctx, sent, c.ID, nil, "found", ref.Hash)
		case conflicting:
			return a.set(ctx, sent, session.PhotoConflict, nil, why)
		}
		return a.set(ctx, sent, session.PhotoConflict, nil, "ALEX says a Media with this photo's identifier exists but did not show it; it was not claimed")
	case notWritten:
		if ifAbsent {
			// Turned away before ALEX looked (429, 401, never sent): this
			// write stored nothing, but the earlier one that made it
			// conditional may have, so it is not sent unconditionally.
			return a.set(ctx, sent, session.PhotoUnknown, err, unknownWhy)
		}
		return a.set(ctx, sent, session.PhotoPending, err, "")
	case unclear:
		r := a.set(ctx, sent, session.PhotoUnknown, err, unknownWhy)
		r.img, r.recheck = sent, answered(err)
		return r
	case severalMatch:
		// Several Media carry our identifier: earlier writes of ours whose
		// answers were lost, or someone else's. A lookup tells which.
		if r, how := a.settle(ctx, sent, err); how == settled {
			return r
		}
		return a.set(ctx, sent, session.PhotoConflict, nil, "ALEX holds several Media under this photo's identifier; none was claimed")
	}
	if ifAbsent {
		// This write stored nothing, but an earlier one whose answer was
		// lost may have: a refusal (made before the conditional check)
		// does not say. Once refused, the GP's next commit sends the photo
		// unconditionally, so it must be known absent first: refused if
		// so, left for the GP only if ALEX cannot be asked.
		switch r, how := a.settle(ctx, sent, err); how {
		case settled:
			return r
		case noLookUp:
			return a.set(ctx, sent, session.PhotoNeedsChecking, nil, refusal(err)+
				". An earlier write of it may have been stored and ALEX offers no way to check: look in the patient's record; if the photo is not there, send it again; if it is, delete it here.")
		}
	}
	return a.set(ctx, sent, session.PhotoRefused, nil, refusal(err))
}

const unknownWhy = "ALEX's answer did not say whether it stored this photo; it is looked up before it is sent again"

// settlement is what a lookup made by settle decided.
type settlement int

const (
	settled     settlement = iota // the result says where the photo stands
	knownAbsent                   // ALEX holds none of it: the caller decides
	noLookUp                      // ALEX cannot be asked: the caller decides
)

// settle decides, by a lookup made now, a photo whose write ALEX answered
// (cause) without storing it or naming its Media, while an earlier write
// of it may be in the record. Found, it is in the record (further Media
// of its own are withdrawn); another's, in conflict; a lookup that fails
// leaves it unknown, for the next attempt (all settled). Otherwise ALEX
// holds none of it (knownAbsent), or cannot be asked (noLookUp), and
// nothing is recorded.
func (a *attempt) settle(ctx context.Context, img session.Image, cause error) (photoResult, settlement) {
	can, err := a.canLookUp(ctx)
	if err == nil && !can {
		return photoResult{}, noLookUp
	}
	var refs []fhir.MediaRef
	if err == nil {
		a.mu.Lock()
		a.media = nil // searched before this write was answered: search again
		a.mu.Unlock()
		refs, err = a.lookUp(ctx, img)
	}
	if err != nil {
		return a.set(ctx, img, session.PhotoUnknown, err, unknownWhy), settled
	}
	switch v, id, extra, why := judge(refs, a.claim(img)); v {
	case found:
		return a.inRecord(ctx, img, id, extra, "found", hashOf(refs, id)), settled
	case conflicting:
		return a.set(ctx, img, session.PhotoConflict, nil, why), settled
	}
	a.log.Debug("photo.absent", "image_id", img.ID, "err", cause)
	return photoResult{}, knownAbsent
}

// inRecord records the photo as the Media id. The answer is a fact about
// the record, so it is recorded even if the attempt is being abandoned.
// hash is the SHA-1 of the bytes the Media carries ("" if unknown), for
// the audit trail.
func (a *attempt) inRecord(ctx context.Context, img session.Image, mediaID string, extra []string, how, hash string) photoResult {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := a.ledger.inRecord(rctx, img, mediaID, hash)
	var dup *session.DuplicateError
	switch {
	case errors.As(err, &dup):
		a.log.Error("photo.duplicate", "image_id", img.ID, "media_id", mediaID, "kept_media_id", dup.MediaID)
		a.withdraw(rctx, mediaID)
		return photoResult{state: session.PhotoInRecord}
	case errors.Is(err, errGone):
		// The session ended while the write was on its way.
		a.log.Warn("photo.gone", "image_id", img.ID, "media_id", mediaID)
		a.withdraw(rctx, mediaID)
		return photoResult{stale: true}
	case err != nil:
		// Written but not recorded: the photo is left sending, and the
		// next attempt finds it by lookup.
		return photoResult{state: img.State(), err: err}
	}
	for _, id := range extra {
		a.log.Error("photo.duplicate", "image_id", img.ID, "media_id", id, "kept_media_id", mediaID)
		a.withdraw(rctx, id)
	}
	a.w.m.photos.WithLabelValues(how).Inc()
	a.log.Debug("photo.committed", "image_id", img.ID, "media_id", mediaID, "how", how, "tries", img.Tries)
	return photoResult{state: session.PhotoInRecord}
}

// set moves the photo to state with the reason the GP reads; cause, if
// any, is the transient fault the commit waits out.
func (a *attempt) set(ctx context.Context, img session.Image, state session.PhotoState, cause error, why string) photoResult {
	if err := a.ledger.set(ctx, img, state, why); err != nil {
		return a.moved(img, err)
	}
	if state != session.PhotoPending {
		a.log.Warn("photo."+string(state), "image_id", img.ID, "tries", img.Tries, "err", cause)
	}
	return photoResult{state: state, err: cause}
}

// moved turns a ledger error into the photo's result.
func (a *attempt) moved(img session.Image, err error) photoResult {
	if errors.Is(err, errStale) || errors.Is(err, errGone) {
		return photoResult{stale: true}
	}
	return photoResult{state: img.State(), err: err}
}

// claim is what makes a Media img's.
func (a *attempt) claim(img session.Image) claim {
	return claim{system: a.w.cfg.IdentifierSystem, value: img.MediaIdentifier,
		subject: "Patient/" + a.sess.PatientID, hashes: img.SentHashes}
}

// canLookUp reports whether ALEX can say if it holds a photo: by
// identifier search where offered, else through the patient's NHI.
func (a *attempt) canLookUp(ctx context.Context) (bool, error) {
	if a.w.cfg.Capabilities.Search {
		return true, nil
	}
	nhi, err := a.patientNHI(ctx)
	return nhi != "", err
}

// lookUp returns the Media that may be img's: by identifier where the
// server searches by it, else the patient's Media through the NHI (the
// only Media search ALEX offers), searched once per attempt. Every write
// this attempt's lookups could miss ended before the attempt began.
func (a *attempt) lookUp(ctx context.Context, img session.Image) ([]fhir.MediaRef, error) {
	if a.w.cfg.Capabilities.Search {
		return a.w.alex.SearchMedia(ctx, url.Values{"identifier": {a.w.cfg.IdentifierSystem + "|" + img.MediaIdentifier}})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.media != nil {
		return a.media, nil
	}
	nhi, err := a.patientNHILocked(ctx)
	if err != nil {
		return nil, err
	}
	refs, err := a.w.alex.SearchMedia(ctx, url.Values{"patient.identifier": {fhir.NHISystem + "|" + nhi}})
	if err != nil {
		return nil, err
	}
	a.media = append([]fhir.MediaRef{}, refs...)
	return a.media, nil
}

func (a *attempt) patientNHI(ctx context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.patientNHILocked(ctx)
}

func (a *attempt) patientNHILocked(ctx context.Context) (string, error) {
	if a.nhi != nil {
		return *a.nhi, nil
	}
	nhi, err := a.w.alex.PatientNHI(ctx, a.sess.PatientID)
	if err != nil {
		return "", err
	}
	a.nhi = &nhi
	return nhi, nil
}

// withdraw compensates a Media of ours that must not stay in the record
// (compensate.go); one it cannot withdraw is kept for the commit's
// outcome.
func (a *attempt) withdraw(ctx context.Context, mediaID string) {
	if !a.w.compensate(ctx, a.log, mediaID) {
		a.mu.Lock()
		a.orphans = append(a.orphans, mediaID)
		a.mu.Unlock()
	}
}

// hashOf is the content.hash of the Media id among refs, or "".
func hashOf(refs []fhir.MediaRef, id string) string {
	for _, r := range refs {
		if r.ID == id {
			return r.Hash
		}
	}
	return ""
}
