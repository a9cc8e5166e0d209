package committer

import (
	"context"
	"errors"
	"fmt"

	"github.com/clinicalimages/clinimg/pkg/session"
)

// errStale means the commit, or the photo's state, moved on without this
// committer: someone else has the newer word, so it stops.
var errStale = errors.New("commit or photo state moved on")

// errGone means the photo, under that identifier, is no longer in the
// session (the session was discarded or replaced).
var errGone = errors.New("photo no longer in the session")

// ledger records one commit's photo states on the session, where they are
// kept until the session is committed or discarded: what is in the record
// is never forgotten, even when the commit fails or is stopped.
type ledger struct {
	store    *session.Store
	userID   string
	commitID string
}

// sending records, before the write leaves, that img is being sent with
// bytes of SHA-1 hash. It fails with errStale once the commit is stopped
// or the photo moved on, so no write starts after that.
func (l ledger) sending(ctx context.Context, img session.Image, hash string) (session.Image, error) {
	r, _, err := l.store.RecordPhoto(ctx, l.userID, session.PhotoUpdate{CommitID: l.commitID, ImageID: img.ID,
		Identifier: img.MediaIdentifier, State: session.PhotoSending, Tries: img.Tries, Hash: hash})
	if err != nil {
		return session.Image{}, l.err(err)
	}
	return r.Image, nil
}

// inRecord records that img is in the record as mediaID. It lands whatever
// became of the commit: it is a fact about the record. A photo already in
// the record as another Media gives *session.DuplicateError.
// hash, the SHA-1 of the bytes in the record if known, goes on the event.
func (l ledger) inRecord(ctx context.Context, img session.Image, mediaID, hash string) error {
	_, _, err := l.store.RecordPhoto(ctx, l.userID, session.PhotoUpdate{CommitID: l.commitID, ImageID: img.ID,
		Identifier: img.MediaIdentifier, State: session.PhotoInRecord, MediaID: mediaID, Hash: hash})
	var dup *session.DuplicateError
	if errors.As(err, &dup) {
		return err
	}
	return l.err(err)
}

// set moves img to state (pending, unknown, refused, needs_checking,
// conflict) with the reason the GP reads, unless it moved on since img
// was read (errStale).
func (l ledger) set(ctx context.Context, img session.Image, state session.PhotoState, why string) error {
	_, _, err := l.store.RecordPhoto(ctx, l.userID, session.PhotoUpdate{CommitID: l.commitID, ImageID: img.ID,
		Identifier: img.MediaIdentifier, State: state, Tries: img.Tries, Error: why})
	return l.err(err)
}

// attempt records that attempt n began (wait nil) or failed and waits.
func (l ledger) attempt(ctx context.Context, n int, wait *session.CommitWait) error {
	_, err := l.store.CommitAttempt(ctx, l.userID, l.commitID, n, wait)
	return l.err(err)
}

func (l ledger) err(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, session.ErrStale):
		return errStale
	case errors.Is(err, session.ErrImageNotFound), errors.Is(err, session.ErrNotFound):
		return errGone
	}
	return fmt.Errorf("ledger: %w", err)
}
