package local

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/fhir"
	"github.com/clinicalimages/clinimg/pkg/session"
)

// The two ways the commit broke (issue 10), through the API on the local
// stack against the ALEX simulator: after a failed commit and the GP's
// retry, and when a client image id is used again, ALEX holds each photo
// exactly once, in its session's patient, with the SHA-1 of its own bytes.

// A commit meets 500, 429, a timeout and an empty 200 after the write
// (stored, answer lost), then ALEX fails on: the GP stops waiting (or the
// retry budget runs out) and commits again once ALEX is back.
func TestRetryAfterFailedCommit(t *testing.T) {
	t.Parallel()
	for _, end := range []string{"the GP stops waiting", "the retry budget runs out"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"ALEX_REQUEST_TIMEOUT": "2s", "COMMIT_RETRY_INITIAL": "200ms", "COMMIT_RETRY_MAX": "1s"}
			if end == "the retry budget runs out" {
				env["COMMIT_RETRY_BUDGET"] = "4s"
			}
			k := newClinic(t, env)
			g := k.gp("user_retry", "pat-retry")
			for i := range 3 {
				g.record(fmt.Sprintf("img-%d", i), photoN(i))
			}
			own := g.ownBytes(3)
			seq := []alexsim.Fault{{Status: 500}, {Status: 429, RetryAfter: time.Second}, {Kind: alexsim.FaultTimeout},
				{Kind: alexsim.FaultEmpty, AfterStore: true}}
			var posts atomic.Int32
			var down atomic.Bool
			down.Store(true)
			k.st.ALEX.SetHooks(alexsim.Hooks{Fault: func(method, path, _ string) *alexsim.Fault {
				if method != http.MethodPost || path != "/Media" {
					return nil
				}
				if i := int(posts.Add(1)) - 1; i < len(seq) {
					return &seq[i]
				}
				if down.Load() {
					return &alexsim.Fault{Status: 503}
				}
				return nil
			}})
			if end == "the GP stops waiting" {
				var accepted map[string]any
				k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusAccepted, &accepted, "Prefer", "respond-async")
				testenv.Eventually(t, 60*time.Second, "ALEX's faults to run out and the commit to wait", func() bool {
					s := g.session()
					return int(posts.Load()) > len(seq) && s.Commit != nil && s.Commit.Waiting != nil
				})
				var stopped map[string]any
				k.c.call("POST", g.path("/commit/stop"), g.desk, nil, http.StatusOK, &stopped)
				if stopped["commitStatus"] != "none" || !strings.HasPrefix(stopped["message"].(string), "Stopped waiting for ALEX.") {
					t.Fatalf("stop: %v", stopped)
				}
			} else {
				var failed map[string]any
				k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusBadGateway, &failed)
				if failed["code"] != "commit_failed" || !strings.Contains(failed["error"].(string), "Gave up after 4s") || !strings.Contains(failed["error"].(string), "nothing is lost") {
					t.Fatalf("commit after the budget: %v", failed)
				}
			}
			// Nothing in the record is forgotten: the session says which
			// photos are in, and ALEX agrees.
			mid := g.session()
			for _, im := range mid.Images {
				if im.State() == session.PhotoInRecord && len(k.mediaUnder(im.MediaIdentifier)) != 1 {
					t.Errorf("%s says in the record as %s, ALEX holds %d", im.ID, im.MediaID, len(k.mediaUnder(im.MediaIdentifier)))
				}
			}
			down.Store(false)
			var ok map[string]any
			k.c.call("POST", g.path("/commit"), g.phone, nil, http.StatusOK, &ok)
			if ok["success"] != true || ok["imageCount"] != float64(3) {
				t.Fatalf("retry: %v", ok)
			}
			k.checkOnce(t, g.session(), own, 3)
		})
	}
}

// ALEX refuses one of six photos (422): the commit fails naming it, the
// five others stay in the record; the GP fixes it from the phone and
// commits again from the phone: six Media for six photos.
func TestRefusedPhotoFixedFromThePhone(t *testing.T) {
	t.Parallel()
	k := newClinic(t, map[string]string{"COMMIT_RETRY_INITIAL": "200ms"})
	g := k.gp("user_refused", "pat-refused")
	for i := range 6 {
		g.record(fmt.Sprintf("img-%d", i), photoN(10+i))
	}
	own := g.ownBytes(6)
	var posts atomic.Int32
	k.st.ALEX.SetHooks(alexsim.Hooks{Fault: func(method, path, _ string) *alexsim.Fault {
		if method == http.MethodPost && path == "/Media" && posts.Add(1) == 2 {
			return &alexsim.Fault{Status: 422, Code: "business-rule", Message: "Body site not accepted"}
		}
		return nil
	}})
	var failed struct {
		Code           string               `json:"code"`
		PartialSuccess bool                 `json:"partialSuccess"`
		InRecord       int                  `json:"inRecord"`
		Errors         []session.ImageError `json:"errors"`
	}
	k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusBadGateway, &failed)
	if failed.Code != "commit_failed" || !failed.PartialSuccess || failed.InRecord != 5 || len(failed.Errors) != 1 ||
		!strings.Contains(failed.Errors[0].Error, "ALEX refused this photo (422): Body site not accepted") {
		t.Fatalf("commit: %+v", failed)
	}
	refused := failed.Errors[0].ImageID
	// In the record means fixed: those cannot change; the refused one can.
	inRecord := ""
	for _, im := range g.session().Images {
		if im.ID != refused {
			inRecord = im.ID
		}
	}
	k.c.call("PATCH", g.path("/images/"+inRecord), g.phone, map[string]any{"notes": "too late"}, http.StatusConflict, nil)
	k.c.call("PATCH", g.path("/images/"+refused), g.phone, map[string]any{"bodySite": "14975008", "laterality": "left"}, http.StatusOK, nil)
	var ok map[string]any
	k.c.call("POST", g.path("/commit"), g.phone, nil, http.StatusOK, &ok)
	if ok["imageCount"] != float64(6) {
		t.Fatalf("retry: %v", ok)
	}
	k.checkOnce(t, g.session(), own, 6)
	if n := posts.Load(); n != 7 {
		t.Errorf("%d Media POSTs for 6 photos and one refusal, want 7", n)
	}
}

// A client image id used before is not the photo's identity: a new photo
// recorded under it, whose first write fails, is committed as its own
// Media (same GP in a new session; another GP with conditional create on).
func TestClientImageIDUsedAgain(t *testing.T) {
	t.Parallel()
	failFirst := func(k *clinic) *atomic.Int32 {
		var posts atomic.Int32
		k.st.ALEX.SetHooks(alexsim.Hooks{Fault: func(method, path, _ string) *alexsim.Fault {
			if method == http.MethodPost && path == "/Media" && posts.Add(1) == 2 {
				return &alexsim.Fault{Status: 503}
			}
			return nil
		}})
		return &posts
	}
	t.Run("same GP, new session", func(t *testing.T) {
		t.Parallel()
		k := newClinic(t, map[string]string{"COMMIT_RETRY_INITIAL": "200ms"})
		failFirst(k)
		g := k.gp("user_same", "pat-same")
		g.record("img-1", photoN(30))
		first := g.ownBytes(1)
		k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusOK, nil)
		old := g.session()
		k.checkOnce(t, old, first, 1)

		g.newSession()
		g.record("img-1", photoN(31))
		second := g.ownBytes(1)
		k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusOK, nil)
		s := g.session()
		k.checkOnce(t, s, second, 2)
		if s.Images[0].MediaID == old.Images[0].MediaID || s.Images[0].MediaIdentifier == old.Images[0].MediaIdentifier {
			t.Errorf("the new photo took the old one's Media %s", old.Images[0].MediaID)
		}
		k.checkOnce(t, old, first, 2) // the old one is untouched
	})
	t.Run("another GP, conditional create", func(t *testing.T) {
		t.Parallel()
		k := newClinic(t, map[string]string{"COMMIT_RETRY_INITIAL": "200ms", "ALEX_CAPABILITIES": "conditional-create"})
		k.st.ALEX.SetCapabilities(fhir.Capabilities{ConditionalCreate: true})
		failFirst(k)
		a := k.gp("user_a", "pat-a")
		a.record("img-1", photoN(40))
		aOwn := a.ownBytes(1)
		k.c.call("POST", a.path("/commit"), a.desk, nil, http.StatusOK, nil)
		b := k.gp("user_b", "pat-b")
		b.record("img-1", photoN(41))
		bOwn := b.ownBytes(1)
		k.c.call("POST", b.path("/commit"), b.desk, nil, http.StatusOK, nil)
		k.checkOnce(t, a.session(), aOwn, 2)
		k.checkOnce(t, b.session(), bOwn, 2)
	})
}

// clinic is a local stack driven over HTTP as the pages drive it.
type clinic struct {
	t  *testing.T
	st *Stack
	c  *client
}

func newClinic(t *testing.T, env map[string]string, tweak ...func(*Options)) *clinic {
	t.Helper()
	log, _ := testenv.Logger(t)
	opt := Options{Logger: log, NATSURL: testenv.StartNATS(t).URL, Env: env}
	for _, f := range tweak {
		f(&opt)
	}
	st, err := Start(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &clinic{t: t, st: st, c: &client{t: t, base: st.URL}}
}

// gpClient is one GP's desktop and paired phone.
type gpClient struct {
	k                          *clinic
	user, patient, desk, phone string
	encounter                  int
}

func (k *clinic) gp(user, patient string) *gpClient {
	desk, err := k.st.DesktopToken(user)
	if err != nil {
		k.t.Fatal(err)
	}
	g := &gpClient{k: k, user: user, patient: patient, desk: desk}
	g.newSession()
	return g
}

// newSession starts a capture for the patient and pairs the phone.
func (g *gpClient) newSession() {
	g.encounter++
	var start, pair map[string]any
	g.k.c.call("POST", "/api/session-tokens", g.desk, map[string]any{"patientId": g.patient, "encounterId": fmt.Sprintf("enc-%d", g.encounter)}, http.StatusOK, &start)
	g.k.c.call("GET", "/api/session-tokens/"+start["sessionToken"].(string), "", nil, http.StatusOK, &pair)
	g.phone = pair["phoneToken"].(string)
	// The GP records the patient's consent, as the screens ask before a commit.
	g.k.c.call("PUT", g.path("/consent"), g.desk, map[string]any{"method": "verbal", "purposes": []string{"record"}}, http.StatusOK, nil)
}

func (g *gpClient) path(p string) string { return "/api/users/" + g.user + p }

// record uploads a photo from the phone and records it under the client
// image id given, with the request headers given (name, value, ...).
func (g *gpClient) record(imageID string, photo []byte, headers ...string) {
	var pre struct {
		UploadURL string            `json:"uploadUrl"`
		S3Key     string            `json:"s3Key"`
		Headers   map[string]string `json:"headers"`
	}
	g.k.c.call("POST", g.path("/presigned-url"), g.phone, map[string]any{"contentType": "image/jpeg", "contentLength": len(photo)}, http.StatusOK, &pre)
	g.k.c.put(pre.UploadURL, pre.Headers, photo)
	g.k.c.call("POST", g.path("/images"), g.phone, map[string]any{"imageId": imageID, "s3Key": pre.S3Key, "source": "mobile",
		"metadata": map[string]any{"bodySite": "368208006", "laterality": "left", "viewType": "anterior"}}, http.StatusOK, nil, headers...)
}

func (g *gpClient) session() session.Session {
	var s session.Session
	g.k.c.call("GET", g.path("/session"), g.desk, nil, http.StatusOK, &s)
	return s
}

// ownBytes waits for the thumbnailer's clean copies of the n photos and
// returns the SHA-1 (base64) of each, by Media identifier: the bytes each
// photo's Media must carry.
func (g *gpClient) ownBytes(n int) map[string]string {
	var s session.Session
	testenv.Eventually(g.k.t, 60*time.Second, "the clean copies", func() bool {
		s = g.session()
		ready := 0
		for _, im := range s.Images {
			if im.Status == session.ImageReady && im.CleanKey != "" {
				ready++
			}
		}
		return len(s.Images) == n && ready == n
	})
	out := map[string]string{}
	for _, im := range s.Images {
		body, _, _, err := g.k.st.Blob.Open(context.Background(), im.CleanKey)
		if err != nil {
			g.k.t.Fatal(err)
		}
		b, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			g.k.t.Fatal(err)
		}
		sum := sha1.Sum(b)
		out[im.MediaIdentifier] = base64.StdEncoding.EncodeToString(sum[:])
	}
	return out
}

func (k *clinic) mediaUnder(identifier string) []alexsim.Stored {
	var out []alexsim.Stored
	for _, m := range k.st.ALEX.Media() {
		if m.Identifier.Value == identifier {
			out = append(out, m)
		}
	}
	return out
}

// checkOnce fails unless s is committed and each of its photos is in ALEX
// exactly once (withdrawn or not), under its own identifier, in s's
// patient, with the SHA-1 of its own bytes, and s lists those Media; and
// ALEX holds total Media in all.
func (k *clinic) checkOnce(t *testing.T, s session.Session, own map[string]string, total int) {
	t.Helper()
	if s.CommitStatus != session.CommitCommitted {
		t.Fatalf("session %s, message %q", s.CommitStatus, s.Commit.Message)
	}
	var ids []string
	for _, im := range s.Images {
		ms := k.mediaUnder(im.MediaIdentifier)
		if len(ms) != 1 {
			t.Errorf("%s: %d Media under its identifier, want 1", im.ID, len(ms))
			continue
		}
		m := ms[0]
		if m.ID != im.MediaID || m.PatientRef != "Patient/"+s.PatientID || m.Hash != own[im.MediaIdentifier] || m.Deleted || m.Status != "completed" {
			t.Errorf("%s: Media %s for %s with hash %s (%s); session says %s for %s with %s",
				im.ID, m.ID, m.PatientRef, m.Hash, m.Status, im.MediaID, s.PatientID, own[im.MediaIdentifier])
		}
		ids = append(ids, m.ID)
	}
	if diff := cmp.Diff(ids, []string(s.Commit.MediaResourceIDs)); diff != "" {
		t.Errorf("mediaResourceIds (-ALEX +session):\n%s", diff)
	}
	if n := len(k.st.ALEX.Media()); n != total {
		all := []string{}
		for _, m := range k.st.ALEX.Media() {
			all = append(all, m.Identifier.Value+" "+m.PatientRef)
		}
		sort.Strings(all)
		t.Errorf("ALEX holds %d Media, want %d:\n%s", n, total, strings.Join(all, "\n"))
	}
}

// photoN is a 320x240 JPEG whose bytes are n's alone.
func photoN(n int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 320, 240))
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for y := 0; y < 240; y++ {
		for x := 0; x < 320; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(r.IntN(256)), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 85}); err != nil {
		panic(err)
	}
	return b.Bytes()
}
