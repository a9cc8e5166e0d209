package stack_test

import (
	"bufio"
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
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clinicalimages/clinimg/deploy/local/stack"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The suite drives the topology over HTTP as the two screens do. Like the
// pages, a client retries what the system says may be retried (503, a
// connection refused by a process that died) on the next API instance, as
// a load balancer in front of the two would.

var httpc = &http.Client{Timeout: 30 * time.Second}

// client reaches the APIs of a topology, rotating on failure.
type client struct {
	t    *testing.T
	apis []string
	next atomic.Int32
	// unavailable counts 503s and refused connections seen (then retried).
	unavailable atomic.Int32
}

func newClient(t *testing.T, top *stack.Topology) *client {
	c := &client{t: t}
	for _, p := range top.Services["api"] {
		c.apis = append(c.apis, "http://"+p.Getenv("API_ADDR"))
	}
	return c
}

type reply struct {
	status int
	body   map[string]any
	raw    []byte
}

// do sends one request to one base URL.
func do(ctx context.Context, method, u, token string, body any, header ...string) (reply, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return reply{}, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return reply{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	out := reply{status: resp.StatusCode, raw: raw}
	_ = json.Unmarshal(raw, &out.body)
	return out, nil
}

// call sends a request to the APIs until one answers with something other
// than 503 or a broken connection (up to two minutes), and fails the test
// unless the status is want.
func (c *client) call(method, path, token string, body any, want int, out any, header ...string) reply {
	c.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		base := c.apis[int(c.next.Add(1))%len(c.apis)]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := do(ctx, method, base+path, token, body, header...)
		cancel()
		if err == nil && r.status != http.StatusServiceUnavailable {
			if r.status != want {
				c.t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.raw, want)
			}
			if out != nil {
				if err := json.Unmarshal(r.raw, out); err != nil {
					c.t.Fatalf("%s %s: %v in %s", method, path, err, r.raw)
				}
			}
			return r
		}
		c.unavailable.Add(1)
		if time.Now().After(deadline) {
			c.t.Fatalf("%s %s: still unavailable after 2 minutes: %v %d %s", method, path, err, r.status, r.raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// desktopToken asks the development issuer, as the desktop's host does.
func desktopToken(t *testing.T, top *stack.Topology, user string) string {
	t.Helper()
	r, err := do(context.Background(), "GET", top.AuthURL+"/token?userId="+url.QueryEscape(user), "", nil)
	if err != nil || r.status != 200 {
		t.Fatalf("token: %v %d %s", err, r.status, r.raw)
	}
	return r.body["token"].(string)
}

// gp is one GP's desktop and paired phone on one patient.
type gp struct {
	c                          *client
	user, patient, desk, phone string
}

func newGP(t *testing.T, top *stack.Topology, c *client, user, patient string) *gp {
	g := &gp{c: c, user: user, patient: patient, desk: desktopToken(t, top, user)}
	g.start()
	return g
}

// start opens a session for the patient, pairs the phone and records the
// patient's consent, as the screens ask before a commit.
func (g *gp) start() {
	var start, pair map[string]any
	g.c.call("POST", "/api/session-tokens", g.desk, map[string]any{"patientId": g.patient, "encounterId": "enc-" + g.user}, 200, &start)
	g.c.call("GET", "/api/session-tokens/"+start["sessionToken"].(string), "", nil, 200, &pair)
	g.phone = pair["phoneToken"].(string)
	g.c.call("PUT", g.path("/consent"), g.desk, map[string]any{"method": "verbal", "purposes": []string{"record"}}, 200, nil)
}

func (g *gp) path(p string) string { return "/api/users/" + g.user + p }

// record uploads a photo from the phone straight to S3 and records it.
func (g *gp) record(imageID string, photo []byte) {
	t := g.c.t
	t.Helper()
	var pre struct {
		UploadURL string            `json:"uploadUrl"`
		S3Key     string            `json:"s3Key"`
		Headers   map[string]string `json:"headers"`
	}
	g.c.call("POST", g.path("/presigned-url"), g.phone, map[string]any{"contentType": "image/jpeg", "contentLength": len(photo)}, 200, &pre)
	req, _ := http.NewRequest("PUT", pre.UploadURL, bytes.NewReader(photo))
	for k, v := range pre.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "image/jpeg")
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatalf("PUT to S3: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT to S3: %d %s", resp.StatusCode, b)
	}
	g.c.call("POST", g.path("/images"), g.phone, map[string]any{"imageId": imageID, "s3Key": pre.S3Key, "source": "mobile",
		"metadata": map[string]any{"bodySite": "368208006", "laterality": "left", "viewType": "anterior"}}, 200, nil)
}

func (g *gp) session() session.Session {
	var s session.Session
	g.c.call("GET", g.path("/session"), g.desk, nil, 200, &s)
	return s
}

// photo is a small JPEG whose bytes are n's alone.
func photo(n int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 160, 120))
	for i := range img.Pix {
		img.Pix[i] = byte(i*7 + n*31 + i/(160*4)*n)
	}
	for x := range 160 {
		img.Set(x, n%120, color.White)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 80}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// within polls cond every 50 ms until it holds or d passes.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// media is one Media the ALEX simulator holds (GET /_sim/media).
type media struct {
	ID         string `json:"id"`
	Identifier string `json:"identifier"` // system|value
	Status     string `json:"status"`
	Deleted    bool   `json:"deleted"`
	Patient    string `json:"patient"`
	Hash       string `json:"hash"`
}

func alexMedia(t *testing.T, top *stack.Topology) []media {
	t.Helper()
	resp, err := httpc.Get(top.ALEXURL + "/_sim/media")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []media
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// cleanHashes is the SHA-1 (base64) of each photo's clean copy, by Media
// identifier: the bytes its Media must carry. (A commit deletes them.)
func cleanHashes(t *testing.T, st *blob.Store, s session.Session) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, im := range s.Images {
		body, _, _, err := st.Open(context.Background(), im.CleanKey)
		if err != nil {
			t.Fatalf("%s clean copy: %v", im.ID, err)
		}
		b, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha1.Sum(b)
		out[im.MediaIdentifier] = base64.StdEncoding.EncodeToString(sum[:])
	}
	return out
}

// checkInALEXOnce fails unless s is committed with n photos, each in ALEX
// exactly once under its own identifier, in s's patient, with the SHA-1 of
// its clean copy (own).
func checkInALEXOnce(t *testing.T, top *stack.Topology, own map[string]string, s session.Session, n int) {
	t.Helper()
	if s.CommitStatus != session.CommitCommitted || len(s.Images) != n {
		t.Fatalf("session %s with %d photos, want committed with %d", s.CommitStatus, len(s.Images), n)
	}
	all := alexMedia(t, top)
	for _, im := range s.Images {
		var got []media
		for _, m := range all {
			if _, v, _ := strings.Cut(m.Identifier, "|"); v == im.MediaIdentifier {
				got = append(got, m)
			}
		}
		if len(got) != 1 {
			t.Errorf("%s: %d Media under its identifier, want 1", im.ID, len(got))
			continue
		}
		m := got[0]
		want := own[im.MediaIdentifier]
		if m.ID != im.MediaID || m.Patient != "Patient/"+s.PatientID || m.Deleted || m.Status != "completed" || m.Hash != want {
			t.Errorf("%s: Media %s of %s (%s, hash %s); session says %s of %s, clean copy hash %s",
				im.ID, m.ID, m.Patient, m.Status, m.Hash, im.MediaID, s.PatientID, want)
		}
	}
}

// screen is a desktop's realtime stream: it follows the user's channel on
// the relays, reopening with Last-Event-ID on another relay when one goes
// away, with a new token when its own is refused (as the page does).
type screen struct {
	t      *testing.T
	relays []string
	token  func() string
	user   string

	mu       sync.Mutex
	ids      map[string]bool // event ids received
	opened   int
	cancel   context.CancelFunc
	done     chan struct{}
	lastSeen string
}

func openScreen(t *testing.T, top *stack.Topology, g *gp) *screen {
	ctx, cancel := context.WithCancel(context.Background())
	s := &screen{t: t, relays: top.RelayURL, user: g.user, ids: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	s.token = func() string {
		var tok realtime.Token
		g.c.call("GET", g.path("/realtime-token"), g.desk, nil, 200, &tok)
		return tok.Token
	}
	tok := s.token()
	go s.follow(ctx, tok, g)
	t.Cleanup(s.close)
	return s
}

func (s *screen) close() {
	s.cancel()
	<-s.done
}

func (s *screen) follow(ctx context.Context, tok string, g *gp) {
	defer close(s.done)
	for i := 0; ctx.Err() == nil; i++ {
		base := s.relays[i%len(s.relays)]
		err := s.stream(ctx, base, tok)
		if ctx.Err() != nil {
			return
		}
		var info realtime.ErrorInfo
		if errors.As(err, &info) && info.StatusCode == 401 {
			tok = s.token()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *screen) stream(ctx context.Context, base, tok string) error {
	s.mu.Lock()
	last := s.lastSeen
	s.opened++
	s.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, "GET", realtime.SubscribeURL(base+"/sse", realtime.Channel(s.user), tok, last), nil)
	if err != nil {
		return err
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		var e struct{ Error realtime.ErrorInfo }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return e.Error
	}
	rd := realtime.NewReader(bufio.NewReader(resp.Body))
	for {
		ev, err := rd.Next()
		if err != nil {
			return err
		}
		if ev.Event == "error" {
			var info realtime.ErrorInfo
			_ = json.Unmarshal([]byte(ev.Data), &info)
			return info
		}
		m, err := ev.Message()
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.ids[m.ID] = true
		if ev.ID != "" {
			s.lastSeen = ev.ID
		}
		s.mu.Unlock()
	}
}

// storedEvents are the ids of every event the stream holds for user, and
// when each was published. A read that meets a cluster still settling after
// a node was killed (no responders, a consumer lost with its node) is
// started again from the beginning, so the answer is always a whole read.
func storedEvents(t *testing.T, js jetstream.JetStream, top *stack.Topology, user string) map[string]time.Time {
	t.Helper()
	var out map[string]time.Time
	within(t, time.Minute, "a whole read of the stream", func() bool {
		var err error
		out, err = readStored(js, top.Stream, events.DefaultNames.Prefix+".*."+user)
		if err != nil {
			t.Logf("reading the stream again: %v", err)
			return false
		}
		return true
	})
	return out
}

// readStored reads every message on subject from an ordered consumer.
func readStored(js jetstream.JetStream, stream, subject string) (map[string]time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, err
	}
	out := map[string]time.Time{}
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return nil, err
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			ev, err := events.Decode(msg.Data())
			if err != nil {
				return nil, fmt.Errorf("stored event %s does not decode: %w", msg.Subject(), err)
			}
			md, err := msg.Metadata()
			if err != nil {
				return nil, err
			}
			out[ev.ID] = md.Timestamp
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
	}
}

// checkScreen fails unless every event stored for the screen's user reached
// it. The relays replay from the stream after Last-Event-ID, so the screen
// never has to fall back on a session read to recover an event.
func checkScreen(t *testing.T, s *screen, stored map[string]time.Time) {
	t.Helper()
	within(t, 60*time.Second, "every stored event on the screen", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for id := range stored {
			if !s.ids[id] {
				return false
			}
		}
		return true
	})
}

// streams is how many times the screen opened its stream.
func (s *screen) streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d events over %d streams", len(s.ids), s.opened)
}
