package committer

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/jpeg"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/consume"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The commit's promise as a property (DESIGN promise 3): under any schedule
// of ALEX behaviour (500, 503, 429 with Retry-After, timeouts and resets
// before and after the write, empty 200s, 422s, on writes and lookups),
// committer crashes at any step, and GPs who stop, edit, delete, add and
// commit again, with client image ids that collide across sessions and
// GPs, once the schedule settles:
//
//   - every photo is in ALEX exactly once (never written twice, not even
//     withdrawn), in its session's patient, with the SHA-1 of its own bytes;
//   - the session agrees with ALEX: a photo it shows in the record is that
//     Media, at every step, and a committed session lists exactly those;
//   - no photo the GP did not delete is lost.
//
// The committer runs in this process, one incarnation per delivery; a crash
// at step k (a Redis command or an ALEX request) makes every later step of
// that incarnation fail, as if the process had died there, while the
// requests already sent finish at ALEX with their answers lost. The test
// plays JetStream: a delivery that did not ack comes back (after a crash,
// once the dead committer's lock has expired), and a wait advances a
// virtual clock, so a 10-minute retry budget costs nothing.
//
// PROPERTY_N sets the number of schedules (default 200), PROPERTY_SEED
// replays one; a violation prints its seed and the schedule's trace.
// With parallelism 1 (printed) a seed replays step for step.
func TestCommitProperty(t *testing.T) {
	t.Parallel()
	seeds := propertySeeds("PROPERTY_N", 200)
	rdb, prefix := testenv.Redis(t)
	blobs, _ := testenv.S3(t)
	infra := &propInfra{rdb: rdb, prefix: prefix, blobs: blobs, dir: t.TempDir()}

	var total propStats
	var failed atomic.Int32
	work := make(chan uint64)
	var wg sync.WaitGroup
	// Schedules mostly wait (Redis, HTTP): several run side by side.
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range work {
				if failed.Load() >= 3 {
					continue
				}
				s := newSchedule(t, infra, seed)
				problems := s.run()
				s.close()
				total.add(&s.stats)
				if len(problems) > 0 {
					failed.Add(1)
					t.Errorf("seed %d: %d invariant violations (replay: PROPERTY_SEED=%d go test -race -run TestCommitProperty ./services/committer)\n%s\ntrace:\n%s",
						seed, len(problems), seed, strings.Join(problems, "\n"), strings.Join(s.trace, "\n"))
				}
			}
		}()
	}
	for _, seed := range seeds {
		work <- seed
	}
	close(work)
	wg.Wait()
	t.Logf("commit property: %d schedules, %d with violations; %s", total.schedules, failed.Load(), total.String())
}

// propertySeeds are the seeds of the schedules to run: PROPERTY_SEED
// alone, or as many as the environment variable count says (default def)
// from a base that changes with every run.
func propertySeeds(count string, def int) []uint64 {
	if v, err := strconv.ParseUint(os.Getenv("PROPERTY_SEED"), 10, 64); err == nil {
		return []uint64{v}
	}
	n := def
	if v, err := strconv.Atoi(os.Getenv(count)); err == nil && v > 0 {
		n = v
	}
	base := uint64(time.Now().UnixNano())
	seeds := make([]uint64, n)
	for i := range seeds {
		seeds[i] = base + uint64(i)
	}
	return seeds
}

// propInfra is what every schedule shares: Redis (each schedule under a
// prefix of its own), the S3 server, a temporary directory.
type propInfra struct {
	rdb    *redis.Client
	prefix string
	blobs  *blob.Store
	dir    string
}

// propStats counts what the schedules exercised.
type propStats struct {
	mu                                                     sync.Mutex
	schedules, deliveries, crashes, faults, commits, stops int
	gaveUp, committed, deletes, refusedChanges, midRequest int
	photos, collisions                                     int
}

func (p *propStats) add(o *propStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	p.schedules++
	p.deliveries += o.deliveries
	p.crashes += o.crashes
	p.faults += o.faults
	p.commits += o.commits
	p.stops += o.stops
	p.gaveUp += o.gaveUp
	p.committed += o.committed
	p.deletes += o.deletes
	p.refusedChanges += o.refusedChanges
	p.midRequest += o.midRequest
	p.photos += o.photos
	p.collisions += o.collisions
}

func (p *propStats) String() string {
	return fmt.Sprintf("%d photos (%d recorded under a client id used before), %d deliveries, %d simulated crashes, %d ALEX faults, "+
		"%d commits begun, %d stopped by the GP (%d mid-request), %d gave up, %d sessions committed, %d deletions, %d edits or deletions refused",
		p.photos, p.collisions, p.deliveries, p.crashes, p.faults, p.commits, p.stops, p.midRequest, p.gaveUp, p.committed, p.deletes, p.refusedChanges)
}

// faultMenu is what ALEX may do to one request. A timeout holds the
// request 50 ms and drops it: to the committer, no answer, as when its own
// deadline passes (TestFaults covers that path with a real client
// deadline); the client's deadline is long, so a slow machine never adds
// a timeout the schedule did not draw.
var faultMenu = []alexsim.Fault{
	{Status: 500},
	{Status: 503},
	{Status: 429, RetryAfter: 2 * time.Second},
	{Kind: alexsim.FaultTimeout, Hold: 50 * time.Millisecond},
	{Kind: alexsim.FaultTimeout, Hold: 50 * time.Millisecond, AfterStore: true},
	{Kind: alexsim.FaultReset},
	{Kind: alexsim.FaultReset, AfterStore: true},
	{Kind: alexsim.FaultEmpty},
	{Kind: alexsim.FaultEmpty, AfterStore: true},
	{Status: 500, AfterStore: true},
	{Status: 422, Code: "business-rule", Message: "Image rejected"},
}

// schedule is one random world: one or two GPs, an ALEX simulator, and
// the committer's deliveries, driven by one seed.
type schedule struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand // the driver's draws
	infra *propInfra
	clock *fakeClock
	pfx   string         // the schedule's Redis key prefix
	store *session.Store // the API's view, on the virtual clock
	sim   *alexsim.Server
	srv   *httptest.Server
	cfg   Config
	quiet atomic.Bool // settling: ALEX behaves, no crashes

	mu      sync.Mutex // guards what the simulator's goroutines touch
	draws   map[string]int
	gps     []*gpActor
	photos  map[string]*photoFact // by Media identifier
	queue   []*delivery
	trace   []string
	stats   propStats
	problem []string
	pFault  float64
	pMid    float64
	uploads int
}

type gpActor struct {
	userID, patientID, nhi string
	sessionID              string
}

// photoFact is what the test knows of one recorded photo.
type photoFact struct {
	userID, sessionID, imageID, identifier, patientID string
	hashes                                            map[string]bool // SHA-1s of bytes it may be sent as
	deleted                                           bool
}

type delivery struct {
	userID, commitID string
	ev               events.Event
}

func newSchedule(t *testing.T, infra *propInfra, seed uint64) *schedule {
	s := &schedule{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), infra: infra,
		clock: &fakeClock{now: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)},
		draws: map[string]int{}, photos: map[string]*photoFact{}}
	r := s.rng
	s.pFault = []float64{0.1, 0.25, 0.4, 0.6}[r.IntN(4)]
	s.pMid = []float64{0, 0.1}[r.IntN(2)]
	caps := fhir.Capabilities{}
	switch r.IntN(6) {
	case 0:
		caps.ConditionalCreate = true
	case 1:
		caps.Search = true
	case 2:
		caps.Delete, caps.EnteredInError = true, true
	}
	budget := 10 * time.Minute
	if r.IntN(4) == 0 {
		budget = 20 * time.Second
	}
	s.cfg = Config{IdentifierSystem: fhir.DefaultImageIDNS, Capabilities: caps, Parallelism: []int{1, 2, 4}[r.IntN(3)],
		RetryBudget: budget, RetryInitial: time.Second, RetryMax: 30 * time.Second, LockTTL: 3 * time.Second, TempDir: infra.dir}
	s.pfx = fmt.Sprintf("%sp%d:", infra.prefix, seed)
	s.store = session.NewStore(infra.rdb, session.Options{Prefix: s.pfx, Now: s.clock.Now, Source: "/test"})
	patients := map[string]string{}
	for i := range 1 + r.IntN(2) {
		g := &gpActor{userID: fmt.Sprintf("gp%d", i), patientID: fmt.Sprintf("pat-%d", i), nhi: fmt.Sprintf("ZZZ%04d", i)}
		patients[g.patientID] = g.nhi
		s.gps = append(s.gps, g)
	}
	s.sim = alexsim.New(alexsim.Options{Patients: patients, Capabilities: caps, DropData: true})
	s.sim.SetHooks(alexsim.Hooks{Fault: s.fault})
	s.srv = httptest.NewServer(s.sim)
	s.note("seed %d: %d GPs, capabilities %q, parallelism %d, budget %s, fault rate %.2f, mid-request actions %.2f",
		seed, len(s.gps), caps.String(), s.cfg.Parallelism, budget, s.pFault, s.pMid)
	return s
}

func (s *schedule) close() { s.srv.Close() }

func (s *schedule) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trace = append(s.trace, fmt.Sprintf(format, args...))
}

// bump counts one thing the schedule exercised.
func (s *schedule) bump(p *int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*p++
}

func (s *schedule) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problem = append(s.problem, msg)
	s.trace = append(s.trace, "VIOLATION "+msg)
}

// draw is a number in [0, 1) fixed by the seed and the request's identity
// (its n-th occurrence), whatever order parallel requests arrive in.
func (s *schedule) draw(key string) float64 {
	s.mu.Lock()
	s.draws[key]++
	n := s.draws[key]
	s.mu.Unlock()
	h := fnv.New64a()
	fmt.Fprintf(h, "%d|%s|%d", s.seed, key, n)
	return float64(h.Sum64()>>11) / (1 << 53)
}

// fault is the simulator's hook: each FHIR request's fate, and sometimes
// a GP acting while a photo's write is on its way.
func (s *schedule) fault(method, path, identifier string) *alexsim.Fault {
	if s.quiet.Load() {
		return nil
	}
	key := method + " " + path + " " + identifier
	if method == http.MethodPost && s.draw("mid "+key) < s.pMid {
		s.midRequest()
	}
	if s.draw(key) >= s.pFault {
		return nil
	}
	menu := faultMenu
	if method != http.MethodPost {
		menu = faultMenu[:6] // lookups: nothing is stored, nothing refused
	}
	f := menu[int(s.draw("which "+key)*float64(len(menu)))]
	s.mu.Lock()
	s.stats.faults++
	s.trace = append(s.trace, fmt.Sprintf("  alex: %s -> %s %d after-store=%v", key, f.Kind, f.Status, f.AfterStore))
	s.mu.Unlock()
	return &f
}

// midRequest is a GP stopping the commit while a write is on its way.
func (s *schedule) midRequest() {
	for _, g := range s.gps {
		if sess, err := s.store.Peek(context.Background(), g.userID); err == nil && sess.CommitStatus == session.CommitInProgress {
			if _, err := s.store.StopCommit(context.Background(), g.userID, ""); err == nil {
				s.mu.Lock()
				s.stats.stops++
				s.stats.midRequest++
				s.mu.Unlock()
				s.note("  %s stops waiting while a write is on its way", g.userID)
			}
			return
		}
	}
}

// run plays the schedule, settles it, and returns the violations found.
func (s *schedule) run() []string {
	ctx := context.Background()
	for _, g := range s.gps {
		s.startSession(g)
		for range 1 + s.rng.IntN(4) {
			s.addPhoto(g)
		}
	}
	steps := 8 + s.rng.IntN(20)
	for range steps {
		g := s.gps[s.rng.IntN(len(s.gps))]
		sess, err := s.store.Peek(ctx, g.userID)
		if err != nil {
			s.violation("%s: session unreadable: %v", g.userID, err)
			break
		}
		switch x := s.rng.IntN(20); {
		case x < 8 && len(s.queue) > 0:
			s.deliver(s.pick(), true)
		case x < 11:
			s.commit(g, sess)
		case x < 12:
			if _, err := s.store.StopCommit(ctx, g.userID, ""); err == nil {
				s.bump(&s.stats.stops)
				s.note("%s stops waiting", g.userID)
			}
		case x < 14:
			s.deletePhoto(g, sess)
		case x < 15:
			s.editPhoto(g, sess)
		case x < 17:
			s.addPhoto(g)
		case x < 18:
			s.thumbnail(g, sess)
		case x < 19:
			if sess.CommitStatus == session.CommitCommitted {
				s.checkCommitted(sess)
				s.startSession(g)
			}
		default:
			// JetStream delivers a work item again (a lost ack).
			if len(s.queue) > 0 {
				d := s.queue[s.rng.IntN(len(s.queue))]
				s.queue = append(s.queue, &delivery{userID: d.userID, commitID: d.commitID, ev: d.ev})
			}
		}
		s.checkAgrees()
	}
	s.settle()
	return s.problem
}

// settle lets ALEX behave and no committer die, and has each GP commit
// until done, as a GP would.
func (s *schedule) settle() {
	s.quiet.Store(true)
	s.note("settle")
	ctx := context.Background()
	for _, g := range s.gps {
		for round := 0; ; round++ {
			sess, err := s.store.Peek(ctx, g.userID)
			if err != nil {
				s.violation("%s: session unreadable: %v", g.userID, err)
				return
			}
			if round == 40 {
				s.violation("%s: did not settle: %s, %d photos", g.userID, sess.CommitStatus, len(sess.Images))
				break
			}
			if sess.CommitStatus == session.CommitCommitted || (sess.CommitStatus == session.CommitNone && len(sess.Images) == 0) {
				break
			}
			if sess.CommitStatus == session.CommitInProgress {
				d := s.find(g.userID, sess.CommitID)
				if d == nil {
					s.violation("%s: commit %s runs with no work item to carry it", g.userID, sess.CommitID)
					return
				}
				s.deliver(d, false)
				continue
			}
			var resend []string
			for _, im := range sess.Images {
				switch im.State() {
				case session.PhotoConflict:
					s.violation("%s: photo %s in conflict: %s", g.userID, im.ID, im.Error)
				case session.PhotoNeedsChecking:
					resend = append(resend, im.ID)
				}
			}
			if len(resend) > 0 {
				s.violation("%s: photos need checking although ALEX can look them up: %v", g.userID, resend)
				return
			}
			s.commit(g, sess)
		}
		s.checkAgrees()
	}
	// Whatever is left in the queue is delivered once more: stale work
	// items must change nothing.
	for len(s.queue) > 0 {
		s.deliver(s.queue[0], false)
	}
	s.checkFinal()
}

func (s *schedule) pick() *delivery {
	if s.rng.IntN(4) == 0 {
		return s.queue[s.rng.IntN(len(s.queue))]
	}
	return s.queue[len(s.queue)-1]
}

func (s *schedule) find(userID, commitID string) *delivery {
	for _, d := range s.queue {
		if d.userID == userID && d.commitID == commitID {
			return d
		}
	}
	return nil
}

func (s *schedule) drop(d *delivery) {
	for i, q := range s.queue {
		if q == d {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return
		}
	}
}

// deliver hands d to a fresh committer incarnation, which may crash at a
// random step, and does what JetStream would with the outcome.
func (s *schedule) deliver(d *delivery, mayCrash bool) {
	crashAt := int64(0)
	if mayCrash && s.rng.IntN(3) == 0 {
		crashAt = 1 + s.rng.Int64N(60)
	}
	inc := s.incarnation(crashAt)
	err := inc.w.handle(context.Background(), d.ev)
	inc.close()
	s.bump(&s.stats.deliveries)
	var retry *consume.RetryError
	var perm *consume.PermanentError
	switch {
	case inc.crashed.Load():
		// The dead committer's lock expires; JetStream redelivers after
		// AckWait.
		s.bump(&s.stats.crashes)
		s.infra.rdb.Del(context.Background(), s.store.Keys.CommitLock(d.userID))
		s.clock.Advance(30 * time.Second)
		s.note("deliver %s/%s: crashed at step %d", d.userID, d.commitID, crashAt)
	case err == nil:
		s.drop(d)
		s.note("deliver %s/%s: acked", d.userID, d.commitID)
	case errors.As(err, &perm):
		s.drop(d)
		s.violation("deliver %s/%s: permanent error %v", d.userID, d.commitID, err)
	case errors.As(err, &retry):
		s.clock.Advance(max(retry.After, s.cfg.RetryInitial))
		s.note("deliver %s/%s: again in %s (%v)", d.userID, d.commitID, retry.After, retry.Err)
	default:
		s.clock.Advance(s.cfg.RetryInitial)
		s.note("deliver %s/%s: error %v", d.userID, d.commitID, err)
	}
	if sess, err := s.store.Peek(context.Background(), d.userID); err == nil && sess.Commit != nil && sess.CommitID == d.commitID && sess.Commit.FinishedAt != nil {
		switch {
		case sess.CommitStatus == session.CommitCommitted:
		case strings.HasPrefix(sess.Commit.Message, "Gave up"):
			s.bump(&s.stats.gaveUp)
		}
	}
}

func (s *schedule) commit(g *gpActor, sess session.Session) {
	if sess.CommitStatus != session.CommitNone || len(sess.Images) == 0 {
		return
	}
	var resend []string
	for _, im := range sess.Images {
		if st := im.State(); st == session.PhotoNeedsChecking || st == session.PhotoConflict {
			resend = append(resend, im.ID)
		}
	}
	cid := fmt.Sprintf("c%d-%d", s.seed, s.rng.Int())
	out, err := s.store.BeginCommit(context.Background(), g.userID, sess.SessionID, cid, resend...)
	if err != nil {
		s.note("%s: commit refused: %v", g.userID, err)
		return
	}
	for _, im := range out.Images {
		if f := s.photos[im.MediaIdentifier]; f == nil {
			s.trackResent(g, out, im)
		}
	}
	s.bump(&s.stats.commits)
	ev, err := events.New("/test", events.CommitRequested, g.userID, session.CommitEvent{SessionID: out.SessionID, CommitID: cid}, s.clock.Now())
	if err != nil {
		s.violation("event: %v", err)
		return
	}
	s.queue = append(s.queue, &delivery{userID: g.userID, commitID: cid, ev: ev})
	s.note("%s commits %d photos (%s)", g.userID, len(out.Images), cid)
}

// trackResent follows a photo sent again under a new identifier.
func (s *schedule) trackResent(g *gpActor, sess session.Session, im session.Image) {
	for _, f := range s.photos {
		if f.sessionID == sess.SessionID && f.imageID == im.ID && !f.deleted {
			f.deleted = true // the old identifier's photo is no longer in the session
			nf := *f
			nf.identifier, nf.deleted = im.MediaIdentifier, false
			s.photos[im.MediaIdentifier] = &nf
			return
		}
	}
}

func (s *schedule) startSession(g *gpActor) {
	st, err := s.store.Start(context.Background(), session.StartParams{UserID: g.userID, PatientID: g.patientID, EncounterID: "enc",
		Token: fmt.Sprintf("tok%d-%s-%d", s.seed, g.userID, s.rng.Int()), SessionID: fmt.Sprintf("s%d-%s-%d", s.seed, g.userID, s.rng.Int())})
	if err != nil {
		s.violation("%s: start: %v", g.userID, err)
		return
	}
	g.sessionID = st.Session.SessionID
	s.note("%s starts session %s", g.userID, g.sessionID)
}

// addPhoto records a new photo under a client id drawn from a pool every
// session and GP shares, so client ids collide.
func (s *schedule) addPhoto(g *gpActor) {
	ctx := context.Background()
	s.uploads++
	n := s.uploads
	orig := propJPEG(s.seed, n, 90)
	key := fmt.Sprintf("temp/p%d-%s/%d.jpg", s.seed, g.userID, n)
	if err := s.infra.blobs.Put(ctx, key, "image/jpeg", bytes.NewReader(orig), int64(len(orig))); err != nil {
		s.violation("put: %v", err)
		return
	}
	clientID := fmt.Sprintf("img-%d", s.rng.IntN(3))
	sess, added, err := s.store.AddImage(ctx, g.userID, g.sessionID, session.Image{ID: clientID, S3Key: key, Uploaded: true,
		Source: "mobile", ContentType: "image/jpeg", Size: int64(len(orig)), CapturedAt: s.clock.Now()})
	if err != nil || !added {
		s.note("%s: add %s refused: %v", g.userID, clientID, err)
		return
	}
	im, _ := sess.Image(clientID)
	f := &photoFact{userID: g.userID, sessionID: sess.SessionID, imageID: clientID, identifier: im.MediaIdentifier,
		patientID: g.patientID, hashes: map[string]bool{s.selfCleaned(orig): true}}
	for _, o := range s.photos {
		if o.imageID == clientID {
			s.bump(&s.stats.collisions)
			break
		}
	}
	s.photos[im.MediaIdentifier] = f
	s.bump(&s.stats.photos)
	s.note("%s adds %s (%s)", g.userID, clientID, im.MediaIdentifier)
	if s.rng.IntN(4) != 0 {
		s.process(g, im, n)
	}
}

// process is the thumbnailer making a photo's clean copy: other bytes than
// the committer's own cleaning of the original, so a photo may reach ALEX
// as either.
func (s *schedule) process(g *gpActor, im session.Image, n int) {
	ctx := context.Background()
	clean := propJPEG(s.seed, n, 70)
	ck := im.S3Key + ".clean.jpg"
	if err := s.infra.blobs.Put(ctx, ck, "image/jpeg", bytes.NewReader(clean), int64(len(clean))); err != nil {
		s.violation("put: %v", err)
		return
	}
	if _, changed, err := s.store.SetProcessed(ctx, g.userID, im.ID, session.Processed{Status: session.ImageReady, CleanKey: ck,
		CleanSize: int64(len(clean)), Width: 8, Height: 8}); err == nil && changed {
		if f := s.photos[im.MediaIdentifier]; f != nil {
			f.hashes[sha1b64(clean)] = true
		}
	}
}

func (s *schedule) thumbnail(g *gpActor, sess session.Session) {
	for _, im := range sess.Images {
		if im.Status == session.ImageProcessing {
			var n int
			fmt.Sscanf(im.S3Key[strings.LastIndex(im.S3Key, "/")+1:], "%d.jpg", &n)
			s.process(g, im, n)
			s.note("%s: thumbnailer cleans %s", g.userID, im.ID)
			return
		}
	}
}

func (s *schedule) selfCleaned(orig []byte) string {
	c, err := cleanPhoto(bytes.NewReader(orig), s.infra.dir)
	if err != nil {
		s.violation("clean: %v", err)
		return ""
	}
	defer os.Remove(c.path)
	b, err := os.ReadFile(c.path)
	if err != nil {
		s.violation("clean: %v", err)
	}
	return sha1b64(b)
}

func (s *schedule) deletePhoto(g *gpActor, sess session.Session) {
	if len(sess.Images) == 0 || sess.CommitStatus != session.CommitNone {
		return
	}
	im := sess.Images[s.rng.IntN(len(sess.Images))]
	_, _, err := s.store.RemoveImage(context.Background(), g.userID, sess.SessionID, im.ID)
	switch {
	case err == nil:
		s.photos[im.MediaIdentifier].deleted = true
		s.bump(&s.stats.deletes)
		s.note("%s deletes %s (%s)", g.userID, im.ID, im.State())
	case errors.Is(err, session.ErrInRecord) || errors.Is(err, session.ErrMaybeInRecord):
		s.bump(&s.stats.refusedChanges)
		s.note("%s: delete %s refused: %v", g.userID, im.ID, err)
		if st := im.State(); st != session.PhotoInRecord && st != session.PhotoUnknown && st != session.PhotoSending {
			s.violation("deleting %s (%s) refused: %v", im.ID, st, err)
		}
	default:
		s.violation("delete %s: %v", im.ID, err)
	}
}

func (s *schedule) editPhoto(g *gpActor, sess session.Session) {
	if len(sess.Images) == 0 || sess.CommitStatus != session.CommitNone {
		return
	}
	im := sess.Images[s.rng.IntN(len(sess.Images))]
	notes := fmt.Sprintf("note %d", s.rng.IntN(100))
	_, err := s.store.UpdateMetadata(context.Background(), g.userID, sess.SessionID, im.ID, session.MetadataPatch{Notes: &notes})
	switch {
	case err == nil:
		s.note("%s edits %s", g.userID, im.ID)
		if im.State() == session.PhotoInRecord || im.State() == session.PhotoUnknown {
			s.violation("edited %s although it is %s", im.ID, im.State())
		}
	case errors.Is(err, session.ErrInRecord) || errors.Is(err, session.ErrMaybeInRecord):
		s.bump(&s.stats.refusedChanges)
	default:
		s.violation("edit %s: %v", im.ID, err)
	}
}

// checkAgrees is the invariant at every step: a photo the session shows in
// the record is that Media in ALEX, the photo's own, and the session holds
// every photo the GP did not delete.
func (s *schedule) checkAgrees() {
	media := map[string]alexsim.Stored{}
	for _, m := range s.sim.Media() {
		media[m.ID] = m
	}
	for _, g := range s.gps {
		sess, err := s.store.Peek(context.Background(), g.userID)
		if err != nil {
			s.violation("%s: session unreadable: %v", g.userID, err)
			continue
		}
		have := map[string]bool{}
		for _, im := range sess.Images {
			have[im.MediaIdentifier] = true
			if im.State() != session.PhotoInRecord {
				if im.MediaID != "" {
					s.violation("%s: %s is %s but names Media %s", g.userID, im.ID, im.State(), im.MediaID)
				}
				continue
			}
			m, ok := media[im.MediaID]
			f := s.photos[im.MediaIdentifier]
			switch {
			case !ok:
				s.violation("%s: %s in the record as %s, which ALEX does not hold", g.userID, im.ID, im.MediaID)
			case f == nil:
				s.violation("%s: %s has an identifier no photo was given", g.userID, im.ID)
			case m.Identifier.Value != im.MediaIdentifier || m.PatientRef != "Patient/"+f.patientID || !f.hashes[m.Hash]:
				s.violation("%s: %s claims Media %s (%s, %s) that is not its own", g.userID, im.ID, m.ID, m.Identifier.Value, m.PatientRef)
			}
		}
		for id, f := range s.photos {
			if f.userID == g.userID && f.sessionID == sess.SessionID && !f.deleted && !have[id] {
				s.violation("%s: photo %s (%s) lost from the session", g.userID, f.imageID, id)
			}
		}
	}
}

// checkCommitted checks a committed session before the GP moves on.
func (s *schedule) checkCommitted(sess session.Session) {
	ids := make([]string, 0, len(sess.Images))
	for _, im := range sess.Images {
		if im.State() != session.PhotoInRecord {
			s.violation("committed session %s holds %s as %s", sess.SessionID, im.ID, im.State())
		}
		ids = append(ids, im.MediaID)
	}
	if strings.Join(ids, ",") != strings.Join(sess.Commit.MediaResourceIDs, ",") {
		s.violation("committed session %s lists %v, photos are %v", sess.SessionID, sess.Commit.MediaResourceIDs, ids)
	}
	s.bump(&s.stats.committed)
}

// checkFinal is the invariant once the schedule has settled.
func (s *schedule) checkFinal() {
	byIdent := map[string][]alexsim.Stored{}
	for _, m := range s.sim.Media() {
		byIdent[m.Identifier.Value] = append(byIdent[m.Identifier.Value], m)
	}
	for ident, ms := range byIdent {
		f := s.photos[ident]
		if f == nil {
			s.violation("ALEX holds %d Media under identifier %s that no photo had", len(ms), ident)
			continue
		}
		if len(ms) > 1 {
			s.violation("photo %s/%s (%s) written %d times", f.userID, f.imageID, ident, len(ms))
		}
		for _, m := range ms {
			if m.PatientRef != "Patient/"+f.patientID {
				s.violation("photo %s/%s is in %s's record, not %s's", f.userID, f.imageID, m.PatientRef, f.patientID)
			}
			if !f.hashes[m.Hash] {
				s.violation("photo %s/%s reached ALEX with other bytes", f.userID, f.imageID)
			}
			if m.Deleted || m.Status == "entered-in-error" {
				s.violation("photo %s/%s was withdrawn from the record", f.userID, f.imageID)
			}
		}
	}
	for _, g := range s.gps {
		sess, err := s.store.Peek(context.Background(), g.userID)
		if err != nil {
			s.violation("%s: session unreadable: %v", g.userID, err)
			continue
		}
		if len(sess.Images) > 0 {
			if sess.CommitStatus != session.CommitCommitted {
				s.violation("%s: session %s after settling", g.userID, sess.CommitStatus)
				continue
			}
			s.checkCommitted(sess)
		}
	}
	// Every photo not deleted, in whichever session it was, is in ALEX.
	ids := make([]string, 0, len(s.photos))
	for id := range s.photos {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if f := s.photos[id]; !f.deleted && len(byIdent[id]) != 1 {
			s.violation("photo %s/%s (%s) kept by the GP is in ALEX %d times", f.userID, f.imageID, id, len(byIdent[id]))
		}
	}
}

// incarnation is one committer process's life for one delivery: a Redis
// client and an ALEX client of its own, both dead from step crashAt on.
type incarnation struct {
	w       *worker
	steps   atomic.Int64
	crashAt int64
	crashed atomic.Bool
	rdb     *redis.Client
	tr      *http.Transport
}

var errCrashed = errors.New("committer crashed")

// step counts one external step and reports whether the process is dead.
func (inc *incarnation) step() bool {
	if inc.crashed.Load() {
		return true
	}
	if inc.crashAt > 0 && inc.steps.Add(1) >= inc.crashAt {
		inc.crashed.Store(true)
		return true
	}
	return false
}

func (s *schedule) incarnation(crashAt int64) *incarnation {
	inc := &incarnation{crashAt: crashAt}
	opt, _ := redis.ParseURL(testenv.RedisURL())
	opt.PoolSize = 8
	inc.rdb = redis.NewClient(opt)
	inc.rdb.AddHook(crashHook{inc})
	inc.tr = &http.Transport{}
	env := s.sim.Env(s.srv.URL)
	alex, err := fhir.NewClient(fhir.Config{BaseURL: env["ALEX_API_URL"], TokenURL: env["ALEX_OAUTH_TOKEN_URL"],
		ClientID: env["ALEX_CLIENT_ID"], ClientSecret: env["ALEX_CLIENT_SECRET"], Scope: env["ALEX_SCOPE"], FacilityID: env["ALEX_FACILITY_ID"],
		AppID: "property", Timeout: 10 * time.Second, HTTPClient: &http.Client{Transport: crashTransport{inc, inc.tr}}})
	if err != nil {
		panic(err)
	}
	store := session.NewStore(inc.rdb, session.Options{Prefix: s.pfx, Now: s.clock.Now, Source: "/clinimg/committer"})
	inc.w = &worker{cfg: s.cfg, store: store, rdb: inc.rdb, photos: s.infra.blobs, alex: alex, names: events.DefaultNames,
		log: discardLogger, m: newMetrics(prometheus.NewRegistry()), now: s.clock.Now, jitter: s.rng.Float64}
	inc.w.init()
	return inc
}

func (inc *incarnation) close() {
	inc.rdb.Close()
	inc.tr.CloseIdleConnections()
}

type crashHook struct{ inc *incarnation }

func (h crashHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h crashHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.inc.step() {
			cmd.SetErr(errCrashed)
			return errCrashed
		}
		return next(ctx, cmd)
	}
}
func (h crashHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.inc.step() {
			return errCrashed
		}
		return next(ctx, cmds)
	}
}

type crashTransport struct {
	inc  *incarnation
	next http.RoundTripper
}

func (c crashTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.inc.step() {
		if r.Body != nil {
			r.Body.Close()
		}
		// Refused before it left, as a dead process sends nothing.
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errCrashed}
	}
	return c.next.RoundTrip(r)
}

// fakeClock is the schedule's virtual time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// propJPEG is a small JPEG unique to (seed, n); quality makes other bytes
// of the same picture.
func propJPEG(seed uint64, n, quality int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(n))
	sum := sha1.Sum(b[:])
	for i := range 64 {
		img.Set(i%8, i/8, color.RGBA{sum[i%20], sum[(i+7)%20], uint8(i * 4), 255})
	}
	var out bytes.Buffer
	if err := jpeg.Encode(&out, img, &jpeg.Options{Quality: quality}); err != nil {
		panic(err)
	}
	return out.Bytes()
}

func sha1b64(b []byte) string {
	sum := sha1.Sum(b)
	return base64.StdEncoding.EncodeToString(sum[:])
}

var discardLogger = slog.New(slog.DiscardHandler)
