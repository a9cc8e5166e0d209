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
	"image"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/hygiene"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/thumbnailer/preview"
)

func TestMain(m *testing.M) {
	if err := preview.Startup(preview.Settings{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// objects wraps the real S3 store, counts calls, and injects faults.
type objects struct {
	Objects
	mu                  sync.Mutex
	opens, puts, dels   int
	failOpen            func(n int) error // n counts from 1
	failPut             func(n int) error
	afterPut            func(key string)
	putKeys, deletedKey []string
}

func (o *objects) Open(ctx context.Context, key string) (io.ReadCloser, int64, string, error) {
	o.mu.Lock()
	o.opens++
	n := o.opens
	o.mu.Unlock()
	if o.failOpen != nil {
		if err := o.failOpen(n); err != nil {
			return nil, 0, "", err
		}
	}
	return o.Objects.Open(ctx, key)
}

func (o *objects) Put(ctx context.Context, key, ct string, body io.ReadSeeker, size int64) error {
	o.mu.Lock()
	o.puts++
	n := o.puts
	o.mu.Unlock()
	if o.failPut != nil {
		if err := o.failPut(n); err != nil {
			return err
		}
	}
	if err := o.Objects.Put(ctx, key, ct, body, size); err != nil {
		return err
	}
	o.mu.Lock()
	o.putKeys = append(o.putKeys, key)
	o.mu.Unlock()
	if o.afterPut != nil {
		o.afterPut(key)
	}
	return nil
}

func (o *objects) Delete(ctx context.Context, keys ...string) error {
	o.mu.Lock()
	o.dels++
	o.deletedKey = append(o.deletedKey, keys...)
	o.mu.Unlock()
	return o.Objects.Delete(ctx, keys...)
}

func (o *objects) counts() (opens, puts int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opens, o.puts
}

// harness is one user's session on real Redis and S3, and a Processor.
type harness struct {
	t         testing.TB
	rdb       *redis.Client
	store     *session.Store
	blobs     *blob.Store
	objects   *objects
	proc      *Processor
	userID    string
	sessionID string
}

func newHarness(t testing.TB, opt ProcessorOptions) *harness {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	blobs, _ := testenv.S3(t)
	h := &harness{t: t, rdb: rdb, blobs: blobs, store: session.NewStore(rdb, session.Options{Prefix: prefix}),
		objects: &objects{Objects: blobs}, userID: "user_" + testenv.ID(), sessionID: testenv.ID()}
	if _, err := h.store.Start(context.Background(), session.StartParams{
		UserID: h.userID, PatientID: "patient-1", EncounterID: "enc-1", Token: testenv.ID(), SessionID: h.sessionID,
	}); err != nil {
		t.Fatal(err)
	}
	h.proc = NewProcessor(h.objects, h.store, opt)
	return h
}

// upload puts a photo in S3 and records it in the session as the API does,
// returning the image.uploaded event the API's outbox would carry.
func (h *harness) upload(b []byte) events.Event {
	h.t.Helper()
	ctx := context.Background()
	id := testenv.ID()
	key := "temp/" + h.userID + "/" + id + ".jpg"
	if err := h.blobs.Put(ctx, key, "image/jpeg", bytes.NewReader(b), int64(len(b))); err != nil {
		h.t.Fatal(err)
	}
	sess, _, err := h.store.AddImage(ctx, h.userID, h.sessionID, session.Image{
		ID: id, S3Key: key, Uploaded: true, Source: "mobile", ContentType: "image/jpeg", Size: int64(len(b)),
	})
	if err != nil {
		h.t.Fatal(err)
	}
	img, _ := sess.Image(id)
	ev, err := events.New("/clinimg/api", events.ImageUploaded, h.userID,
		session.ImageEvent{SessionID: sess.SessionID, Version: sess.Version, ImageCount: len(sess.Images), Image: img}, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

func imageID(t testing.TB, ev events.Event) string {
	var d session.ImageEvent
	if err := ev.DataAs(&d); err != nil {
		t.Fatal(err)
	}
	return d.Image.ID
}

func (h *harness) image(id string) session.Image {
	h.t.Helper()
	sess, err := h.store.Peek(context.Background(), h.userID)
	if err != nil {
		h.t.Fatal(err)
	}
	img, ok := sess.Image(id)
	if !ok {
		h.t.Fatalf("image %s not in the session", id)
	}
	return img
}

// outbox lists the events of the given types the session store emitted.
func (h *harness) outbox(types ...events.Type) []session.ImageEvent {
	h.t.Helper()
	msgs, err := h.rdb.XRange(context.Background(), h.store.Keys.Outbox(), "-", "+").Result()
	if err != nil {
		h.t.Fatal(err)
	}
	var out []session.ImageEvent
	for _, m := range msgs {
		raw, _ := m.Values["event"].(string)
		ev, err := events.Decode([]byte(raw))
		if err != nil {
			h.t.Fatal(err)
		}
		for _, t := range types {
			if ev.Type == t {
				var d session.ImageEvent
				if err := ev.DataAs(&d); err != nil {
					h.t.Fatal(err)
				}
				out = append(out, d)
			}
		}
	}
	return out
}

func (h *harness) object(key string) []byte {
	h.t.Helper()
	body, _, ct, err := h.blobs.Open(context.Background(), key)
	if err != nil {
		h.t.Fatalf("open %s: %v", key, err)
	}
	defer body.Close()
	if ct != "image/jpeg" {
		h.t.Errorf("%s stored as %q, want image/jpeg", key, ct)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// metadataIn lists the metadata segments of a JPEG and any planted secret.
func metadataIn(t testing.TB, b []byte) []string {
	t.Helper()
	segs, trailing, err := hygiene.Segments(b)
	if err != nil {
		t.Fatalf("not a well-formed JPEG: %v", err)
	}
	var out []string
	for _, s := range segs {
		switch {
		case s.Name == "APP0" && s.Ident == "JFIF" && s.Size == 18,
			s.Name == "APP2" && s.Ident == "ICC_PROFILE",
			s.Name == "APP14" && s.Ident == "Adobe":
		case strings.HasPrefix(s.Name, "APP"), s.Name == "COM":
			out = append(out, s.Name+" "+s.Ident)
		}
	}
	if trailing > 0 {
		out = append(out, "trailer")
	}
	for _, s := range hygienetest.Secrets {
		if bytes.Contains(b, []byte(s)) {
			out = append(out, "secret "+s)
		}
	}
	return out
}

func TestReadyPhotos(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	cases := []struct {
		name            string
		src             []byte
		width, height   int
		preview, viewer image.Point
	}{
		{"12 MP, orientation 6", hygienetest.Shared(t, "photo-12mp-orient6.jpg"), 3024, 4032, image.Pt(240, 320), image.Pt(960, 1280)},
		{"1920 px from the phone page", hygienetest.Shared(t, "photo-1920.jpg"), 1920, 1440, image.Pt(320, 240), image.Pt(1280, 960)},
		{"GPS-tagged, orientation 6", hygienetest.GPSJPEG(6), 640, 480, image.Pt(320, 240), image.Pt(640, 480)},
		{"GPS-tagged, upright", hygienetest.GPSJPEG(1), 640, 480, image.Pt(320, 240), image.Pt(640, 480)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := h.upload(c.src)
			id := imageID(t, ev)
			if err := h.proc.Handle(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			img := h.image(id)
			clean := h.object(CleanKey(h.userID, id))
			sum := sha256.Sum256(clean)
			orig := sha256.Sum256(c.src)
			sha1sum := sha1.Sum(clean)
			want := session.Processed{
				Status:     session.ImageReady,
				PreviewKey: "temp/" + h.userID + "/" + id + ".preview.jpg",
				ViewerKey:  "temp/" + h.userID + "/" + id + ".viewer.jpg",
				CleanKey:   "temp/" + h.userID + "/" + id + ".clean.jpg",
				CleanSize:  int64(len(clean)), SHA256: hex.EncodeToString(sum[:]),
				Width: c.width, Height: c.height, Size: int64(len(c.src)), ContentType: "image/jpeg",
				// The chain of custody: the bytes uploaded, the bytes the record gets.
				OriginalSHA256: hex.EncodeToString(orig[:]), CleanSHA1: base64.StdEncoding.EncodeToString(sha1sum[:]),
			}
			got := session.Processed{Status: img.Status, PreviewKey: img.PreviewKey, ViewerKey: img.ViewerKey, CleanKey: img.CleanKey,
				CleanSize: img.CleanSize, SHA256: img.SHA256, Width: img.Width, Height: img.Height, Size: img.Size, ContentType: img.ContentType, RejectReason: img.RejectReason,
				OriginalSHA256: img.OriginalSHA256, CleanSHA1: img.CleanSHA1}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("session image (-want +got):\n%s", d)
			}
			for key, size := range map[string]image.Point{img.PreviewKey: c.preview, img.ViewerKey: c.viewer, img.CleanKey: image.Pt(c.width, c.height)} {
				b := h.object(key)
				h, err := hygiene.Sniff(b)
				if err != nil {
					t.Fatalf("%s: %v", key, err)
				}
				if got := image.Pt(h.Width, h.Height); got != size {
					t.Errorf("%s is %v, want %v", key, got, size)
				}
				if m := metadataIn(t, b); len(m) > 0 {
					t.Errorf("%s carries %q", key, m)
				}
			}
			evs := h.outbox(events.ImageProcessed)
			if len(evs) == 0 || evs[len(evs)-1].Image.ID != id || evs[len(evs)-1].Image.PreviewKey != img.PreviewKey {
				t.Errorf("no image.processed event for %s in the outbox", id)
			}
		})
	}
}

// Must show 3: files posing as photos are rejected with a clear reason on
// the session and no preview.
func TestRejectedPhotos(t *testing.T) {
	h := newHarness(t, ProcessorOptions{MaxBytes: 1 << 20})
	fix := hygienetest.Fixtures()
	cases := []struct {
		name, code, reason string
		src                []byte
	}{
		{"text named .jpg", "not_image", "not an image: the file is text", fix["notes.jpg"]},
		{"HTML page", "not_image", "not an image: the file is an HTML page", fix["page.html"]},
		{"truncated JPEG", "corrupt", "corrupt image: the JPEG is truncated (the upload may have been cut off)", fix["truncated.jpg"]},
		{"pixel-flood PNG", "too_many_pixels", "image too large: 20000×20000 pixels (400 megapixels; the limit is 50)", fix["flood.png"]},
		{"over the byte limit", "too_large", "file too large: 3.9 MB (the limit is 1 MB)", hygienetest.Shared(t, "photo-12mp-orient6.jpg")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, putsBefore := h.objects.counts()
			counted := testutil.ToFloat64(h.proc.m.rejected.WithLabelValues(c.code))
			ev := h.upload(c.src)
			id := imageID(t, ev)
			if err := h.proc.Handle(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			img := h.image(id)
			got := []string{string(img.Status), img.RejectReason, img.PreviewKey, img.ViewerKey, img.CleanKey}
			if d := cmp.Diff([]string{"rejected", c.reason, "", "", ""}, got); d != "" {
				t.Errorf("status, reason, keys (-want +got):\n%s", d)
			}
			if _, puts := h.objects.counts(); puts != putsBefore {
				t.Errorf("%d objects written for a rejected photo", puts-putsBefore)
			}
			for _, key := range []string{PreviewKey(h.userID, id), ViewerKey(h.userID, id), CleanKey(h.userID, id)} {
				if _, err := h.blobs.Head(context.Background(), key); !errors.Is(err, blob.ErrNotFound) {
					t.Errorf("%s: %v, want not found", key, err)
				}
			}
			evs := h.outbox(events.ImageRejected)
			if len(evs) == 0 || evs[len(evs)-1].Image.ID != id || evs[len(evs)-1].Image.RejectReason != c.reason {
				t.Errorf("no image.rejected event with the reason in the outbox")
			}
			if n := testutil.ToFloat64(h.proc.m.rejected.WithLabelValues(c.code)) - counted; n != 1 {
				t.Errorf("rejected_total{reason=%q} rose by %v, want 1", c.code, n)
			}
		})
	}
}

func TestMissingObjectIsRejected(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	ev := h.upload(hygienetest.Plain(64, 48))
	id := imageID(t, ev)
	if err := h.blobs.Delete(context.Background(), h.image(id).S3Key); err != nil {
		t.Fatal(err)
	}
	if err := h.proc.Handle(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if img := h.image(id); img.Status != session.ImageRejected || img.RejectReason != "the uploaded file is missing from storage; upload the photo again" {
		t.Errorf("got %s %q", img.Status, img.RejectReason)
	}
}

// Must show 4: a redelivered event does no second write.
func TestRedeliveryWritesNothing(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	ev := h.upload(hygienetest.Shared(t, "photo-1920.jpg"))
	id := imageID(t, ev)
	for range 3 {
		if err := h.proc.Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	opens, puts := h.objects.counts()
	if opens != 1 || puts != 3 {
		t.Errorf("%d reads and %d writes of S3 for three deliveries, want 1 and 3", opens, puts)
	}
	if n := len(h.outbox(events.ImageProcessed)); n != 1 {
		t.Errorf("%d image.processed events, want 1", n)
	}
	if img := h.image(id); img.Status != session.ImageReady {
		t.Errorf("status %s", img.Status)
	}
	// A rejected photo's redelivery reads nothing either.
	ev = h.upload([]byte(hygienetest.Text))
	for range 2 {
		if err := h.proc.Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if opens, _ := h.objects.counts(); opens != 2 {
		t.Errorf("%d reads, want 2", opens)
	}
}

// A transient S3 fault is an error for consume to retry with backoff (not
// a permanent one), leaves the photo processing, and a retry completes it.
func TestTransientFaultsRetry(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	unavailable := errors.New("s3 get: 503 SlowDown")
	h.objects.failOpen = func(n int) error {
		if n == 1 {
			return unavailable
		}
		return nil
	}
	h.objects.failPut = func(n int) error {
		if n == 2 { // the viewer image of the second attempt
			return errors.New("s3 put: connection reset")
		}
		return nil
	}
	ev := h.upload(hygienetest.GPSJPEG(1))
	id := imageID(t, ev)
	for attempt, wantErr := range []string{"open photo: s3 get: 503 SlowDown", "store " + id + ".viewer.jpg: s3 put: connection reset", ""} {
		err := h.proc.Handle(context.Background(), ev)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if gotErr != wantErr {
			t.Fatalf("attempt %d: error %q, want %q", attempt+1, gotErr, wantErr)
		}
		var perm *consume.PermanentError
		if errors.As(err, &perm) {
			t.Fatalf("attempt %d: a transient fault must not be permanent", attempt+1)
		}
		if st := h.image(id).Status; err != nil && st != session.ImageProcessing {
			t.Fatalf("attempt %d: status %s after a fault", attempt+1, st)
		}
	}
	if img := h.image(id); img.Status != session.ImageReady {
		t.Errorf("status %s after the retry", img.Status)
	}
}

// A photo removed while it was being processed leaves nothing behind.
func TestRemovedMeanwhile(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	ev := h.upload(hygienetest.GPSJPEG(1))
	id := imageID(t, ev)
	h.objects.afterPut = func(key string) {
		if strings.HasSuffix(key, ".clean.jpg") {
			if _, _, err := h.store.RemoveImage(context.Background(), h.userID, "", id); err != nil {
				t.Error(err)
			}
		}
	}
	if err := h.proc.Handle(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{PreviewKey(h.userID, id), ViewerKey(h.userID, id), CleanKey(h.userID, id)} {
		if _, err := h.blobs.Head(context.Background(), key); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("%s: %v, want deleted", key, err)
		}
	}
	if n := len(h.outbox(events.ImageProcessed, events.ImageRejected)); n != 0 {
		t.Errorf("%d events for a removed photo", n)
	}
}

func TestEventsNeedingNoWork(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	ev := h.upload(hygienetest.Plain(64, 48))
	other, err := events.New("/clinimg/api", events.ImageUploaded, "user_nosuchsession",
		session.ImageEvent{Image: session.Image{ID: "abc"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	gone, err := events.New("/clinimg/api", events.ImageUploaded, h.userID,
		session.ImageEvent{Image: session.Image{ID: "not-in-session"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	updated := ev
	updated.Type = events.ImageUpdated
	for _, e := range []events.Event{other, gone, updated} {
		if err := h.proc.Handle(context.Background(), e); err != nil {
			t.Errorf("%s for %s: %v", e.Type, e.Subject, err)
		}
	}
	if opens, puts := h.objects.counts(); opens+puts != 0 {
		t.Errorf("%d S3 reads and %d writes for events needing no work", opens, puts)
	}
	bad := ev
	bad.Data = []byte(`"not an object"`)
	var perm *consume.PermanentError
	if err := h.proc.Handle(context.Background(), bad); !errors.As(err, &perm) {
		t.Errorf("undecodable data: %v, want a permanent error", err)
	}
}

// When retries run out, the photo is marked rejected instead of spinning
// for ever on the screens.
func TestGiveUp(t *testing.T) {
	h := newHarness(t, ProcessorOptions{})
	ev := h.upload(hygienetest.Plain(64, 48))
	id := imageID(t, ev)
	if err := h.proc.GiveUp(context.Background(), ev, "s3 unavailable"); err != nil {
		t.Fatal(err)
	}
	img := h.image(id)
	if img.Status != session.ImageRejected || !strings.Contains(img.RejectReason, "could not be processed") {
		t.Errorf("got %s %q", img.Status, img.RejectReason)
	}
}

// staleSessions hides the session from the first hide reads, as a lagging
// Upstash replica would answer a read from another process.
type staleSessions struct {
	Sessions
	mu    sync.Mutex
	hide  int
	reads int
}

func (s *staleSessions) Peek(ctx context.Context, userID string) (session.Session, error) {
	s.mu.Lock()
	s.reads++
	hidden := s.reads <= s.hide
	s.mu.Unlock()
	if hidden {
		return session.Session{}, session.ErrNotFound
	}
	return s.Sessions.Peek(ctx, userID)
}

// A read that misses the photo does not drop the work: the photo hidden
// from the first read (or the first two) is still processed; one hidden
// from every read the recheck makes is dropped, after exactly that many.
func TestStaleReadDoesNotDropWork(t *testing.T) {
	rc := session.Recheck{Reads: 3, Delay: 10 * time.Millisecond}
	for _, tt := range []struct {
		hide      int
		processed bool
	}{{0, true}, {1, true}, {2, true}, {3, false}} {
		t.Run(fmt.Sprintf("hidden from %d reads", tt.hide), func(t *testing.T) {
			h := newHarness(t, ProcessorOptions{})
			stale := &staleSessions{Sessions: h.store, hide: tt.hide}
			h.proc = NewProcessor(h.objects, stale, ProcessorOptions{Recheck: rc})
			ev := h.upload(hygienetest.Plain(64, 48))
			if err := h.proc.Handle(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			st := h.image(imageID(t, ev)).Status
			if got := st == session.ImageReady; got != tt.processed {
				t.Errorf("status %s after %d hidden reads, want processed %v", st, tt.hide, tt.processed)
			}
			if want := min(tt.hide+1, rc.Reads); stale.reads != want {
				t.Errorf("%d reads, want %d", stale.reads, want)
			}
		})
	}
}
