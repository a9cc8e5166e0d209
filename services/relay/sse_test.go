package relay

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

func streamingClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Must show 3: 1,000 concurrent subscribers across 100 sessions, served by
// two relays side by side, each get exactly their session's events.
func TestSSEThousandSubscribersGetExactlyTheirSessionsEvents(t *testing.T) {
	const sessions, perSession = 100, 10
	s := newStack(t)
	relays := []*running{s.start(t, s.config()), s.start(t, s.config())}
	client := streamingClient(t)

	subs := map[string][]*sub{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range sessions {
		user := fmt.Sprintf("user_%03d", i)
		tok := s.token(t, user, time.Hour)
		for j := range perSession {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sb := open(t, client, relays[(i+j)%2].sse, user, tok, "")
				mu.Lock()
				subs[user] = append(subs[user], sb)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	for _, r := range relays {
		testenv.Eventually(t, 10*time.Second, "500 subscribers on each relay", func() bool {
			return r.metric(t, "relay_sse_subscribers") == sessions*perSession/2
		})
	}

	// Three events per session, all sessions at once, then a last one per
	// session as a barrier: nothing else may arrive in between.
	want := map[string][]received{}
	emit := func(user string, f func()) { f() }
	var ew sync.WaitGroup
	for user := range subs {
		ew.Add(1)
		go func() {
			defer ew.Done()
			emit(user, func() {
				s.sessionFor(t, user)
				s.addImage(t, user, "a-"+user)
				s.addImage(t, user, "b-"+user)
				s.addImage(t, user, "last-"+user)
			})
		}()
		ch := realtime.Channel(user)
		want[user] = []received{
			{Name: "session-started", Channel: ch},
			{Name: "image-uploaded", Channel: ch, ImageID: "a-" + user},
			{Name: "image-uploaded", Channel: ch, ImageID: "b-" + user},
			{Name: "image-uploaded", Channel: ch, ImageID: "last-" + user},
		}
	}
	ew.Wait()
	testenv.Eventually(t, 30*time.Second, "every subscriber has 4 events", func() bool {
		for _, list := range subs {
			for _, sb := range list {
				if sb.count() < 4 {
					return false
				}
			}
		}
		return true
	})
	ignoreIDs := cmp.Transformer("noIDs", func(r received) received { r.SeqID, r.EventID = "", ""; return r })
	for user, list := range subs {
		for i, sb := range list {
			got := sb.received()
			if d := cmp.Diff(want[user], got, ignoreIDs); d != "" {
				t.Fatalf("%s subscriber %d (-want +got):\n%s", user, i, d)
			}
			// Both relays label one event with the same stream position.
			if got[3].SeqID != list[0].received()[3].SeqID || got[3].EventID != list[0].received()[3].EventID {
				t.Errorf("%s: subscribers disagree on ids: %+v vs %+v", user, got[3], list[0].received()[3])
			}
		}
	}
}

// Must show 3: a subscriber that drops and resumes with Last-Event-ID (or
// lastEvent) gets every missed event once, then live ones.
func TestSSEResumeGetsEveryMissedEventOnce(t *testing.T) {
	s := newStack(t)
	r := s.start(t, s.config())
	client := streamingClient(t)
	tok := s.token(t, "u1", time.Hour)
	s.sessionFor(t, "u1")
	s.sessionFor(t, "other")

	first := open(t, client, r.sse, "u1", tok, "")
	s.addImage(t, "u1", "i1")
	s.addImage(t, "u1", "i2")
	// session-started may or may not arrive live, depending on timing.
	testenv.Eventually(t, 5*time.Second, "two live photos", func() bool {
		got := first.received()
		return len(got) > 0 && got[len(got)-1].ImageID == "i2"
	})
	first.close()
	got := first.received()
	last := got[len(got)-1].SeqID

	for _, id := range []string{"i3", "i4", "i5"} {
		s.addImage(t, "u1", id)
		s.addImage(t, "other", "x-"+id)
	}
	// The missed events are in the stream before we reconnect.
	testenv.Eventually(t, 5*time.Second, "events stored", func() bool { return len(s.storedEvents(t)) == 2+2+6 })

	tests := []struct {
		name string
		open func() *sub
	}{
		{"Last-Event-ID header", func() *sub { return open(t, client, r.sse, "u1", tok, last) }},
		{"lastEvent query", func() *sub {
			req, _ := http.NewRequest("GET", realtime.SubscribeURL("http://"+r.sse+SSE, "session:u1", tok, last), nil)
			return openRequest(t, client, req)
		}},
		{"header wins over an older lastEvent", func() *sub {
			req, _ := http.NewRequest("GET", realtime.SubscribeURL("http://"+r.sse+SSE, "session:u1", tok, "1"), nil)
			req.Header.Set("Last-Event-ID", last)
			return openRequest(t, client, req)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := tt.open()
			testenv.Eventually(t, 5*time.Second, "three replayed events", func() bool { return sb.count() >= 3 })
			var got []string
			for _, rc := range sb.received() {
				got = append(got, rc.ImageID)
			}
			if d := cmp.Diff([]string{"i3", "i4", "i5"}, got); d != "" {
				t.Errorf("replayed (-want +got):\n%s", d)
			}
			sb.close()
		})
	}

	// An id beyond the stream's end (the stream was recreated since) does
	// not hide new events.
	stale := open(t, client, r.sse, "u1", tok, "999999")

	// Resumed, then live, with no repeat.
	sb := open(t, client, r.sse, "u1", tok, last)
	testenv.Eventually(t, 5*time.Second, "replay", func() bool { return sb.count() == 3 })
	s.addImage(t, "u1", "i6")
	testenv.Eventually(t, 5*time.Second, "live after replay", func() bool { return sb.count() == 4 })
	if got := sb.received()[3].ImageID; got != "i6" {
		t.Errorf("live event = %s", got)
	}
	testenv.Eventually(t, 5*time.Second, "live event after a stale id", func() bool { return stale.count() == 1 })
	if got := stale.received()[0].ImageID; got != "i6" {
		t.Errorf("after a stale id got %s", got)
	}
	if r.metric(t, "relay_sse_resumes_total") < 4 {
		t.Errorf("resumes not counted")
	}
}

// A subscriber that keeps dropping while events flow ends up with every
// event exactly once, in order: the replay-then-live hand-over has no gap and
// no repeat, and a subscriber too slow for its buffer is dropped and resumes.
func TestSSEReconnectingWhileEventsFlowLosesNothing(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	cfg.SubscriberBuffer = 2
	r := s.start(t, cfg)
	client := streamingClient(t)
	tok := s.token(t, "u1", time.Hour)
	s.sessionFor(t, "u1")

	const n = 150
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("img-%03d", i))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, id := range want {
			s.addImage(t, "u1", id)
		}
	}()

	var got []string
	last := ""
	// The first connection starts before the first photo; the session-started
	// event may or may not be seen, so it is left out.
	for len(got) < n {
		sb := open(t, client, r.sse, "u1", tok, last)
		// Read a few events, then drop the connection.
		testenv.Eventually(t, 30*time.Second, "some events", func() bool {
			select {
			case <-sb.end:
				return true // dropped by the relay as too slow
			default:
			}
			images := 0
			for _, rc := range sb.received() {
				if rc.Name == "image-uploaded" {
					images++
				}
			}
			return sb.count() >= 7 || len(got)+images >= n
		})
		sb.close()
		for _, rc := range sb.received() {
			last = rc.SeqID
			if rc.Name == "image-uploaded" {
				got = append(got, rc.ImageID)
			}
		}
	}
	<-done
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events across reconnects (-want +got):\n%s", d)
	}
}

// Must show 2 (built-in SSE): only a current token for the channel's own
// user opens it; expiry mid-stream ends it with 40142.
func TestSSETokenChecks(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	cfg.AllowedOrigins = []string{"https://desktop.example"}
	r := s.start(t, cfg)
	tokA := s.token(t, "userA", time.Hour)
	expired, _, _ := realtime.Mint(s.key, "userA", time.Minute, time.Now().Add(-2*time.Minute))
	foreign, _, _ := realtime.Mint(realtime.Key{Name: "local", Secret: "other"}, "userA", time.Hour, time.Now())

	tests := []struct {
		name      string
		query     string
		auth      string
		wantCode  int
		wantState int
	}{
		{"own channel", "channels=session%3AuserA&accessToken=" + tokA, "", 0, 200},
		{"bearer header", "channels=session%3AuserA", "Bearer " + tokA, 0, 200},
		{"user B's channel", "channels=session%3AuserB&accessToken=" + tokA, "", realtime.CodeNotPermitted, 401},
		{"both channels", "channels=session%3AuserA,session%3AuserB&accessToken=" + tokA, "", realtime.CodeNotPermitted, 401},
		{"no token", "channels=session%3AuserA", "", realtime.CodeBadCredentials, 401},
		{"expired", "channels=session%3AuserA&accessToken=" + expired, "", realtime.CodeTokenExpired, 401},
		{"other secret", "channels=session%3AuserA&accessToken=" + foreign, "", realtime.CodeTokenInvalid, 401},
		{"garbage", "channels=session%3AuserA&accessToken=abc", "", realtime.CodeTokenInvalid, 401},
		{"not a session channel", "channels=admin&accessToken=" + tokA, "", realtime.CodeBadChannel, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+r.sse+SSE+"?v=1.2&"+tt.query, nil)
			req.Header.Set("Origin", "https://desktop.example")
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.wantState {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantState)
			}
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://desktop.example" {
				t.Errorf("CORS origin = %q", got)
			}
			if tt.wantCode == 0 {
				if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
					t.Errorf("content type %q", ct)
				}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			e, ok := realtime.ReadError(b)
			if !ok || e.Code != tt.wantCode || e.StatusCode != tt.wantState {
				t.Errorf("body %s, want code %d", b, tt.wantCode)
			}
		})
	}

	t.Run("expiry mid-stream", func(t *testing.T) {
		cfg := s.config()
		// The relay's clock is 200 ms short of the token's expiry.
		tok, exp, _ := realtime.Mint(s.key, "userA", time.Minute, time.Now())
		cfg.Now = func() time.Time { return time.Now().Add(time.Until(exp) - 200*time.Millisecond) }
		r2 := s.start(t, cfg)
		resp, err := http.Get(realtime.SubscribeURL("http://"+r2.sse+SSE, "session:userA", tok, ""))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("open: %v %v", err, resp)
		}
		defer resp.Body.Close()
		rd := realtime.NewReader(resp.Body)
		ev, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		var ei realtime.ErrorInfo
		_ = json.Unmarshal([]byte(ev.Data), &ei)
		if d := cmp.Diff(realtime.ErrorInfo{Code: 40142, StatusCode: 401, Message: "access token expired"}, ei); d != "" || ev.Event != "error" {
			t.Errorf("event %q (-want +got):\n%s", ev.Event, d)
		}
		if _, err := rd.Next(); err != io.EOF {
			t.Errorf("stream still open after expiry: %v", err)
		}
	})
}

// The SSE envelope is exactly the documented one, and no presigned URL
// reaches a browser.
func TestSSEEnvelope(t *testing.T) {
	s := newStack(t)
	r := s.start(t, s.config())
	s.sessionFor(t, "u1")
	resp, err := http.Get(realtime.SubscribeURL("http://"+r.sse+SSE, "session:u1", s.token(t, "u1", time.Hour), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s.addImage(t, "u1", "img1")
	rd := realtime.NewReader(resp.Body)
	var evs []realtime.Event
	for len(evs) < 2 {
		ev, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	stored := s.storedEvents(t)
	var env map[string]any
	if err := json.Unmarshal([]byte(evs[1].Data), &env); err != nil {
		t.Fatal(err)
	}
	data, _ := env["data"].(string)
	delete(env, "data")
	want := map[string]any{"id": stored[1].ID, "name": "image-uploaded", "timestamp": float64(stored[1].Time.UnixMilli()),
		"encoding": "json", "channel": "session:u1"}
	if d := cmp.Diff(want, env); d != "" || evs[1].Event != "message" || evs[1].ID != "2" {
		t.Errorf("envelope (event %q id %q) (-want +got):\n%s", evs[1].Event, evs[1].ID, d)
	}
	if strings.Contains(data, "s3Url") || strings.Contains(data, "X-Amz-Signature") || !strings.Contains(data, `"id":"img1"`) {
		t.Errorf("data = %s", data)
	}
	var payload struct {
		SessionID  string `json:"sessionId"`
		Version    int64  `json:"version"`
		ImageCount int    `json:"imageCount"`
	}
	if err := json.Unmarshal([]byte(data), &payload); err != nil || payload.Version != 2 || payload.ImageCount != 1 || payload.SessionID == "" {
		t.Errorf("payload = %+v (%v)", payload, err)
	}
}

// Heartbeats keep idle streams open, and the ops endpoints report the
// subscribers.
func TestSSEHeartbeatsAndOps(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	cfg.Heartbeat = 20 * time.Millisecond
	r := s.start(t, cfg)
	resp, err := http.Get(realtime.SubscribeURL("http://"+r.sse+SSE, "session:u1", s.token(t, "u1", time.Hour), ""))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("open: %v %v", err, resp)
	}
	var comments atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() == ":" {
				comments.Add(1)
			}
		}
	}()
	testenv.Eventually(t, 5*time.Second, "three heartbeats", func() bool { return comments.Load() >= 3 })

	res, err := http.Get("http://" + r.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(text), "relay_sse_subscribers 1") {
		t.Errorf("metrics lack the subscriber gauge:\n%s", text)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		res, err := http.Get("http://" + r.ops + path)
		if err != nil || res.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, err, res)
			continue
		}
		res.Body.Close()
	}
	resp.Body.Close()
	<-done
}
