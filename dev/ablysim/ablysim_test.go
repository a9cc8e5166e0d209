package ablysim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/realtime"
)

var key = realtime.Key{Name: "app.key", Secret: "sekrit"}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time)     { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func start(t *testing.T, opt Options) *Server {
	t.Helper()
	opt.Keys = append(opt.Keys, key)
	s, err := Start("127.0.0.1:0", opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type msg struct {
	ID       string `json:"id,omitempty"`
	Name     string `json:"name,omitempty"`
	Data     string `json:"data,omitempty"`
	Encoding string `json:"encoding,omitempty"`
}

func post(t *testing.T, s *Server, k realtime.Key, channel string, body any) (int, realtime.ErrorInfo) {
	t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", s.URL()+"/channels/"+strings.ReplaceAll(channel, ":", "%3A")+"/messages", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(k.Name, k.Secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	e, _ := realtime.ReadError(b)
	return resp.StatusCode, e
}

func TestPublishRules(t *testing.T) {
	big := strings.Repeat("x", 64*1024)
	tests := []struct {
		name     string
		key      realtime.Key
		body     any
		wantCode int // Ably error code, 0 for 201
		wantIDs  []string
	}{
		{"one object", key, msg{ID: "a", Name: "n", Data: `{"x":1}`, Encoding: "json"}, 0, []string{"a"}},
		{"array with base:index ids", key, []msg{{ID: "b:0", Name: "n"}, {ID: "b:1", Name: "n"}}, 0, []string{"b:0", "b:1"}},
		{"array without ids", key, []msg{{Name: "n"}, {Name: "n"}}, 0, []string{"sim-1", "sim-2"}},
		{"ids not base:index", key, []msg{{ID: "c", Name: "n"}, {ID: "d", Name: "n"}}, realtime.CodeBadMessageID, nil},
		{"indexes out of order", key, []msg{{ID: "e:1", Name: "n"}, {ID: "e:0", Name: "n"}}, realtime.CodeBadMessageID, nil},
		{"two bases", key, []msg{{ID: "f:0", Name: "n"}, {ID: "g:1", Name: "n"}}, realtime.CodeBadMessageID, nil},
		{"too large", key, msg{ID: "h", Name: "n", Data: big}, realtime.CodeMessageTooLarge, nil},
		{"too large together", key, []msg{{ID: "i:0", Data: big[:40000]}, {ID: "i:1", Data: big[:40000]}}, realtime.CodeMessageTooLarge, nil},
		{"wrong secret", realtime.Key{Name: "app.key", Secret: "nope"}, msg{ID: "j"}, realtime.CodeBadCredentials, nil},
		{"malformed", key, "not messages", realtime.CodeBadRequest, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Options{})
			status, e := post(t, s, tt.key, "session:u1", tt.body)
			if tt.wantCode == 0 {
				if status != 201 {
					t.Fatalf("status %d %+v", status, e)
				}
			} else if e.Code != tt.wantCode || e.StatusCode != status {
				t.Fatalf("got %d %+v, want code %d", status, e, tt.wantCode)
			}
			var got []string
			for _, m := range s.Messages("session:u1") {
				got = append(got, m.ID)
			}
			if d := cmp.Diff(tt.wantIDs, got); d != "" {
				t.Errorf("stored ids (-want +got):\n%s", d)
			}
		})
	}
}

func TestDedupeWithinTwoMinutes(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := start(t, Options{Now: c.Now})
	for _, step := range []struct {
		advance time.Duration
		id      string
	}{{0, "m1"}, {time.Minute, "m1"}, {59 * time.Second, "m1"}, {2 * time.Second, "m1"}, {0, "m2"}} {
		c.Add(step.advance)
		if status, e := post(t, s, key, "ch", msg{ID: step.id, Name: "n"}); status != 201 {
			t.Fatalf("status %d %+v", status, e)
		}
	}
	var got []string
	for _, m := range s.Messages("") {
		got = append(got, m.ID)
	}
	// m1 is dropped at +1m and +1m59s, taken again after the window.
	if d := cmp.Diff([]string{"m1", "m1", "m2"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	var dupes []int
	for _, r := range s.Requests() {
		dupes = append(dupes, r.Dupes)
	}
	if d := cmp.Diff([]int{0, 1, 1, 0, 0}, dupes); d != "" {
		t.Errorf("dupes per request (-want +got):\n%s", d)
	}
}

func TestChannelRate(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := start(t, Options{Now: c.Now, ChannelRate: 50})
	batch := func(base string, n int) []msg {
		var out []msg
		for i := range n {
			out = append(out, msg{ID: base + ":" + string(rune('0'+i%10)), Name: "n"})
		}
		return out
	}
	var statuses []int
	for _, n := range []int{1, 1} {
		st, _ := post(t, s, key, "a", batch("x", n))
		statuses = append(statuses, st)
	}
	for i := range 48 {
		st, _ := post(t, s, key, "a", msg{ID: "p" + string(rune('A'+i)), Name: "n"})
		if st != 201 {
			t.Fatalf("publish %d within the rate: %d", i, st)
		}
	}
	st, e := post(t, s, key, "a", msg{ID: "over", Name: "n"})
	statuses = append(statuses, st)
	st2, _ := post(t, s, key, "b", msg{ID: "other-channel", Name: "n"})
	statuses = append(statuses, st2)
	c.Add(100 * time.Millisecond) // 5 more tokens
	st3, _ := post(t, s, key, "a", msg{ID: "later", Name: "n"})
	statuses = append(statuses, st3)
	if d := cmp.Diff([]int{201, 201, 429, 201, 201}, statuses); d != "" {
		t.Errorf("statuses (-want +got):\n%s", d)
	}
	if e.Code != realtime.CodeRateLimited {
		t.Errorf("code = %d", e.Code)
	}
	if got := s.Refused()[realtime.CodeRateLimited]; got != 1 {
		t.Errorf("refused for rate = %d", got)
	}
}

func TestFaults(t *testing.T) {
	s := start(t, Options{})
	s.Inject(Fault{Status: 503}, Fault{Status: 500, Code: 50001}, Fault{Delay: time.Hour}, Fault{Accept: true, Delay: time.Hour})
	client := &http.Client{Timeout: 300 * time.Millisecond}
	do := func(id string) (int, realtime.ErrorInfo, error) {
		raw, _ := json.Marshal(msg{ID: id, Name: "n"})
		req, _ := http.NewRequest("POST", s.URL()+"/channels/c/messages", bytes.NewReader(raw))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(key.Name, key.Secret)
		resp, err := client.Do(req)
		if err != nil {
			return 0, realtime.ErrorInfo{}, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		e, _ := realtime.ReadError(b)
		return resp.StatusCode, e, nil
	}
	type outcome struct {
		Status  int
		Code    int
		Timeout bool
	}
	var got []outcome
	for _, id := range []string{"a", "a", "a", "a", "a"} {
		st, e, err := do(id)
		got = append(got, outcome{st, e.Code, err != nil})
	}
	want := []outcome{{503, 50300, false}, {500, 50001, false}, {0, 0, true}, {0, 0, true}, {201, 0, false}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	// The fourth request was taken although the client timed out; the
	// fifth, its retry, was a duplicate.
	if n := len(s.Messages("c")); n != 1 {
		t.Errorf("stored %d messages, want 1", n)
	}
	testenv.Eventually(t, 2*time.Second, "request log", func() bool {
		r := s.Requests()
		return len(r) == 5 && r[4].Dupes == 1 && r[3].Dupes == 0
	})
}

func TestSSEHonoursTheTokenCapability(t *testing.T) {
	c := &clock{t: time.Now()}
	s := start(t, Options{Now: c.Now, Heartbeat: time.Hour})
	tokA, exp, err := realtime.Mint(key, "userA", time.Minute, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	get := func(channel, last string) *http.Response {
		t.Helper()
		resp, err := http.Get(realtime.SubscribeURL(s.URL()+"/sse", channel, tokA, last))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// Refused on user B's channel by capability.
	resp := get("session:userB", "")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e, _ := realtime.ReadError(b); resp.StatusCode != 401 || e.Code != realtime.CodeNotPermitted {
		t.Fatalf("user B's channel: %d %s", resp.StatusCode, b)
	}

	// Own channel: what is published arrives; resume replays what came after.
	post(t, s, key, "session:userA", msg{ID: "before", Name: "image-uploaded"})
	resp = get("session:userA", "")
	r := realtime.NewReader(resp.Body)
	post(t, s, key, "session:userB", msg{ID: "not-for-a", Name: "image-uploaded"})
	post(t, s, key, "session:userA", msg{ID: "live", Name: "image-uploaded", Data: `{"v":1}`, Encoding: "json"})
	ev, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := ev.Message()
	if m.ID != "live" || m.Channel != "session:userA" || m.Data != `{"v":1}` || m.Encoding != "json" {
		t.Errorf("first live message = %+v", m)
	}
	resp.Body.Close()

	resp = get("session:userA", "0")
	r = realtime.NewReader(resp.Body)
	var ids []string
	for range 2 {
		ev, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		m, _ := ev.Message()
		ids = append(ids, m.ID)
	}
	if d := cmp.Diff([]string{"before", "live"}, ids); d != "" {
		t.Errorf("replay (-want +got):\n%s", d)
	}
	resp.Body.Close()

	// Close to expiry the stream ends with 40142.
	c.Set(exp.Add(-200 * time.Millisecond))
	resp = get("session:userA", "")
	r = realtime.NewReader(resp.Body)
	ev, err = r.Next()
	if err != nil {
		t.Fatal(err)
	}
	var ei realtime.ErrorInfo
	_ = json.Unmarshal([]byte(ev.Data), &ei)
	if ev.Event != "error" || ei.Code != realtime.CodeTokenExpired {
		t.Errorf("at expiry got %+v", ev)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("stream not closed after the error: %v", err)
	}
	resp.Body.Close()

	// Expired: refused up front.
	c.Set(exp)
	resp = get("session:userA", "")
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if e, _ := realtime.ReadError(b); resp.StatusCode != 401 || e.Code != realtime.CodeTokenExpired {
		t.Errorf("expired: %d %s", resp.StatusCode, b)
	}
}
