package audit

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/clinicalimages/clinimg/pkg/blob"
)

// ErrNotFound means no trail is kept for the session.
var ErrNotFound = errors.New("no audit trail for this session")

// Objects is what the trail needs of the bucket.
type Objects interface {
	Open(ctx context.Context, key string) (body io.ReadCloser, size int64, contentType string, err error)
	Put(ctx context.Context, key, contentType string, body io.ReadSeeker, size int64) error
}

// Prefix is where the trails live in the bucket: outside temp/, so the
// lifecycle rule that expires photos never touches them.
const Prefix = "audit/"

// Key is the document of one session: JSON Lines, one record a line.
func Key(userID, sessionID string) string { return Prefix + userID + "/" + sessionID + ".jsonl" }

// MaxDocument bounds one session's document (a session of 50 photos
// gives well under 1 MiB).
const MaxDocument = 16 << 20

// Store keeps each session's trail as one append-only document: a write
// keeps every byte already there and adds lines after them, so each
// version of the object (under S3 versioning and Object Lock) is a prefix
// of the next. Writes to one session must not run concurrently; one
// audit consumer at a time writes (Writer.Consume, on a pinned consumer).
type Store struct{ objects Objects }

// NewStore returns a Store on objects.
func NewStore(objects Objects) *Store { return &Store{objects: objects} }

// Append adds recs to the session's document, leaving out any whose id it
// already holds (a redelivered event), and reports how many it added.
// Nothing is written when none is new.
func (s *Store) Append(ctx context.Context, userID, sessionID string, recs []Record) (int, error) {
	raw, err := s.raw(ctx, Key(userID, sessionID))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	held, err := decode(raw)
	if err != nil {
		return 0, err
	}
	seen := make(map[string]bool, len(held))
	for _, r := range held {
		seen[r.ID] = true
	}
	var buf bytes.Buffer
	buf.Write(raw)
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		buf.WriteByte('\n') // a torn last line stays as it was, and is skipped on read
	}
	added := 0
	for _, r := range recs {
		if seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		line, err := json.Marshal(r)
		if err != nil {
			return 0, fmt.Errorf("encode audit record: %w", err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
		added++
	}
	if added == 0 {
		return 0, nil
	}
	if buf.Len() > MaxDocument {
		return 0, fmt.Errorf("audit document %s over %d bytes", Key(userID, sessionID), MaxDocument)
	}
	b := buf.Bytes()
	if err := s.objects.Put(ctx, Key(userID, sessionID), "application/x-ndjson", bytes.NewReader(b), int64(len(b))); err != nil {
		return 0, fmt.Errorf("write audit document: %w", err)
	}
	return added, nil
}

// Read is the session's trail in the order the session saw it (by
// version, then as written).
func (s *Store) Read(ctx context.Context, userID, sessionID string) ([]Record, error) {
	raw, err := s.raw(ctx, Key(userID, sessionID))
	if err != nil {
		return nil, err
	}
	recs, err := decode(raw)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(recs, func(a, b Record) int { return cmp.Compare(a.Version, b.Version) })
	return recs, nil
}

func (s *Store) raw(ctx context.Context, key string) ([]byte, error) {
	body, _, _, err := s.objects.Open(ctx, key)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read audit document: %w", err)
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, MaxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("read audit document: %w", err)
	}
	return raw, nil
}

// decode reads JSON Lines; a line that does not parse (a write torn by a
// crash) is skipped, every other is kept.
func decode(raw []byte) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), MaxDocument)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r Record
		if json.Unmarshal(line, &r) != nil || r.ID == "" {
			continue
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("decode audit document: %w", err)
	}
	return out, nil
}
