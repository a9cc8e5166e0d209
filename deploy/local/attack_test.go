package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/devissuer"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/blob"
	"github.com/clinicalimages/clinimg/pkg/jwtauth"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
	"github.com/clinicalimages/clinimg/services/api"
)

// attackTTL is the stack's SESSION_TTL in the attack test: short, so the
// expiry sweep can be watched, long enough that a loaded machine does not
// let a session lapse between two steps of a row.
const attackTTL = 10 * time.Second

// TestAttacks is issue 12's attack table: one row per item of "What was
// seen", each tried from outside as a hostile phone or a curious second
// device would, against the whole stack (API, relay's built-in SSE,
// thumbnailer, committer), each asserting the refusal or the absence of
// data. Each row is a function because each attack has its own moves; every
// row uses its own user. Run one with -run 'TestAttacks/1_'.
func TestAttacks(t *testing.T) {
	// A real Redis: sessions must really expire (the in-process one only
	// expires keys when told to).
	_, prefix := testenv.Redis(t)
	k := newClinic(t, map[string]string{
		"SESSION_TTL": attackTTL.String(), "SESSION_SWEEP_INTERVAL": "250ms", "MAX_UPLOADS": "3",
	}, func(o *Options) { o.RedisURL, o.RedisPrefix = testenv.RedisURL(), prefix })
	for _, row := range []struct {
		name   string
		attack func(t *testing.T, k *clinic)
	}{
		{"1_revoked_phone_keeps_reading_the_next_patient", attackRevokedPhone},
		{"2_replay_crosses_patients", attackReplay},
		{"3_old_QR_codes_stay_valid", attackOldQR},
		{"4_audience_and_issuer_optional", attackAudience},
		{"5_the_edge", attackEdge},
		{"6_input", attackInput},
		{"7_nothing_cleans_up_after_an_expired_session", attackExpiry},
	} {
		t.Run(row.name, func(t *testing.T) { row.attack(t, k) })
	}
}

// actor is one user's desktop and phones on the stack, with t the row's.
type actor struct {
	t    *testing.T
	k    *clinic
	c    *client
	user string
	desk string
}

func newActor(t *testing.T, k *clinic, user string) *actor {
	desk, err := k.st.DesktopToken(user)
	if err != nil {
		t.Fatal(err)
	}
	return &actor{t: t, k: k, c: &client{t: t, base: k.st.URL}, user: user, desk: desk}
}

func (a *actor) path(p string) string { return "/api/users/" + a.user + p }

// qr starts (or continues) a session for patient and returns its QR token.
func (a *actor) qr(patient string, discard bool) string {
	var out struct {
		SessionToken string `json:"sessionToken"`
	}
	a.c.call("POST", "/api/session-tokens", a.desk, map[string]any{"patientId": patient, "encounterId": "enc-" + patient, "discard": discard}, http.StatusOK, &out)
	return out.SessionToken
}

// pair redeems a QR token as a phone and returns its credential.
func (a *actor) pair(qr string) string {
	var out struct {
		PhoneToken string `json:"phoneToken"`
	}
	a.c.call("GET", "/api/session-tokens/"+qr, "", nil, http.StatusOK, &out)
	return out.PhoneToken
}

// try makes a request and returns its status and error code.
func (a *actor) try(method, path, token string, body any) (int, string) {
	a.t.Helper()
	st, out := call(a.t, method, a.k.st.URL+path, token, body)
	code, _ := out["code"].(string)
	return st, code
}

// upload presigns and PUTs photo as token's holder; it returns the key
// and image id without recording the photo.
func (a *actor) upload(token string, photo []byte) (key, id string) {
	var pre struct {
		UploadURL string            `json:"uploadUrl"`
		S3Key     string            `json:"s3Key"`
		ImageID   string            `json:"imageId"`
		Headers   map[string]string `json:"headers"`
	}
	a.c.call("POST", a.path("/presigned-url"), token, map[string]any{"contentType": "image/jpeg", "contentLength": len(photo)}, http.StatusOK, &pre)
	a.c.put(pre.UploadURL, pre.Headers, photo)
	return pre.S3Key, pre.ImageID
}

// record uploads and records a photo with notes from the phone.
func (a *actor) record(phone string, photo []byte, notes string) (key, id string) {
	key, id = a.upload(phone, photo)
	a.c.call("POST", a.path("/images"), phone, map[string]any{"imageId": id, "s3Key": key, "source": "mobile",
		"metadata": map[string]any{"bodySite": "14975008", "notes": notes}}, http.StatusOK, nil)
	return key, id
}

// realtimeToken is the token the phone (or desktop) holding cred gets.
func (a *actor) realtimeToken(cred string) realtime.Token {
	var tok realtime.Token
	a.c.call("GET", a.path("/realtime-token"), cred, nil, http.StatusOK, &tok)
	return tok
}

// stream keeps every byte an SSE stream sent and notes when it ends.
type stream struct {
	status int
	mu     sync.Mutex
	buf    bytes.Buffer
	end    chan struct{}
}

func openStream(t *testing.T, tok realtime.Token, lastEvent string) *stream {
	t.Helper()
	resp, err := http.Get(realtime.SubscribeURL(tok.URL, tok.Channel, tok.Token, lastEvent))
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{status: resp.StatusCode, end: make(chan struct{})}
	go func() {
		defer close(s.end)
		b := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(b)
			s.mu.Lock()
			s.buf.Write(b[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close(); <-s.end })
	return s
}

func (s *stream) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *stream) ended() bool {
	select {
	case <-s.end:
		return true
	default:
		return false
	}
}

// refusal is the Ably-style error a stream request is refused with.
func refusal(t *testing.T, tok realtime.Token, channel string) (int, int) {
	t.Helper()
	resp, err := http.Get(realtime.SubscribeURL(tok.URL, channel, tok.Token, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	e, _ := realtime.ReadError(b)
	return resp.StatusCode, e.Code
}

// noneOf fails t if text holds any of secrets.
func noneOf(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Fatalf("%s carries %q:\n%s", what, s, text)
		}
	}
}

// Row 1: phone A keeps its realtime token while the desktop starts patient
// C discarding A: its stream ends with 40141, carries nothing of C, its
// token cannot be renewed and the relay refuses it from then on.
func attackRevokedPhone(t *testing.T, k *clinic) {
	a := newActor(t, k, "atk1-"+testenv.ID())
	phoneA := a.pair(a.qr("PATIENT-A1", false))
	tokA := a.realtimeToken(phoneA)
	if tokA.Channel == realtime.Channel(a.user) {
		t.Fatalf("phone token covers the user's channel %q", tokA.Channel)
	}
	desk := openStream(t, a.realtimeToken(a.desk), "")
	sA := openStream(t, tokA, "")
	a.record(phoneA, photoN(101), "note-A1 mole")
	testenv.Eventually(t, 20*time.Second, "phone A sees its photo", func() bool { return strings.Contains(sA.text(), "note-A1") })

	phoneC := a.pair(a.qr("PATIENT-C1", true))
	a.record(phoneC, photoN(102), "note-C1 rash")
	testenv.Eventually(t, 20*time.Second, "the desktop sees C", func() bool { return strings.Contains(desk.text(), "note-C1") })
	testenv.Eventually(t, 20*time.Second, "phone A's stream to end with 40141", func() bool {
		return sA.ended() && strings.Contains(sA.text(), `"code":40141`)
	})
	noneOf(t, "phone A's stream", sA.text(), "PATIENT-C1", "note-C1")
	if st, code := a.try("GET", a.path("/realtime-token"), phoneA, nil); st != http.StatusGone {
		t.Fatalf("phone A renewing its token: %d %s", st, code)
	}
	if st, code := refusal(t, tokA, tokA.Channel); st != 401 || code != realtime.CodeTokenRevoked {
		t.Fatalf("phone A's token on the relay: %d %d", st, code)
	}
}

// Row 2: C's new phone replays the stream from its start (lastEvent=0):
// only C's events, none of A's (patient id and notes), up to a barrier
// event the desktop's stream also carries.
func attackReplay(t *testing.T, k *clinic) {
	a := newActor(t, k, "atk2-"+testenv.ID())
	phoneA := a.pair(a.qr("PATIENT-A2", false))
	a.record(phoneA, photoN(201), "note-A2 mole")
	phoneC := a.pair(a.qr("PATIENT-C2", true))
	a.record(phoneC, photoN(202), "note-C2 rash")
	desk := openStream(t, a.realtimeToken(a.desk), "0")
	sC := openStream(t, a.realtimeToken(phoneC), "0")
	if sC.status != 200 {
		t.Fatalf("phone C: %d", sC.status)
	}
	a.record(phoneC, photoN(203), "barrier-2")
	testenv.Eventually(t, 20*time.Second, "the barrier on both streams", func() bool {
		return strings.Contains(desk.text(), "barrier-2") && strings.Contains(sC.text(), "barrier-2")
	})
	if !strings.Contains(sC.text(), "note-C2") || !strings.Contains(desk.text(), "note-A2") {
		t.Fatal("the replay lacks the events it must carry")
	}
	noneOf(t, "phone C's replay", sC.text(), "PATIENT-A2", "note-A2")
	// Ably's refusal for a channel outside the capability, from the relay.
	if st, code := refusal(t, a.realtimeToken(phoneC), realtime.Channel(a.user)); st != 401 || code != realtime.CodeNotPermitted {
		t.Fatalf("phone C on the user's channel: %d %d", st, code)
	}
}

// Row 3: a new QR code revokes the earlier one, the desktop lists the
// paired phones and removing one ends its credential and its token renewal.
func attackOldQR(t *testing.T, k *clinic) {
	a := newActor(t, k, "atk3-"+testenv.ID())
	old := a.qr("PATIENT-A3", false)
	fresh := a.qr("PATIENT-A3", false)
	if st, code := a.try("GET", "/api/session-tokens/"+old, "", nil); st != http.StatusGone || code != "token_revoked" {
		t.Fatalf("the earlier QR code: %d %s", st, code)
	}
	phone := a.pair(fresh)
	var list struct {
		Phones []struct {
			PhoneID string `json:"id"`
		} `json:"phones"`
	}
	a.c.call("GET", a.path("/phones"), a.desk, nil, http.StatusOK, &list)
	if len(list.Phones) != 1 || list.Phones[0].PhoneID != session.PhoneID(phone) {
		t.Fatalf("paired phones: %+v", list)
	}
	a.c.call("DELETE", a.path("/phones/"+list.Phones[0].PhoneID), a.desk, nil, http.StatusOK, nil)
	for _, p := range []string{"/session", "/realtime-token"} {
		if st, code := a.try("GET", a.path(p), phone, nil); st != http.StatusGone || code != "phone_removed" {
			t.Fatalf("removed phone GET %s: %d %s", p, st, code)
		}
	}
}

// Row 4: issuer and audience are required to start; a token the same
// identity provider issued for another application is refused; a JWKS that
// cannot be fetched is "unavailable" (503 at the API), not "invalid".
func attackAudience(t *testing.T, k *clinic) {
	env := map[string]string{"AUTH_JWKS_URL": "https://idp.example/jwks.json", "REALTIME_SIGNING_KEY": "k:s"}
	if _, err := api.ConfigFromEnv(func(s string) string { return env[s] }); err == nil || !strings.Contains(err.Error(), "AUTH_ISSUER and AUTH_AUDIENCE are required") {
		t.Fatalf("config without issuer and audience: %v", err)
	}
	other, err := devissuer.New("clinimg-local", "another-app")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := other.Token("gp", time.Hour)
	if _, err := jwtauth.NewVerifier(other, "clinimg-local", "clinimg").Verify(context.Background(), tok); !errors.Is(err, jwtauth.ErrInvalid) {
		t.Fatalf("another application's token: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String() + "/jwks.json"
	ln.Close()
	good, _ := k.st.Issuer.Token("gp", time.Hour)
	if _, err := jwtauth.NewVerifier(jwtauth.NewJWKS(dead), "clinimg-local", "clinimg").Verify(context.Background(), good); !errors.Is(err, jwtauth.ErrKeysUnavailable) {
		t.Fatalf("JWKS outage: %v", err)
	}
	// And the stack's own API refuses another issuer's token.
	a := newActor(t, k, "atk4-"+testenv.ID())
	if st, _ := a.try("GET", a.path("/session"), tok, nil); st != http.StatusUnauthorized {
		t.Fatalf("another application's token at the API: %d", st)
	}
}

// Row 5: /metrics and /readyz only on the ops port, a CSP that names its
// origins and frame-ancestors, nosniff, a header limit, and 100 trickling
// clients do not stop /healthz (the 300-client version is
// pkg/ops TestSlowClientsDoNotStarveTheServer).
func attackEdge(t *testing.T, k *clinic) {
	for _, p := range []string{"/metrics", "/readyz"} {
		if st, _ := call(t, "GET", k.st.URL+p, "", nil); st != http.StatusNotFound {
			t.Errorf("public %s: %d", p, st)
		}
		if st, _ := call(t, "GET", k.st.APIOps+p, "", nil); st != http.StatusOK {
			t.Errorf("ops %s: %d", p, st)
		}
	}
	resp, err := http.Get(k.st.URL + "/mobile")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "frame-ancestors") || strings.Contains(csp, " * ") || strings.Contains(csp, "img-src *") || strings.Contains(csp, "connect-src *") {
		t.Errorf("CSP %q", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("no nosniff on the page")
	}
	req, _ := http.NewRequest("GET", k.st.URL+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("64 KiB of headers: %d", resp.StatusCode)
		}
	}
	u, _ := url.Parse(k.st.URL)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /api/session-tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	}
	h := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	testenv.Eventually(t, 10*time.Second, "/healthz answering within a second beside 100 trickling clients", func() bool {
		resp, err := h.Get(k.st.URL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// Row 6: notes with NUL, ESC or a right-to-left override refused with 400
// (and not stored), a contradicting body-site display replaced by the
// code's, a 0-byte upload 422, an upload URL without a signed length
// refused, a body over the signed length refused by S3, and a session's
// outstanding upload URLs capped.
func attackInput(t *testing.T, k *clinic) {
	a := newActor(t, k, "atk6-"+testenv.ID())
	phone := a.pair(a.qr("PATIENT-A6", false))
	_, id := a.record(phone, photoN(601), "fine")
	for _, note := range []string{"a\u0000b", "\u001b[31mred", "left \u202e thgir"} {
		if st, code := a.try("PATCH", a.path("/images/"+id), phone, map[string]any{"notes": note}); st != 400 || code != "invalid_text" {
			t.Errorf("note %q: %d %s", note, st, code)
		}
	}
	a.c.call("PATCH", a.path("/images/"+id), a.desk, map[string]any{"bodySite": "14975008", "bodySiteDisplay": "Sole of foot"}, http.StatusOK, nil)
	var s session.Session
	a.c.call("GET", a.path("/session"), a.desk, nil, http.StatusOK, &s)
	if m := s.Images[0].Metadata; m.Notes != "fine" || m.BodySiteDisplay != "Forearm structure" {
		t.Errorf("stored notes %q, display %q", m.Notes, m.BodySiteDisplay)
	}

	// A client written for the seeds sends no length: it still gets a URL
	// (recording refuses an oversize object); a nonsense length is refused.
	if st, code := a.try("POST", a.path("/presigned-url"), phone, map[string]any{"fileName": "IMG_1.JPG", "contentType": "image/jpeg"}); st != 200 {
		t.Errorf("the seeds' upload URL request (no length): %d %s, want 200", st, code)
	}
	if st, code := a.try("POST", a.path("/presigned-url"), phone, map[string]any{"contentType": "image/jpeg", "contentLength": -1}); st != 400 || code != "invalid_content_length" {
		t.Errorf("upload URL with a negative length: %d %s", st, code)
	}
	var pre struct {
		UploadURL string            `json:"uploadUrl"`
		S3Key     string            `json:"s3Key"`
		ImageID   string            `json:"imageId"`
		Headers   map[string]string `json:"headers"`
	}
	a.c.call("POST", a.path("/presigned-url"), phone, map[string]any{"contentType": "image/jpeg", "contentLength": 1000}, http.StatusOK, &pre)
	req, _ := http.NewRequest("PUT", pre.UploadURL, bytes.NewReader(make([]byte, 1<<20)))
	req.Header.Set("Content-Type", "image/jpeg")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("1 MiB PUT on a URL signed for 1000 bytes accepted")
		}
	}
	// A 0-byte object at an issued key (as a client writing nothing would
	// leave it) is 422, not 500.
	if err := k.st.Blob.Put(context.Background(), pre.S3Key, "image/jpeg", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	if st, code := a.try("POST", a.path("/images"), phone, map[string]any{"imageId": pre.ImageID, "s3Key": pre.S3Key, "source": "mobile"}); st != 422 || code != "empty_object" {
		t.Errorf("0-byte upload: %d %s", st, code)
	}
	// Two URLs are outstanding (the seeds-style one and the 0-byte one,
	// neither recorded; MAX_UPLOADS is 3): one more, then refused.
	a.c.call("POST", a.path("/presigned-url"), a.desk, map[string]any{"contentType": "image/jpeg", "contentLength": 1000}, http.StatusOK, nil)
	if st, code := a.try("POST", a.path("/presigned-url"), a.desk, map[string]any{"contentType": "image/jpeg", "contentLength": 1000}); st != 429 || code != "upload_limit" {
		t.Errorf("fourth outstanding upload URL: %d %s", st, code)
	}
}

// Row 7 (must show 3): a session left to expire loses every object (each
// photo's original, preview, viewer image and clean copy, and an upload
// never recorded) within sweepWithin of its key's expiry; and a session
// discarded for another patient loses its recorded photos at once and its
// unrecorded upload by its expiry, and the new session's objects go when
// it expires in turn.
func attackExpiry(t *testing.T, k *clinic) {
	const sweepWithin = 30 * time.Second
	ctx := context.Background()
	a := newActor(t, k, "atk7-"+testenv.ID())
	phone := a.pair(a.qr("PATIENT-A7", false))
	var keys []string
	for i := range 2 {
		key, _ := a.record(phone, photoN(700+i), "expiring")
		keys = append(keys, key)
	}
	orphan, _ := a.upload(phone, photoN(710))
	all := append(derived(keys), orphan)
	a.waitMade(keys)
	for _, key := range all {
		if _, err := k.st.Blob.Head(ctx, key); err != nil {
			t.Fatalf("%s before expiry: %v", key, err)
		}
	}

	// The discarding GP: A's photo and an unrecorded upload, then C with
	// discard, one photo, and left to expire.
	b := newActor(t, k, "atk7b-"+testenv.ID())
	phoneB := b.pair(b.qr("PATIENT-A7B", false))
	bKey, _ := b.record(phoneB, photoN(720), "discarded")
	bOrphan, _ := b.upload(phoneB, photoN(721))
	b.waitMade([]string{bKey})
	phoneC := b.pair(b.qr("PATIENT-C7B", true))
	cKey, _ := b.record(phoneC, photoN(722), "expiring too")
	b.waitMade([]string{cKey})
	for _, key := range derived([]string{bKey}) {
		if _, err := k.st.Blob.Head(ctx, key); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("discarded %s kept: %v", key, err)
		}
	}
	all = append(all, bOrphan)
	all = append(all, derived([]string{cKey})...)

	// Nobody touches either session from now on.
	var gone time.Time
	testenv.Eventually(t, attackTTL+30*time.Second, "both sessions to expire", func() bool {
		_, e1 := k.st.Store.Peek(ctx, a.user)
		_, e2 := k.st.Store.Peek(ctx, b.user)
		return errors.Is(e1, session.ErrNotFound) && errors.Is(e2, session.ErrNotFound)
	})
	gone = time.Now()
	testenv.Eventually(t, sweepWithin, "every object of the ended sessions deleted", func() bool {
		for _, key := range all {
			if _, err := k.st.Blob.Head(ctx, key); !errors.Is(err, blob.ErrNotFound) {
				return false
			}
		}
		return true
	})
	t.Logf("%d objects of 3 sessions deleted %s after both keys were gone (bound %s)", len(all), time.Since(gone).Round(10*time.Millisecond), sweepWithin)
}

// waitMade waits for the thumbnailer's objects beside each original.
func (a *actor) waitMade(keys []string) {
	a.t.Helper()
	testenv.Eventually(a.t, 60*time.Second, "the previews, viewer images and clean copies", func() bool {
		var s session.Session
		a.c.call("GET", a.path("/session"), a.desk, nil, http.StatusOK, &s)
		made := 0
		for _, im := range s.Images {
			for _, k := range keys {
				if im.S3Key == k && im.CleanKey != "" && im.PreviewKey != "" && im.ViewerKey != "" {
					made++
				}
			}
		}
		return made == len(keys)
	})
}

// derived is each original key with the thumbnailer's objects beside it.
func derived(keys []string) []string {
	var out []string
	for _, k := range keys {
		base := strings.TrimSuffix(k, ".jpg")
		out = append(out, k, base+".preview.jpg", base+".viewer.jpg", base+".clean.jpg")
	}
	return out
}
