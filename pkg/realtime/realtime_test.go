package realtime

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/pkg/config"
)

var (
	testKey = Key{Name: "app1.key1", Secret: "s3cr3t-value"}
	t0      = time.Date(2026, 11, 23, 4, 0, 0, 0, time.UTC)
)

func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatalf("segment: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("segment json: %v", err)
	}
	return m
}

func TestMintIsAnAblyJWTForOneChannel(t *testing.T) {
	tok, exp, err := Mint(testKey, "user_abc", 10*time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(10 * time.Minute); !exp.Equal(want) {
		t.Errorf("expires = %v, want %v", exp, want)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	gotHeader := decodeSegment(t, parts[0])
	wantHeader := map[string]any{"alg": "HS256", "typ": "JWT", "kid": "app1.key1"}
	if d := cmp.Diff(wantHeader, gotHeader); d != "" {
		t.Errorf("header (-want +got):\n%s", d)
	}
	gotClaims := decodeSegment(t, parts[1])
	wantClaims := map[string]any{
		"iat":               float64(t0.Unix()),
		"exp":               float64(t0.Add(10 * time.Minute).Unix()),
		"x-ably-capability": `{"session:user_abc":["subscribe"]}`,
		"x-ably-clientId":   "user_abc",
	}
	if d := cmp.Diff(wantClaims, gotClaims); d != "" {
		t.Errorf("claims (-want +got):\n%s", d)
	}
	// The signature is HMAC-SHA256 of header.claims with the key secret.
	mac := hmac.New(sha256.New, []byte(testKey.Secret))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if got, want := parts[2], base64.RawURLEncoding.EncodeToString(mac.Sum(nil)); got != want {
		t.Errorf("signature = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	good, _, err := Mint(testKey, "u1", time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, _ := Mint(Key{Name: "app1.key1", Secret: "another"}, "u1", time.Minute, t0)
	otherKid, _, _ := Mint(Key{Name: "app1.key2", Secret: testKey.Secret}, "u1", time.Minute, t0)
	parts := strings.Split(good, ".")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"app1.key1"}`)) + "." + parts[1] + "."
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(
		`{"iat":`+jsonInt(t0.Unix())+`,"exp":`+jsonInt(t0.Add(time.Hour).Unix())+`,"x-ably-capability":"{\"*\":[\"*\"]}"}`)) + "." + parts[2]
	noCap := sign(t, `{"alg":"HS256","kid":"app1.key1"}`, `{"iat":`+jsonInt(t0.Unix())+`,"exp":`+jsonInt(t0.Add(time.Hour).Unix())+`}`)
	noExp := sign(t, `{"alg":"HS256","kid":"app1.key1"}`, `{"iat":`+jsonInt(t0.Unix())+`,"x-ably-capability":"{}"}`)

	tests := []struct {
		name  string
		token string
		at    time.Time
		want  error
	}{
		{"fresh", good, t0, nil},
		{"one second before expiry", good, t0.Add(59 * time.Second), nil},
		{"at expiry", good, t0.Add(time.Minute), ErrTokenExpired},
		{"after expiry", good, t0.Add(time.Hour), ErrTokenExpired},
		{"issued in the future", good, t0.Add(-time.Minute), ErrTokenInvalid},
		{"empty", "", t0, ErrNoToken},
		{"garbage", "not.a.jwt", t0, ErrTokenInvalid},
		{"signed with another secret", otherKey, t0, ErrTokenInvalid},
		{"another key name", otherKid, t0, ErrTokenInvalid},
		{"alg none", none, t0, ErrTokenInvalid},
		{"claims tampered", tampered, t0, ErrTokenInvalid},
		{"no capability", noCap, t0, ErrTokenInvalid},
		{"no exp", noExp, t0, ErrTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Verify(tt.token, testKey, tt.at)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify err = %v, want %v", err, tt.want)
			}
			if err == nil {
				want := Claims{KeyName: "app1.key1", ClientID: "u1", IssuedAt: t0, ExpiresAt: t0.Add(time.Minute),
					Capability: map[string][]string{"session:u1": {"subscribe"}}}
				if d := cmp.Diff(want, c); d != "" {
					t.Errorf("claims (-want +got):\n%s", d)
				}
			}
		})
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func sign(t *testing.T, header, claims string) string {
	t.Helper()
	s := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(testKey.Secret))
	mac.Write([]byte(s))
	return s + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func TestAuthorizeOnlyTheTokensOwnChannel(t *testing.T) {
	tokA, _, err := Mint(testKey, "userA", time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	wild := sign(t, `{"alg":"HS256","kid":"app1.key1"}`,
		`{"iat":`+jsonInt(t0.Unix())+`,"exp":`+jsonInt(t0.Add(time.Hour).Unix())+`,"x-ably-capability":"{\"session:*\":[\"subscribe\"],\"other\":[\"*\"]}"}`)
	tests := []struct {
		name     string
		token    string
		channels []string
		want     error
		wantCode int
	}{
		{"own channel", tokA, []string{"session:userA"}, nil, 0},
		{"another user's channel", tokA, []string{"session:userB"}, ErrNotPermitted, CodeNotPermitted},
		{"own and another", tokA, []string{"session:userA", "session:userB"}, ErrNotPermitted, CodeNotPermitted},
		{"not a session channel", tokA, []string{"userA"}, ErrBadChannel, CodeBadChannel},
		{"bad user id", tokA, []string{"session:a.b"}, ErrBadChannel, CodeBadChannel},
		{"no channel", tokA, nil, ErrBadChannel, CodeBadChannel},
		{"namespace wildcard", wild, []string{"session:userB"}, nil, 0},
		{"a session of its own user", tokA, []string{"session:userA:s1"}, ErrNotPermitted, CodeNotPermitted},
		{"bad session id", tokA, []string{"session:userA:s.1"}, ErrBadChannel, CodeBadChannel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, refs, err := Authorize(tt.token, testKey, tt.channels, t0)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err != nil {
				if got := ErrorFor(err).Code; got != tt.wantCode {
					t.Errorf("code = %d, want %d", got, tt.wantCode)
				}
				return
			}
			var want []Ref
			for _, ch := range tt.channels {
				want = append(want, Ref{User: strings.TrimPrefix(ch, "session:")})
			}
			if d := cmp.Diff(want, refs); d != "" {
				t.Errorf("refs (-want +got):\n%s", d)
			}
		})
	}
	_, _, err = Authorize(tokA, testKey, []string{"session:userA"}, t0.Add(time.Minute))
	if got := ErrorFor(err); got.Code != CodeTokenExpired || got.StatusCode != 401 {
		t.Errorf("expired token: %+v, want 40142/401", got)
	}
}

func TestIssueNeverOutlivesTheSession(t *testing.T) {
	s := Settings{Mode: ModeSSE, Key: testKey, URL: DefaultSSEURL, TTL: time.Hour}
	tests := []struct {
		name     string
		notAfter time.Time
		wantExp  time.Time
		wantErr  error
	}{
		{"session outlives the ttl", t0.Add(2 * time.Hour), t0.Add(time.Hour), nil},
		{"session ends first", t0.Add(25*time.Minute + 500*time.Millisecond), t0.Add(25 * time.Minute), nil},
		{"no session limit", time.Time{}, t0.Add(time.Hour), nil},
		{"session ended", t0, time.Time{}, ErrSessionEnded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Issue(Grant{UserID: "u1"}, tt.notAfter, t0.Add(300*time.Millisecond))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !got.ExpiresAt.Equal(tt.wantExp) {
				t.Errorf("expiresAt = %v, want %v", got.ExpiresAt, tt.wantExp)
			}
			if !tt.notAfter.IsZero() && got.ExpiresAt.After(tt.notAfter) {
				t.Errorf("token outlives the session")
			}
			c, err := Verify(got.Token, testKey, t0)
			if err != nil {
				t.Fatal(err)
			}
			if !c.ExpiresAt.Equal(got.ExpiresAt) {
				t.Errorf("exp claim %v != expiresAt %v", c.ExpiresAt, got.ExpiresAt)
			}
			if got.Channel != "session:u1" || got.Mode != ModeSSE || got.URL != DefaultSSEURL {
				t.Errorf("token answer = %+v", got)
			}
		})
	}
}

func TestReadSettings(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Settings
		wantErr bool
	}{
		{"ably", map[string]string{"ABLY_API_KEY": "app.k:sec"},
			Settings{Mode: ModeAbly, Key: Key{"app.k", "sec"}, URL: AblySSEURL, TTL: time.Hour, PhoneTTL: DefaultPhoneTTL}, false},
		{"ably ignores the relay's url", map[string]string{"ABLY_API_KEY": "app.k:sec", "REALTIME_SSE_URL": "http://localhost:8081/sse"},
			Settings{Mode: ModeAbly, Key: Key{"app.k", "sec"}, URL: AblySSEURL, TTL: time.Hour, PhoneTTL: DefaultPhoneTTL}, false},
		{"ably stand-in", map[string]string{"ABLY_API_KEY": "app.k:sec", "ABLY_SSE_URL": "http://127.0.0.1:9/sse"},
			Settings{Mode: ModeAbly, Key: Key{"app.k", "sec"}, URL: "http://127.0.0.1:9/sse", TTL: time.Hour, PhoneTTL: DefaultPhoneTTL}, false},
		{"sse", map[string]string{"REALTIME_SIGNING_KEY": "local:abc", "REALTIME_SSE_URL": "http://x/sse", "REALTIME_TOKEN_TTL": "10m"},
			Settings{Mode: ModeSSE, Key: Key{"local", "abc"}, URL: "http://x/sse", TTL: 10 * time.Minute, PhoneTTL: DefaultPhoneTTL}, false},
		{"sse without key", map[string]string{}, Settings{Mode: ModeSSE, URL: DefaultSSEURL, TTL: time.Hour, PhoneTTL: DefaultPhoneTTL}, true},
		{"malformed key", map[string]string{"ABLY_API_KEY": "nocolon"}, Settings{Mode: ModeAbly, URL: AblySSEURL, TTL: time.Hour, PhoneTTL: DefaultPhoneTTL}, true},
		{"short desktop ttl caps the phone's", map[string]string{"REALTIME_SIGNING_KEY": "a:b", "REALTIME_TOKEN_TTL": "10s"},
			Settings{Mode: ModeSSE, Key: Key{"a", "b"}, URL: DefaultSSEURL, TTL: 10 * time.Second, PhoneTTL: 10 * time.Second}, false},
		{"ttl too long", map[string]string{"REALTIME_SIGNING_KEY": "a:b", "REALTIME_TOKEN_TTL": "48h"},
			Settings{Mode: ModeSSE, Key: Key{"a", "b"}, URL: DefaultSSEURL, TTL: 48 * time.Hour, PhoneTTL: DefaultPhoneTTL}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := config.New(func(k string) string { return tt.env[k] })
			got := ReadSettings(r)
			if (r.Err() != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", r.Err(), tt.wantErr)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("settings (-want +got):\n%s", d)
			}
		})
	}
}

func TestKeyNeverPrintsItsSecret(t *testing.T) {
	k, err := ParseKey("app.key:very-secret")
	if err != nil {
		t.Fatal(err)
	}
	if s := k.String(); strings.Contains(s, "very-secret") {
		t.Errorf("String() = %q shows the secret", s)
	}
	if k.Encode() != "app.key:very-secret" {
		t.Errorf("Encode() = %q", k.Encode())
	}
	for _, bad := range []string{"", "name", ":secret", "name:", "a b:c"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
	g := GenerateKey("local")
	if g.Name != "local" || len(g.Secret) < 40 || g == GenerateKey("local") {
		t.Errorf("GenerateKey = %v, want a fresh 256-bit secret", g)
	}
}

func TestSSEFramesRoundTrip(t *testing.T) {
	m := Message{ID: "e1", Name: "image-uploaded", Timestamp: 1, Encoding: "json", Channel: "session:u1", Data: `{"a":"line1\nline2"}`}
	data, _ := json.Marshal(m)
	stream := string(Heartbeat) + string(Frame("message", "7", data)) + string(ErrorEvent(ErrorFor(ErrTokenExpired)))
	r := NewReader(strings.NewReader(stream))
	ev, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ev.Message()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(m, got); d != "" || ev.ID != "7" || ev.Event != "message" {
		t.Errorf("message (-want +got):\n%s id=%q event=%q", d, ev.ID, ev.Event)
	}
	var payload map[string]string
	if err := got.DecodeData(&payload); err != nil || payload["a"] != "line1\nline2" {
		t.Errorf("DecodeData = %v, %v", payload, err)
	}
	ev, err = r.Next()
	if err != nil {
		t.Fatal(err)
	}
	var ei ErrorInfo
	if err := json.Unmarshal([]byte(ev.Data), &ei); err != nil || ev.Event != "error" || ei.Code != CodeTokenExpired {
		t.Errorf("error event = %+v (%v)", ev, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("end = %v, want EOF", err)
	}
	if r.Comments != 1 {
		t.Errorf("comments = %d, want 1", r.Comments)
	}
}

func TestWriteErrorIsAblyShaped(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(rec, ErrorFor(ErrNotPermitted))
	got, ok := ReadError(rec.Body.Bytes())
	if !ok || rec.Code != 401 {
		t.Fatalf("status %d body %s", rec.Code, rec.Body)
	}
	if d := cmp.Diff(ErrorInfo{CodeNotPermitted, 401, "channel denied access based on given capability"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestSubscribeURL(t *testing.T) {
	got := SubscribeURL("http://127.0.0.1:8081/sse", "session:u1", "a.b.c", "42")
	want := "http://127.0.0.1:8081/sse?accessToken=a.b.c&channels=session%3Au1&lastEvent=42&v=1.2"
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func FuzzVerify(f *testing.F) {
	good, _, _ := Mint(testKey, "u1", time.Minute, t0)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := Verify(tok, testKey, t0)
		if err == nil && (c.Capability == nil || !c.ExpiresAt.After(t0)) {
			t.Errorf("accepted %q with claims %+v", tok, c)
		}
	})
}

// A phone's token covers its one session's channel: not the user's channel
// (every session), not another session of the same user, and it names the
// phone so a relay can end its stream when the phone is removed.
func TestPhoneGrantIsForOneSession(t *testing.T) {
	s := Settings{Mode: ModeSSE, Key: testKey, URL: DefaultSSEURL, TTL: time.Hour, PhoneTTL: 5 * time.Minute}
	g := Grant{UserID: "u1", SessionID: "sessA", PhoneID: "ph1"}
	tok, err := s.Issue(g, t0.Add(2*time.Hour), t0)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Channel != "session:u1:sessA" || tok.SessionID != "sessA" || !tok.ExpiresAt.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("phone token = %+v", tok)
	}
	tests := []struct {
		channel string
		want    error
	}{
		{"session:u1:sessA", nil},
		{"session:u1", ErrNotPermitted},
		{"session:u1:sessC", ErrNotPermitted},
		{"session:u2:sessA", ErrNotPermitted},
	}
	for _, tt := range tests {
		c, refs, err := Authorize(tok.Token, testKey, []string{tt.channel}, t0)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.channel, err, tt.want)
			continue
		}
		if err == nil && (c.PhoneID() != "ph1" || refs[0] != (Ref{User: "u1", Session: "sessA"})) {
			t.Errorf("%s: phone %q refs %+v", tt.channel, c.PhoneID(), refs)
		}
	}
	desk, _ := s.Issue(Grant{UserID: "u1"}, time.Time{}, t0)
	if c, err := Verify(desk.Token, testKey, t0); err != nil || c.PhoneID() != "" || !desk.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("desktop token: %+v %v", c, err)
	}
	for _, bad := range []Grant{{UserID: "u1", SessionID: "s"}, {UserID: "u1", PhoneID: "p"}, {UserID: "u1", SessionID: "a:b", PhoneID: "p"}} {
		if _, err := s.Issue(bad, time.Time{}, t0); !errors.Is(err, ErrBadUserID) {
			t.Errorf("%+v: err = %v", bad, err)
		}
	}
	if got := ErrorFor(ErrRevoked); got.Code != CodeTokenRevoked || got.StatusCode != 401 {
		t.Errorf("revoked maps to %+v", got)
	}
}
