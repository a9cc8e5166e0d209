package thumbnailer

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/hygiene/hygienetest"
	"github.com/clinicalimages/clinimg/pkg/session"
)

func TestConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := ConfigFromEnv(env(map[string]string{"THUMBNAIL_WORKERS": "3", "PREVIEW_SIZE": "256", "THUMBNAIL_MAX_BYTES": "1048576"}))
	if err != nil {
		t.Fatal(err)
	}
	got := []any{c.Workers, c.MaxBytes, c.MaxPixels, c.PreviewSize, c.ViewerSize, c.PreviewQuality, c.CleanQuality, c.Common.OpsAddr}
	want := []any{3, int64(1 << 20), int64(50_000_000), 256, 1280, 80, 92, ":9094"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	_, err = ConfigFromEnv(env(map[string]string{"THUMBNAIL_WORKERS": "0", "PREVIEW_SIZE": "2000", "VIEWER_SIZE": "1000", "CLEAN_QUALITY": "101", "THUMBNAIL_MAX_PIXELS": "x"}))
	var msgs []string
	if err != nil {
		msgs = strings.Split(err.Error(), "\n")
	}
	wantMsgs := []string{
		`THUMBNAIL_MAX_PIXELS: "x" is not an integer`,
		"THUMBNAIL_WORKERS: 0 is not between 1 and 256",
		"PREVIEW_SIZE (2000) is larger than VIEWER_SIZE (1000)",
		"CLEAN_QUALITY: 101 is not between 1 and 100",
	}
	if d := cmp.Diff(wantMsgs, msgs); d != "" {
		t.Errorf("every problem at once (-want +got):\n%s", d)
	}
}

// The whole service on real servers: a photo recorded in a session (Redis +
// outbox) reaches the thumbnailer through JetStream, and the session update
// and its event come back through the thumbnailer's own outbox publisher.
func TestRunProcessesRecordedPhotos(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	nats, _, js := testenv.JetStream(t)
	blobs, s3srv := testenv.S3(t)
	log, _ := testenv.Logger(t)
	env := map[string]string{
		"REDIS_URL": testenv.RedisURL(), "REDIS_KEY_PREFIX": prefix, "NATS_URL": nats.URL, "OPS_ADDR": "127.0.0.1:0",
		"S3_BUCKET_NAME": blobs.Bucket(), "S3_ENDPOINT": s3srv.URL, "S3_PATH_STYLE": "true",
		"AWS_ACCESS_KEY_ID": s3srv.AccessKey, "AWS_SECRET_ACCESS_KEY": s3srv.SecretKey, "THUMBNAIL_WORKERS": "2",
	}
	cfg, err := ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Logger, cfg.Registry = log, reg
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	// Watch what the screens would get.
	var mu sync.Mutex
	seen := map[string]events.Event{} // image id -> processed/rejected event
	oc, err := js.OrderedConsumer(ctx, events.DefaultNames.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.DefaultNames.Filter(events.ImageProcessed), events.DefaultNames.Filter(events.ImageRejected)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) {
		ev, err := events.Decode(m.Data())
		if err != nil {
			t.Error(err)
			return
		}
		var d session.ImageEvent
		if err := ev.DataAs(&d); err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		seen[d.Image.ID] = ev
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	// The API's part: object in S3, image recorded with its outbox event.
	store := session.NewStore(rdb, session.Options{Prefix: prefix})
	userID, sessionID := "user_"+testenv.ID(), testenv.ID()
	if _, err := store.Start(ctx, session.StartParams{UserID: userID, PatientID: "p", EncounterID: "e", Token: testenv.ID(), SessionID: sessionID}); err != nil {
		t.Fatal(err)
	}
	photos := map[string][]byte{
		testenv.ID(): hygienetest.Shared(t, "photo-1920.jpg"),
		testenv.ID(): hygienetest.GPSJPEG(6),
		testenv.ID(): []byte(hygienetest.HTML),
	}
	for id, b := range photos {
		key := "temp/" + userID + "/" + id + ".jpg"
		if err := blobs.Put(ctx, key, "image/jpeg", bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
		if _, _, err := store.AddImage(ctx, userID, sessionID, session.Image{ID: id, S3Key: key, Uploaded: true, Source: "mobile", ContentType: "image/jpeg", Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
	}

	testenv.Eventually(t, 60*time.Second, "an event for every photo", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == len(photos)
	})
	sess, err := store.Peek(ctx, userID)
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		Status, Event, Reason string
		HasKeys               bool
	}
	got, want := map[string]outcome{}, map[string]outcome{}
	for id, b := range photos {
		img, _ := sess.Image(id)
		mu.Lock()
		ev := seen[id]
		mu.Unlock()
		got[id] = outcome{string(img.Status), string(ev.Type), img.RejectReason, img.PreviewKey != "" && img.ViewerKey != "" && img.CleanKey != ""}
		if bytes.HasPrefix(b, []byte("<!DOCTYPE")) {
			want[id] = outcome{"rejected", "image.rejected", "not an image: the file is an HTML page", false}
		} else {
			want[id] = outcome{"ready", "image.processed", "", true}
		}
		if ev.Subject != userID {
			t.Errorf("event subject %q, want the user", ev.Subject)
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("outcomes (-want +got):\n%s", d)
	}
	if n := testutil.ToFloat64(findCounter(t, reg, "clinimg_thumbnailer_previews_total")); n != 2 {
		t.Errorf("previews_total %v, want 2", n)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// findCounter gathers one metric family from reg as a collector-free value.
func findCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: "copy"},
				func() float64 { return mf.GetMetric()[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}
