package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/ablysim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/realtime"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// rawStream keeps every byte an SSE stream sent, to look for data that must
// never reach it, and notes when the stream ends.
type rawStream struct {
	status int
	mu     sync.Mutex
	buf    bytes.Buffer
	end    chan struct{}
}

func openRaw(t testing.TB, url string) *rawStream {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawStream{status: resp.StatusCode, end: make(chan struct{})}
	go func() {
		defer close(rs.end)
		b := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(b)
			rs.mu.Lock()
			rs.buf.Write(b[:n])
			rs.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close(); <-rs.end })
	return rs
}

func (rs *rawStream) text() string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.buf.String()
}

func (rs *rawStream) ended() bool {
	select {
	case <-rs.end:
		return true
	default:
		return false
	}
}

// lastEventID is the id of the last message the stream carried.
func (rs *rawStream) lastEventID() string {
	id := ""
	for _, line := range strings.Split(rs.text(), "\n") {
		if v, ok := strings.CutPrefix(line, "id: "); ok {
			id = v
		}
	}
	return id
}

// Promise 6 on the built-in SSE: a phone's token streams and replays only
// its own session's events (checked by patient id and note text), the
// stream ends with 40141 when the session is replaced or the phone removed,
// and the same token is refused afterwards; the desktop's stream follows
// every session of its user.
func TestSSEPhoneStreamIsScopedToItsSession(t *testing.T) {
	s := newStack(t)
	r := s.start(t, s.config())
	ctx := context.Background()
	base := "http://" + r.sse + SSE
	begin := func(sessionID, patient string, discard bool) {
		t.Helper()
		_, err := s.store.Start(ctx, session.StartParams{UserID: "gp1", PatientID: patient, EncounterID: "enc-1",
			Token: "tok-" + testenv.ID(), SessionID: sessionID, Discard: discard})
		if err != nil {
			t.Fatal(err)
		}
	}
	photo := func(sessionID, id, notes string) { t.Helper(); s.notedPhoto(t, sessionID, id, notes) }
	phoneURL := func(sessionID, phoneID, last string) string {
		tok, _, err := realtime.MintGrant(s.key, realtime.Grant{UserID: "gp1", SessionID: sessionID, PhoneID: phoneID}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return realtime.SubscribeURL(base, realtime.SessionChannel("gp1", sessionID), tok, last)
	}
	refusal := func(url string) realtime.ErrorInfo {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		e, _ := realtime.ReadError(b)
		if resp.StatusCode != e.StatusCode {
			t.Errorf("status %d, body %s", resp.StatusCode, b)
		}
		return e
	}
	revokedEvent := func(rs *rawStream) bool {
		i := strings.LastIndex(rs.text(), "event: error\ndata: ")
		if i < 0 {
			return false
		}
		var e realtime.ErrorInfo
		line, _, _ := strings.Cut(rs.text()[i+len("event: error\ndata: "):], "\n")
		_ = json.Unmarshal([]byte(line), &e)
		return e.Code == realtime.CodeTokenRevoked && e.StatusCode == 401
	}

	begin("sessA", "PATIENT-AAA", false)
	desk := openRaw(t, realtime.SubscribeURL(base, "session:gp1", s.token(t, "gp1", time.Hour), ""))
	phoneA := openRaw(t, phoneURL("sessA", "phA", "0"))
	if phoneA.status != 200 {
		t.Fatalf("phone A: %d", phoneA.status)
	}
	photo("sessA", "a1", "note-of-A mole left arm")
	testenv.Eventually(t, 10*time.Second, "phone A sees its photo", func() bool { return strings.Contains(phoneA.text(), "note-of-A") })

	// The desktop starts patient C, discarding A's photo: phone A's stream
	// ends with 40141 and never carries C.
	begin("sessC", "PATIENT-CCC", true)
	photo("sessC", "c1", "note-of-C rash")
	testenv.Eventually(t, 10*time.Second, "phone A's stream to end with 40141", func() bool { return phoneA.ended() && revokedEvent(phoneA) })
	testenv.Eventually(t, 10*time.Second, "the desktop to see C", func() bool { return strings.Contains(desk.text(), "note-of-C") })
	if txt := phoneA.text(); strings.Contains(txt, "PATIENT-CCC") || strings.Contains(txt, "note-of-C") || strings.Contains(txt, "sessC") {
		t.Fatalf("phone A received session C:\n%s", txt)
	}
	if e := refusal(phoneURL("sessA", "phA", phoneA.lastEventID())); e.Code != realtime.CodeTokenRevoked {
		t.Fatalf("phone A reconnecting: %+v", e)
	}
	if e := refusal(phoneURL("sessA", "phA", "")); e.Code != realtime.CodeTokenRevoked {
		t.Fatalf("phone A reconnecting without an id: %+v", e)
	}

	// C's phone replays from the stream's start: C's events only.
	phC := session.PhoneID("cred-C")
	phoneC := openRaw(t, phoneURL("sessC", phC, "0"))
	testenv.Eventually(t, 10*time.Second, "phone C's replay", func() bool {
		return strings.Contains(phoneC.text(), "note-of-C") && strings.Contains(phoneC.text(), `"channel":"session:gp1:sessC"`)
	})
	photo("sessC", "c2", "note-of-C second")
	testenv.Eventually(t, 10*time.Second, "phone C live", func() bool { return strings.Contains(phoneC.text(), "note-of-C second") })
	// A window for anything else to arrive: the desktop's stream is the
	// barrier, since it gets every event of the user.
	photo("sessC", "c3", "barrier")
	testenv.Eventually(t, 10*time.Second, "the barrier", func() bool {
		return strings.Contains(desk.text(), "barrier") && strings.Contains(phoneC.text(), "barrier")
	})
	if txt := phoneC.text(); strings.Contains(txt, "PATIENT-AAA") || strings.Contains(txt, "note-of-A") || strings.Contains(txt, `"channel":"session:gp1"`) {
		t.Fatalf("phone C received session A:\n%s", txt)
	}

	// Removing phone C ends its stream; another phone of C goes on.
	otherC := openRaw(t, phoneURL("sessC", "phC2", ""))
	pairC(t, s, "sessC", "cred-C")
	if _, err := s.store.RemovePhone(ctx, "gp1", "sessC", session.PhoneID("cred-C")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "phone C's stream to end with 40141", func() bool { return phoneC.ended() && revokedEvent(phoneC) })
	if e := refusal(phoneURL("sessC", phC, "")); e.Code != realtime.CodeTokenRevoked {
		t.Fatalf("removed phone reconnecting: %+v", e)
	}
	photo("sessC", "c4", "after-removal")
	testenv.Eventually(t, 10*time.Second, "the other phone goes on", func() bool { return strings.Contains(otherC.text(), "after-removal") })
	if otherC.ended() {
		t.Fatal("removing one phone ended another's stream")
	}
	if r.metric(t, "relay_sse_refused_total") < 3 {
		t.Errorf("refusals not counted")
	}
}

// notedPhoto records a photo with notes in gp1's session sessionID.
func (s *stack) notedPhoto(t *testing.T, sessionID, id, notes string) {
	t.Helper()
	img := session.Image{ID: id, S3Key: "temp/gp1/" + id + ".jpg", Uploaded: true, Source: "mobile", ContentType: "image/jpeg",
		Size: 1000, CapturedAt: time.Now().UTC(), Metadata: session.Metadata{Notes: notes}}
	if _, _, err := s.store.AddImage(context.Background(), "gp1", sessionID, img); err != nil {
		t.Fatal(err)
	}
}

// pairC pairs a phone holding cred with the user's current session through
// a fresh QR token, as the API's exchange does.
func pairC(t *testing.T, s *stack, sessionID, cred string) {
	t.Helper()
	ctx := context.Background()
	cur, err := s.store.Peek(ctx, "gp1")
	if err != nil || cur.SessionID != sessionID {
		t.Fatalf("current session %s: %v", cur.SessionID, err)
	}
	tok := "tok-" + testenv.ID()
	if _, err := s.store.Start(ctx, session.StartParams{UserID: "gp1", PatientID: cur.PatientID, EncounterID: cur.EncounterID, Token: tok, SessionID: "unused"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.Pair(ctx, tok, cred, "test phone"); err != nil {
		t.Fatal(err)
	}
}

// Promise 6 with Ably: the relay publishes each session's events to that
// session's channel as well as the user's, and a phone's token names only
// its session's channel, so a phone of C neither replays nor receives A's
// events (checked by patient id and note text) and is refused the user's
// channel with 40160, status 401, as the built-in SSE refuses it.
func TestAblyPhoneChannelIsScopedToItsSession(t *testing.T) {
	s := newStack(t)
	sim := startSim(t, ablysim.Options{})
	s.start(t, s.ablyConfig(sim))
	ctx := context.Background()
	settings := realtime.Settings{Mode: realtime.ModeAbly, Key: ablyKey, URL: sim.URL() + "/sse", TTL: time.Hour}
	begin := func(sessionID, patient string) {
		t.Helper()
		if _, err := s.store.Start(ctx, session.StartParams{UserID: "gp1", PatientID: patient, EncounterID: "enc-1",
			Token: "tok-" + testenv.ID(), SessionID: sessionID, Discard: true}); err != nil {
			t.Fatal(err)
		}
	}
	photo := func(sessionID, id, notes string) { t.Helper(); s.notedPhoto(t, sessionID, id, notes) }
	phoneToken := func(sessionID string) realtime.Token {
		tok, err := settings.Issue(realtime.Grant{UserID: "gp1", SessionID: sessionID, PhoneID: "ph-" + sessionID}, time.Now().Add(time.Hour), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	begin("sessA", "PATIENT-AAA")
	photo("sessA", "a1", "note-of-A mole")
	begin("sessC", "PATIENT-CCC")
	photo("sessC", "c1", "note-of-C rash")
	carries := func(ch, text string) bool {
		for _, m := range sim.Messages(ch) {
			if strings.Contains(m.Data, text) {
				return true
			}
		}
		return false
	}
	testenv.Eventually(t, 20*time.Second, "both sessions published", func() bool {
		return carries("session:gp1:sessA", "note-of-A") && carries("session:gp1:sessC", "note-of-C")
	})

	tok := phoneToken("sessC")
	if tok.Channel != "session:gp1:sessC" {
		t.Fatalf("phone token channel %q", tok.Channel)
	}
	for _, ch := range []string{"session:gp1", "session:gp1:sessA"} {
		resp, err := http.Get(realtime.SubscribeURL(tok.URL, ch, tok.Token, "0"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if e, _ := realtime.ReadError(b); resp.StatusCode != 401 || e.Code != realtime.CodeNotPermitted {
			t.Errorf("phone of C on %s: %d %s", ch, resp.StatusCode, b)
		}
	}

	phone := openRaw(t, realtime.SubscribeURL(tok.URL, tok.Channel, tok.Token, "0"))
	if phone.status != 200 {
		t.Fatalf("phone of C: %d", phone.status)
	}
	testenv.Eventually(t, 20*time.Second, "phone C's replay", func() bool { return strings.Contains(phone.text(), "note-of-C rash") })
	photo("sessC", "c2", "barrier")
	testenv.Eventually(t, 20*time.Second, "phone C live", func() bool { return strings.Contains(phone.text(), "barrier") })
	if txt := phone.text(); strings.Contains(txt, "PATIENT-AAA") || strings.Contains(txt, "note-of-A") {
		t.Fatalf("phone C received session A:\n%s", txt)
	}
	if carries("session:gp1:sessC", "PATIENT-AAA") || carries("session:gp1:sessC", "note-of-A") {
		t.Fatal("session A's event on C's channel")
	}
}
