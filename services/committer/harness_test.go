package committer_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"math/rand/v2"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/committer"
)

const (
	testPatient = "pat-1234"
	testNHI     = "ZZZ0016"
)

// env is one test's world: its Redis prefix, JetStream server, S3 bucket,
// ALEX simulator, and a session store on them.
type env struct {
	t      testing.TB
	rdb    *redis.Client
	prefix string
	nats   *testenv.NATS
	nc     *nats.Conn
	js     jetstream.JetStream
	blobs  *blob.Store
	s3     *testenv.S3Server
	sim    *alexsim.Server
	simURL string
	store  *session.Store
	vars   map[string]string

	mu    sync.Mutex
	bytes map[string][]byte // image id -> the bytes its Media must carry (its clean copy)
}

func newEnv(t testing.TB, opt alexsim.Options) *env {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	ctx := context.Background()
	if _, err := events.Ensure(ctx, js, events.DefaultNames, 1); err != nil {
		t.Fatal(err)
	}
	blobs, s3srv := testenv.S3(t)
	if opt.Patients == nil {
		opt.Patients = map[string]string{testPatient: testNHI}
	}
	sim := alexsim.New(opt)
	ts := httptest.NewServer(sim)
	t.Cleanup(ts.Close)
	e := &env{t: t, rdb: rdb, prefix: prefix, nats: n, nc: nc, js: js, blobs: blobs, s3: s3srv, sim: sim, simURL: ts.URL,
		store: session.NewStore(rdb, session.Options{Prefix: prefix, Source: "/test"}), bytes: map[string][]byte{}}
	s3c := s3srv.Config(blobs.Bucket())
	e.vars = map[string]string{
		"REDIS_URL":             testenv.RedisURL(),
		"REDIS_KEY_PREFIX":      prefix,
		"NATS_URL":              n.URL,
		"S3_BUCKET_NAME":        s3c.Bucket,
		"S3_ENDPOINT":           s3c.Endpoint,
		"AWS_REGION":            s3c.Region,
		"AWS_ACCESS_KEY_ID":     s3c.AccessKey,
		"AWS_SECRET_ACCESS_KEY": s3c.SecretKey,
		"S3_PATH_STYLE":         "true",
		"OPS_ADDR":              "127.0.0.1:0",
		"LOG_LEVEL":             "debug",
		"ALEX_REQUEST_TIMEOUT":  "2s",
		"COMMIT_RETRY_BUDGET":   "2m",
		"COMMIT_RETRY_INITIAL":  "100ms",
		"COMMIT_RETRY_MAX":      "1s",
		"NATS_ACK_WAIT":         "2s",
		"COMMIT_LOCK_TTL":       "3s",
	}
	for k, v := range sim.Env(ts.URL) {
		e.vars[k] = v
	}
	return e
}

// config is the committer's configuration for this env, with overrides.
func (e *env) config(over map[string]string) committer.Config {
	e.t.Helper()
	cfg, err := committer.ConfigFromEnv(func(k string) string {
		if v, ok := over[k]; ok {
			return v
		}
		return e.vars[k]
	})
	if err != nil {
		e.t.Fatalf("config: %v", err)
	}
	return cfg
}

// startCommitter runs a committer in this process until the test ends.
// It returns the logs it wrote.
func (e *env) startCommitter(over map[string]string) *testenv.Logs {
	e.t.Helper()
	return e.startCommitterWith(over, nil)
}

// startCommitterWith is startCommitter with the configuration changed by
// change (if not nil) after it is read.
func (e *env) startCommitterWith(over map[string]string, change func(*committer.Config)) *testenv.Logs {
	e.t.Helper()
	cfg := e.config(over)
	if change != nil {
		change(&cfg)
	}
	log, logs := testenv.Logger(e.t)
	cfg.Logger = log
	cfg.Registry = prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- committer.Run(ctx, cfg) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("committer.Run: %v", err)
		}
	})
	return logs
}

// photoSpec is one photo of a test session.
type photoSpec struct {
	meta     session.Metadata
	noClean  bool   // no clean copy yet: the committer cleans it
	original []byte // defaults to a small JPEG
	clean    []byte // the thumbnailer's clean copy; defaults to a small JPEG
	ctype    string
}

// seed starts a session for a new user with the photos given and returns
// the user id and the session.
func (e *env) seed(specs []photoSpec) (string, session.Session) {
	e.t.Helper()
	ctx := context.Background()
	userID := "u" + testenv.ID()
	st, err := e.store.Start(ctx, session.StartParams{UserID: userID, PatientID: testPatient, EncounterID: "enc-1",
		Token: "tok" + testenv.ID(), SessionID: "s" + testenv.ID()})
	if err != nil {
		e.t.Fatal(err)
	}
	sessID := st.Session.SessionID
	small := testJPEG(64, 48, 1)
	var wg sync.WaitGroup
	errs := make(chan error, len(specs))
	sem := make(chan struct{}, 8)
	for i, sp := range specs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			id := fmt.Sprintf("img-%02d-%s", i, testenv.ID())
			orig := sp.original
			if orig == nil {
				orig = small
			}
			ct := sp.ctype
			if ct == "" {
				ct = "image/jpeg"
			}
			key := "temp/" + userID + "/" + id + ".jpg"
			if err := e.blobs.Put(ctx, key, ct, bytes.NewReader(orig), int64(len(orig))); err != nil {
				errs <- err
				return
			}
			img := session.Image{ID: id, S3Key: key, Uploaded: true, Source: "mobile", ContentType: ct,
				Size: int64(len(orig)), Metadata: sp.meta, CapturedAt: time.Date(2026, 11, 23, 9, 30, i, 0, time.UTC)}
			if _, _, err := e.store.AddImage(ctx, userID, sessID, img); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		e.t.Fatal(err)
	}
	sess, err := e.store.Peek(ctx, userID)
	if err != nil {
		e.t.Fatal(err)
	}
	// Clean copies, as the thumbnailer makes them.
	smallClean := testJPEG(64, 48, 2)
	for _, im := range sess.Images {
		sp := specs[indexOf(im.ID)]
		if sp.noClean {
			continue
		}
		clean := sp.clean
		if clean == nil {
			clean = smallClean
		}
		ck := "temp/" + userID + "/" + im.ID + "-clean.jpg"
		if err := e.blobs.Put(ctx, ck, "image/jpeg", bytes.NewReader(clean), int64(len(clean))); err != nil {
			e.t.Fatal(err)
		}
		e.mu.Lock()
		e.bytes[im.ID] = clean
		e.mu.Unlock()
		if _, _, err := e.store.SetProcessed(ctx, userID, im.ID, session.Processed{Status: session.ImageReady,
			PreviewKey: "temp/" + userID + "/" + im.ID + "-p.jpg", CleanKey: ck, CleanSize: int64(len(clean)), Width: 64, Height: 48}); err != nil {
			e.t.Fatal(err)
		}
	}
	sess, err = e.store.Peek(ctx, userID)
	if err != nil {
		e.t.Fatal(err)
	}
	sort.Slice(sess.Images, func(a, b int) bool { return sess.Images[a].ID < sess.Images[b].ID })
	return userID, sess
}

func indexOf(imageID string) int {
	var i int
	fmt.Sscanf(imageID, "img-%02d-", &i)
	return i
}

// commit begins the session's commit and returns the commit id.
func (e *env) commit(userID string, sess session.Session) string {
	e.t.Helper()
	cid := "c" + testenv.ID()
	if _, err := e.store.BeginCommit(context.Background(), userID, sess.SessionID, cid); err != nil {
		e.t.Fatal(err)
	}
	return cid
}

// outcome waits for the commit to finish and returns the session. It
// polls the session's own fields (user:{id} "session"), not every photo:
// decoding 50 photos every 10 ms took CPU from the commit it waits for,
// the more so when the commit is bound by CPU (BenchmarkCommit50).
func (e *env) outcome(userID, commitID string, d time.Duration) session.Session {
	e.t.Helper()
	ctx := context.Background()
	testenv.Eventually(e.t, d, "commit "+commitID+" to finish", func() bool {
		raw, err := e.rdb.HGet(ctx, e.store.Keys.User(userID), "session").Bytes()
		if err != nil {
			return false
		}
		var head struct {
			CommitID string `json:"commitId"`
			Commit   *struct {
				FinishedAt *time.Time `json:"finishedAt"`
			} `json:"commit"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			e.t.Fatalf("session of %s: %v", userID, err)
		}
		return head.CommitID == commitID && head.Commit != nil && head.Commit.FinishedAt != nil
	})
	s, err := e.store.Peek(ctx, userID)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// testJPEG encodes a w x h picture (seeded noise) as JPEG.
func testJPEG(w, h int, seed uint64) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(seed, seed))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8(r.IntN(256)), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// liveIDs returns the Media ids the simulator holds live for each
// identifier value.
func liveIDs(sim *alexsim.Server) map[string][]string {
	out := map[string][]string{}
	for _, m := range sim.Media() {
		if !m.Deleted && m.Status != "entered-in-error" {
			out[m.Identifier.Value] = append(out[m.Identifier.Value], m.ID)
		}
	}
	return out
}

// checkExactlyOnce fails unless the session is committed and every image
// of it has exactly one live Media, under its own identifier, in the
// session's patient, with the SHA-1 of its own bytes, and the session's
// Media ids are those. Media of other sessions are ignored.
func (e *env) checkExactlyOnce(t testing.TB, sess session.Session) {
	t.Helper()
	if sess.CommitStatus != session.CommitCommitted {
		t.Fatalf("commitStatus = %s, want committed (message %q)", sess.CommitStatus, sess.Commit.Message)
	}
	if problems := e.inRecord(sess, sess.Images); len(problems) > 0 {
		t.Fatalf("not exactly once:\n%s", strings.Join(problems, "\n"))
	}
	if len(sess.Commit.MediaResourceIDs) != len(sess.Images) {
		t.Fatalf("mediaResourceIds has %d ids, want %d", len(sess.Commit.MediaResourceIDs), len(sess.Images))
	}
}

// inRecord lists what is wrong with imgs being in the record exactly
// once, as their own photo.
func (e *env) inRecord(sess session.Session, imgs []session.Image) []string {
	byID := map[string]alexsim.Stored{}
	for _, m := range e.sim.Media() {
		byID[m.ID] = m
	}
	live := liveIDs(e.sim)
	var problems []string
	for _, im := range imgs {
		ids := live[im.MediaIdentifier]
		if len(ids) != 1 {
			problems = append(problems, fmt.Sprintf("%s: %d live Media", im.ID, len(ids)))
			continue
		}
		m := byID[ids[0]]
		if im.MediaID != m.ID || im.State() != session.PhotoInRecord {
			problems = append(problems, fmt.Sprintf("%s: session says %s %s, ALEX has %s", im.ID, im.State(), im.MediaID, m.ID))
		}
		if m.PatientRef != "Patient/"+sess.PatientID {
			problems = append(problems, fmt.Sprintf("%s: Media %s is %s's, not %s's", im.ID, m.ID, m.PatientRef, sess.PatientID))
		}
		e.mu.Lock()
		want, ok := e.bytes[im.ID]
		e.mu.Unlock()
		if ok {
			sum := sha1.Sum(want)
			if m.Hash != base64.StdEncoding.EncodeToString(sum[:]) {
				problems = append(problems, fmt.Sprintf("%s: Media %s carries other bytes", im.ID, m.ID))
			}
		}
	}
	return problems
}

var errKilled = errors.New("killed")

func specs(n int) []photoSpec {
	out := make([]photoSpec, n)
	for i := range out {
		out[i].meta = session.Metadata{BodySite: "14975008", BodySiteDisplay: "Forearm structure", Laterality: "left", ViewType: "anterior"}
	}
	return out
}

// noiseJPEG is a w x h picture of random pixels: it compresses badly, so a
// modest size makes a large file (about 1 MB at 1000 x 1000).
func noiseJPEG(w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(7, 7))
	for i := range img.Pix {
		img.Pix[i] = uint8(r.IntN(256))
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 92}); err != nil {
		panic(err)
	}
	return b.Bytes()
}
