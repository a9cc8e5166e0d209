package audit_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
)

var t0 = time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)

func event(t testing.TB, id string, typ events.Type, data any) events.Event {
	t.Helper()
	ev, err := events.NewWithID(id, "/test", typ, "u1", data, t0)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

const note = "suspicious pigmented lesion, family history of melanoma"

func img(extra func(*session.Image)) session.Image {
	im := session.Image{ID: "img1", S3Key: "temp/u1/img1.jpg", Source: "mobile", Device: "iPhone, iOS 18.1, Safari 18",
		CapturedAt: t0.Add(-time.Second), ContentType: "image/jpeg", Size: 2048,
		Metadata: session.Metadata{BodySite: "368208006", Laterality: "left", Notes: note}}
	if extra != nil {
		extra(&im)
	}
	return im
}

// Each event gives exactly its records, and none carries the note the
// event does.
func TestFromEvent(t *testing.T) {
	base := audit.Record{EventID: "e", ID: "e", At: t0, Version: 3, SessionID: "s1"}
	with := func(f func(*audit.Record)) audit.Record {
		r := base
		f(&r)
		return r
	}
	cases := []struct {
		name string
		typ  events.Type
		data any
		want []audit.Record
	}{
		{"started", events.SessionStarted, map[string]any{"sessionId": "s1", "version": 3, "patientId": "p1", "encounterId": "e1"},
			[]audit.Record{with(func(r *audit.Record) { r.Step, r.PatientID, r.EncounterID = audit.SessionStarted, "p1", "e1" })}},
		{"captured and uploaded", events.ImageUploaded, session.ImageEvent{SessionID: "s1", Version: 3, Image: img(nil), By: session.ActorPhone},
			[]audit.Record{
				with(func(r *audit.Record) {
					r.ID, r.At, r.Step, r.ImageID, r.By, r.Source, r.Device = "e/0", t0.Add(-time.Second), audit.Captured, "img1", "phone", "mobile", "iPhone, iOS 18.1, Safari 18"
				}),
				with(func(r *audit.Record) {
					r.ID, r.Step, r.ImageID, r.By, r.Bytes, r.ContentType = "e/1", audit.Uploaded, "img1", "phone", 2048, "image/jpeg"
				}),
			}},
		{"verified and cleaned", events.ImageProcessed, session.ImageEvent{SessionID: "s1", Version: 3, Image: img(func(im *session.Image) {
			im.OriginalSHA256, im.CleanSHA1, im.CleanSize = "ab12", "q80=", 1500
		})}, []audit.Record{
			with(func(r *audit.Record) {
				r.ID, r.Step, r.ImageID, r.Bytes, r.ContentType, r.SHA256 = "e/0", audit.Verified, "img1", 2048, "image/jpeg", "ab12"
			}),
			with(func(r *audit.Record) {
				r.ID, r.Step, r.ImageID, r.Bytes, r.ContentType, r.SHA1 = "e/1", audit.Cleaned, "img1", 1500, "image/jpeg", "q80="
			}),
		}},
		{"coded", events.ImageUpdated, session.ImageEvent{SessionID: "s1", Version: 3, Image: img(nil), Fields: []string{"notes", "viewType"}, By: session.ActorDesktop},
			[]audit.Record{with(func(r *audit.Record) {
				r.Step, r.ImageID, r.Fields, r.By = audit.Coded, "img1", []string{"notes", "viewType"}, "desktop"
			})}},
		{"saved unchanged", events.ImageUpdated, session.ImageEvent{SessionID: "s1", Version: 3, Image: img(nil), Fields: []string{}}, nil},
		{"deleted", events.ImageRemoved, session.ImageRemovedEvent{SessionID: "s1", Version: 3, ImageID: "img1", By: session.ActorPhone},
			[]audit.Record{with(func(r *audit.Record) { r.Step, r.ImageID, r.By = audit.Deleted, "img1", "phone" })}},
		{"attempt waits", events.CommitProgress, session.CommitEvent{SessionID: "s1", Version: 3, CommitID: "c1", Attempt: 2,
			Waiting: &session.CommitWait{Reason: session.WaitALEXUnavailable, Message: "ALEX is unavailable (503)"}},
			[]audit.Record{with(func(r *audit.Record) {
				r.Step, r.CommitID, r.Attempt, r.Outcome, r.Detail = audit.CommitAttempt, "c1", 2, "waiting", "alex_unavailable"
			})}},
		{"in the record", events.CommitProgress, session.CommitEvent{SessionID: "s1", Version: 3, CommitID: "c1", ImageID: "img1",
			State: session.PhotoInRecord, MediaID: "m9", Hash: "q80="},
			[]audit.Record{with(func(r *audit.Record) {
				r.Step, r.CommitID, r.ImageID, r.Outcome, r.MediaID, r.SHA1 = audit.CommitPhoto, "c1", "img1", "in_record", "m9", "q80="
			})}},
		{"failed", events.CommitFailed, session.CommitEvent{SessionID: "s1", Version: 3, CommitID: "c1",
			Errors: []session.ImageError{{ImageID: "img1", Error: "ALEX refused it"}}},
			[]audit.Record{with(func(r *audit.Record) {
				r.Step, r.CommitID, r.Outcome, r.Photos = audit.CommitFailed, "c1", "failed", []audit.PhotoError{{ImageID: "img1", Error: "ALEX refused it"}}
			})}},
		{"consent without its reason", events.ConsentRecorded, map[string]any{"sessionId": "s1", "version": 3, "by": "desktop",
			"consent": session.Consent{Method: "not_obtainable", Reason: note, Purposes: []string{"record"}, Via: "desktop"}},
			[]audit.Record{with(func(r *audit.Record) {
				r.Step, r.Method, r.Purposes, r.By = audit.ConsentRecorded, "not_obtainable", []string{"record"}, "desktop"
			})}},
		{"pending count", events.PhonePending, map[string]any{"sessionId": "s1", "version": 3, "pendingPhotos": 2}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := event(t, "e", c.typ, c.data)
			got, err := audit.FromEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			raw, _ := json.Marshal(got)
			if bytes.Contains(raw, []byte("melanoma")) {
				t.Errorf("a record carries the note: %s", raw)
			}
		})
	}
	if _, err := audit.FromEvent(event(t, "e", events.ImageRemoved, map[string]any{"imageId": "x"})); !errors.Is(err, audit.ErrNotAudited) {
		t.Errorf("event without a session: %v, want ErrNotAudited", err)
	}
}

// No note reaches a record, whatever the note says and whichever event
// carries it (random notes on every kind of image event).
func FuzzNoNoteInRecords(f *testing.F) {
	f.Add("left forearm, 4 mm, irregular border", uint8(0))
	f.Add(`"}]{"step":"coded`, uint8(3))
	f.Fuzz(func(t *testing.T, text string, k uint8) {
		if len(text) < 8 {
			return
		}
		types := []events.Type{events.ImageUploaded, events.ImageUpdated, events.ImageProcessed, events.ImageRejected}
		im := img(func(im *session.Image) { im.Metadata.Notes = text; im.Metadata.BodySiteDisplay = "" })
		ev := event(t, "e", types[int(k)%len(types)], session.ImageEvent{SessionID: "s1", Image: im, Fields: []string{"notes"}})
		recs, err := audit.FromEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(recs)
		var buf bytes.Buffer
		if err := audit.WriteCSV(&buf, recs); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			r.Fields = nil // the field's name "notes" may be in the text
			b, _ := json.Marshal(r)
			if bytes.Contains(b, []byte(text)) || strings.Contains(r.Detail, text) {
				t.Fatalf("a record carries the note %q: %s (all: %s)", text, b, raw)
			}
		}
	})
}

func TestCSV(t *testing.T) {
	recs := []audit.Record{{ID: "e", EventID: "e", At: t0, Version: 1, SessionID: "s1", Step: audit.Captured, ImageID: "img1",
		Device: "=HYPERLINK(\"x\")", SHA1: "+abc="}}
	var buf bytes.Buffer
	if err := audit.WriteCSV(&buf, recs); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || len(rows[1]) != len(audit.CSVHeader) {
		t.Fatalf("rows %v", rows)
	}
	col := func(name string) string {
		for i, h := range audit.CSVHeader {
			if h == name {
				return rows[1][i]
			}
		}
		t.Fatalf("no column %s", name)
		return ""
	}
	if got := col("device"); got != `'=HYPERLINK("x")` {
		t.Errorf("device %q: a formula must be defused", got)
	}
	if got := col("sha1"); got != "+abc=" {
		t.Errorf("sha1 %q: a hash must stay as it is", got)
	}
}

// flaky is a bucket that fails some writes: before the object changes, or
// after (the write landed, the answer was lost), as a seeded schedule says.
type flaky struct {
	audit.Objects
	mu     sync.Mutex
	rnd    *rand.Rand
	failed int
}

func (f *flaky) Put(ctx context.Context, key, ct string, body io.ReadSeeker, size int64) error {
	f.mu.Lock()
	n := f.rnd.IntN(4)
	if n < 2 {
		f.failed++
	}
	f.mu.Unlock()
	switch n {
	case 0:
		return errors.New("injected: S3 unavailable")
	case 1:
		if err := f.Objects.Put(ctx, key, ct, body, size); err != nil {
			return err
		}
		return errors.New("injected: answer lost after the write")
	}
	return f.Objects.Put(ctx, key, ct, body, size)
}

// session is the events of one scripted session (two photos, one
// recoded, one deleted, a commit) for the redelivery test.
func sessionEvents(t testing.TB, sessionID string, n int) []events.Event {
	var out []events.Event
	v := int64(0)
	add := func(typ events.Type, data func(v int64) any) {
		v++
		out = append(out, event(t, fmt.Sprintf("%s-%02d", sessionID, len(out)), typ, data(v)))
	}
	add(events.SessionStarted, func(v int64) any {
		return map[string]any{"sessionId": sessionID, "version": v, "patientId": "p1", "encounterId": "e1"}
	})
	for i := range n {
		im := img(func(im *session.Image) { im.ID = fmt.Sprintf("img%d", i) })
		add(events.ImageUploaded, func(v int64) any { return session.ImageEvent{SessionID: sessionID, Version: v, Image: im} })
		add(events.ImageProcessed, func(v int64) any { return session.ImageEvent{SessionID: sessionID, Version: v, Image: im} })
		add(events.ImageUpdated, func(v int64) any {
			return session.ImageEvent{SessionID: sessionID, Version: v, Image: im, Fields: []string{"bodySite"}}
		})
	}
	add(events.ImageRemoved, func(v int64) any { return session.ImageRemovedEvent{SessionID: sessionID, Version: v, ImageID: "img0"} })
	add(events.CommitRequested, func(v int64) any { return session.CommitEvent{SessionID: sessionID, Version: v, CommitID: "c1"} })
	add(events.CommitSucceeded, func(v int64) any { return session.CommitEvent{SessionID: sessionID, Version: v, CommitID: "c1"} })
	return out
}

func want(t testing.TB, evs []events.Event) []audit.Record {
	var out []audit.Record
	for _, ev := range evs {
		recs, err := audit.FromEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, recs...)
	}
	return out
}

// Exactly once under redelivery, through a real JetStream consumer: writes
// fail before or after they land (seeded), every failure is written again
// (held, not acked), and the trail ends with every record once, in stream
// order. The same
// events published again under their ids change nothing either.
func TestWriterOnJetStreamRedelivery(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	s3, _ := testenv.S3(t)
	_, js, names := testenv.Streams(t)
	ctx := context.Background()
	cfg := names.ConsumerConfig(audit.Consumer(0))
	cons, err := js.CreateOrUpdateConsumer(ctx, names.Stream, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	bucket := &flaky{Objects: s3, rnd: rand.New(rand.NewPCG(seed, 7))}
	store := audit.NewStore(bucket)
	w := audit.NewWriter(store, nil)

	sessionID := "s-" + testenv.ID()
	evs := sessionEvents(t, sessionID, 3)
	for _, ev := range evs {
		if _, err := events.Publish(ctx, js, names, ev); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- w.Consume(runCtx, stream, cons, consume.Options{Backoff: func(uint64) time.Duration { return 10 * time.Millisecond }})
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	read := audit.NewStore(s3)
	wantRecs := want(t, evs)
	var got []audit.Record
	testenv.Eventually(t, 60*time.Second, "every record in the trail", func() bool {
		got, _ = read.Read(ctx, "u1", sessionID)
		return len(got) >= len(wantRecs)
	})
	// Republished (an outbox replaying after a crash) beyond the stream's
	// dedupe: the same ids reach the writer again and add nothing.
	for _, ev := range evs[:4] {
		raw, _ := json.Marshal(ev)
		if err := w.Handle(ctx, mustDecode(t, raw)); err != nil && !strings.Contains(err.Error(), "injected") {
			t.Fatal(err)
		}
	}
	got, err = read.Read(ctx, "u1", sessionID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantRecs, got); diff != "" {
		t.Errorf("trail (-want +got), seed %d:\n%s", seed, diff)
	}
	bucket.mu.Lock()
	t.Logf("%d writes failed and were redelivered", bucket.failed)
	bucket.mu.Unlock()
}

func mustDecode(t testing.TB, raw []byte) events.Event {
	ev, err := events.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// The document only grows: each write keeps every byte before it.
func TestAppendKeepsWhatWasWritten(t *testing.T) {
	s3, _ := testenv.S3(t)
	ctx := context.Background()
	store := audit.NewStore(s3)
	sessionID := "s-" + testenv.ID()
	var before []byte
	for i, ev := range sessionEvents(t, sessionID, 2) {
		recs, _ := audit.FromEvent(ev)
		if _, err := store.Append(ctx, "u1", sessionID, recs); err != nil {
			t.Fatal(err)
		}
		body, _, _, err := s3.Open(ctx, audit.Key("u1", sessionID))
		if err != nil {
			t.Fatal(err)
		}
		now, _ := io.ReadAll(body)
		body.Close()
		if !bytes.HasPrefix(now, before) {
			t.Fatalf("write %d rewrote what was there", i)
		}
		before = now
	}
	if _, err := store.Read(ctx, "u1", "s-none"); !errors.Is(err, audit.ErrNotFound) {
		t.Errorf("missing trail: %v, want ErrNotFound", err)
	}
}
