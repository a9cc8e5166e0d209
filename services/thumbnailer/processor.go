package thumbnailer

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

// Objects is the part of the photo store the thumbnailer uses
// (*blob.Store). Open must return blob.ErrNotFound for a missing key.
type Objects interface {
	Open(ctx context.Context, key string) (body io.ReadCloser, size int64, contentType string, err error)
	Put(ctx context.Context, key, contentType string, body io.ReadSeeker, size int64) error
	Delete(ctx context.Context, keys ...string) error
}

// Sessions is the part of the session store the thumbnailer uses
// (*session.Store).
type Sessions interface {
	Peek(ctx context.Context, userID string) (session.Session, error)
	SetProcessed(ctx context.Context, userID, imageID string, p session.Processed) (session.Session, bool, error)
}

// ProcessorOptions tune a Processor. Zero values take the defaults named.
type ProcessorOptions struct {
	// Preview sizes, qualities and the pixel limit (preview.New defaults).
	Preview preview.Options
	// MaxBytes is the largest photo read (default 25 MiB).
	MaxBytes int64
	// Timeout bounds the work on one photo, S3 and Redis included
	// (default 2 min); a photo that runs out of time is retried.
	Timeout time.Duration
	// Logger is the service's logger (default: discarded).
	Logger *slog.Logger
	// Registry receives the metrics (default: a private registry).
	Registry prometheus.Registerer
	// Recheck confirms a photo is gone before its event is dropped
	// (default session.DefaultRecheck).
	Recheck session.Recheck
}

// Processor makes the previews and the clean copy of each uploaded photo and
// records the outcome on the session. Its Handle is the consumer's logic.
type Processor struct {
	objects  Objects
	sessions Sessions
	maker    *preview.Maker
	maxBytes int64
	timeout  time.Duration
	recheck  session.Recheck
	log      *slog.Logger
	m        *metrics
}

// NewProcessor returns a Processor. preview.Startup must have been called.
func NewProcessor(objects Objects, sessions Sessions, opt ProcessorOptions) *Processor {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 2 * time.Minute
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Registry == nil {
		opt.Registry = prometheus.NewRegistry()
	}
	return &Processor{
		objects: objects, sessions: sessions, maker: preview.New(opt.Preview),
		maxBytes: opt.MaxBytes, timeout: opt.Timeout, recheck: opt.Recheck, log: opt.Logger, m: newMetrics(opt.Registry),
	}
}

// PreviewKey is the grid preview's key, next to the original under the
// user's prefix, as are the viewer image and the clean copy.
func PreviewKey(userID, imageID string) string {
	return "temp/" + userID + "/" + imageID + ".preview.jpg"
}

// ViewerKey is the viewer image's key.
func ViewerKey(userID, imageID string) string {
	return "temp/" + userID + "/" + imageID + ".viewer.jpg"
}

// CleanKey is the clean copy's key.
func CleanKey(userID, imageID string) string { return "temp/" + userID + "/" + imageID + ".clean.jpg" }

var imageIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Handle processes one image.uploaded event. It does nothing for a photo
// that is no longer "processing" (already done, removed, or its session
// gone), so a redelivered event writes nothing twice. A fault of S3 or Redis
// is returned for a retry with backoff; a photo that is not an acceptable
// image is recorded as rejected with its reason and never retried.
func (p *Processor) Handle(ctx context.Context, ev events.Event) error {
	if ev.Type != events.ImageUploaded {
		return nil
	}
	var data session.ImageEvent
	if err := ev.DataAs(&data); err != nil {
		return consume.Permanent(err) // DataAs names the event type
	}
	userID, imageID := ev.Subject, data.Image.ID
	if !events.ValidUserID(userID) || !imageIDPattern.MatchString(imageID) {
		return consume.Permanent(fmt.Errorf("event for user %q image %q: invalid ids", userID, imageID))
	}
	log := p.log.With("user_id", userID, "session_id", data.SessionID, "image_id", imageID)
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	// A read that misses the photo may be a stale replica's (Upstash):
	// confirm before dropping the work.
	sess, found, err := p.recheck.Peek(ctx, p.sessions.Peek, userID, func(s session.Session) bool {
		_, ok := s.Image(imageID)
		return ok
	})
	if err != nil {
		return fmt.Errorf("peek session: %w", err)
	}
	img, _ := sess.Image(imageID)
	switch {
	case !found && sess.SessionID == "":
		p.skip(log, "session_gone")
		return nil
	case !found:
		p.skip(log, "image_gone")
		return nil
	case img.Status != session.ImageProcessing:
		p.skip(log, "already_"+string(img.Status))
		return nil
	}

	start := time.Now()
	result, written, code, err := p.process(ctx, log, userID, img)
	if err != nil {
		p.m.duration.WithLabelValues("retry").Observe(time.Since(start).Seconds())
		return err
	}
	_, changed, err := p.sessions.SetProcessed(ctx, userID, imageID, result)
	if errors.Is(err, session.ErrImageNotFound) || errors.Is(err, session.ErrNotFound) {
		// Removed while we worked: what we wrote belongs to no one.
		if derr := p.objects.Delete(context.WithoutCancel(ctx), written...); derr != nil {
			log.Warn("thumbnail.cleanup_failed", "err", derr)
		}
		p.skip(log, "removed_meanwhile")
		return nil
	}
	if err != nil {
		return fmt.Errorf("record result: %w", err)
	}
	elapsed := time.Since(start)
	if !changed {
		// Another delivery of this event got there first with the same result.
		p.skip(log, "recorded_meanwhile")
		return nil
	}
	p.m.duration.WithLabelValues(string(result.Status)).Observe(elapsed.Seconds())
	if result.Status == session.ImageRejected {
		p.m.rejected.WithLabelValues(code).Inc()
		log.Info("thumbnail.rejected", "code", code, "reason", result.RejectReason, "ms", elapsed.Milliseconds())
		return nil
	}
	p.m.made.Inc()
	log.Info("thumbnail.ready", "width", result.Width, "height", result.Height, "clean_bytes", result.CleanSize, "ms", elapsed.Milliseconds())
	return nil
}

// process reads the photo and makes and stores its previews. A photo that
// is not acceptable gives a rejected result and the rejection's code, not
// an error; an error means a retry may succeed. written lists the keys
// stored.
func (p *Processor) process(ctx context.Context, log *slog.Logger, userID string, img session.Image) (res session.Processed, written []string, code string, err error) {
	rejected := func(r *hygiene.Rejection) (session.Processed, []string, string, error) {
		if r.Detail != "" {
			log.Info("thumbnail.decode_failed", "code", r.Code, "detail", r.Detail)
		}
		res.Status, res.RejectReason = session.ImageRejected, r.Reason
		return res, nil, r.Code, nil
	}
	if !strings.HasPrefix(img.S3Key, "temp/"+userID+"/") {
		return rejected(&hygiene.Rejection{Code: "bad_key", Reason: "the photo is not stored under this user's folder"})
	}
	body, size, _, err := p.objects.Open(ctx, img.S3Key)
	if errors.Is(err, blob.ErrNotFound) {
		return rejected(&hygiene.Rejection{Code: hygiene.CodeMissing, Reason: "the uploaded file is missing from storage; upload the photo again"})
	}
	if err != nil {
		return res, nil, "", fmt.Errorf("open photo: %w", err)
	}
	src, err := readCapped(body, size, p.maxBytes)
	body.Close()
	var tooLarge *hygiene.Rejection
	if errors.As(err, &tooLarge) {
		return rejected(tooLarge)
	}
	if err != nil {
		return res, nil, "", fmt.Errorf("read photo: %w", err)
	}
	res.Size = int64(len(src))

	out, err := p.maker.Make(src)
	var rej *hygiene.Rejection
	if errors.As(err, &rej) {
		if h, serr := hygiene.Sniff(src); serr == nil {
			res.ContentType = h.Format.ContentType()
		}
		return rejected(rej)
	}
	if err != nil {
		return res, nil, "", fmt.Errorf("make previews: %w", err)
	}
	clean := sha256.Sum256(out.Clean)
	original := sha256.Sum256(src)
	cleanSHA1 := sha1.Sum(out.Clean)
	res = session.Processed{
		Status:     session.ImageReady,
		PreviewKey: PreviewKey(userID, img.ID),
		ViewerKey:  ViewerKey(userID, img.ID),
		CleanKey:   CleanKey(userID, img.ID),
		CleanSize:  int64(len(out.Clean)),
		SHA256:     hex.EncodeToString(clean[:]),
		// The chain of custody: what was uploaded, and what the record gets.
		OriginalSHA256: hex.EncodeToString(original[:]),
		CleanSHA1:      base64.StdEncoding.EncodeToString(cleanSHA1[:]),
		Width:          out.Width,
		Height:         out.Height,
		Size:           int64(len(src)),
		ContentType:    out.Header.Format.ContentType(),
	}
	for _, o := range []struct {
		key  string
		data []byte
	}{{res.PreviewKey, out.Preview}, {res.ViewerKey, out.Viewer}, {res.CleanKey, out.Clean}} {
		// The same key each time: a retry overwrites, never duplicates.
		if err := p.objects.Put(ctx, o.key, "image/jpeg", bytes.NewReader(o.data), int64(len(o.data))); err != nil {
			return res, written, "", fmt.Errorf("store %s: %w", o.key[strings.LastIndexByte(o.key, '/')+1:], err)
		}
		written = append(written, o.key)
	}
	return res, written, "", nil
}

// readCapped reads a whole object of the announced size, refusing one
// larger than max (announced or actual) with a too-large rejection.
func readCapped(r io.Reader, size, max int64) ([]byte, error) {
	tooLarge := func(n int64) error {
		return &hygiene.Rejection{Code: hygiene.CodeTooLarge,
			Reason: fmt.Sprintf("file too large: %.1f MB (the limit is %.0f MB)", float64(n)/(1<<20), float64(max)/(1<<20))}
	}
	if size > max {
		return nil, tooLarge(size)
	}
	if size <= 0 {
		b, err := io.ReadAll(io.LimitReader(r, max+1))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) > max {
			return nil, tooLarge(int64(len(b)))
		}
		return b, nil
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	// The object must end where S3 said it does.
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return nil, errors.New("object longer than its announced size")
	}
	return b, nil
}

// GiveUp is the dead-letter step: the last allowed delivery of ev failed on
// transient faults, so the photo is marked rejected rather than left
// "processing" for ever. The GP sees why and can take it again.
func (p *Processor) GiveUp(ctx context.Context, ev events.Event, reason string) error {
	var data session.ImageEvent
	if ev.Type != events.ImageUploaded || ev.DataAs(&data) != nil || data.Image.ID == "" {
		return nil // Handle refused it for good, and consume logged why
	}
	_, changed, err := p.sessions.SetProcessed(ctx, ev.Subject, data.Image.ID, session.Processed{
		Status:       session.ImageRejected,
		RejectReason: "the photo could not be processed (storage unavailable); delete it and take it again",
	})
	if errors.Is(err, session.ErrImageNotFound) || errors.Is(err, session.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("record give-up: %w", err)
	}
	if changed {
		p.m.rejected.WithLabelValues(hygiene.CodeFailed).Inc()
		p.log.Warn("thumbnail.gave_up", "user_id", ev.Subject, "image_id", data.Image.ID, "cause", reason)
	}
	return nil
}

func (p *Processor) skip(log *slog.Logger, why string) {
	p.m.skipped.WithLabelValues(why).Inc()
	log.Debug("thumbnail.skip", "why", why)
}
