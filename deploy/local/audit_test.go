package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/audit"
)

const (
	iPhoneUA  = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
	auditNote = "NOTE-TEXT: 6 mm irregular pigmented lesion, query melanoma"
)

// Issue 16, part 2: a scripted session (three photos, one recoded, one
// deleted, a commit ALEX refuses one photo of, then a commit that lands)
// leaves a chain of custody with exactly the expected records, each photo's
// in order and the commit's in order; no note text in it, JSON or CSV; the
// SHA-1 it gives each committed photo is that Media's content.hash in ALEX
// and its SHA-256 that of the bytes the phone sent; and it is still there,
// unchanged, once the session has expired.
func TestAuditTrailOfAScriptedSession(t *testing.T) {
	t.Parallel()
	// A real redis-server, so the session really expires.
	_, prefix := testenv.Redis(t)
	k := newClinic(t, map[string]string{"COMMIT_RETRY_INITIAL": "200ms"}, func(o *Options) {
		o.RedisURL, o.RedisPrefix = testenv.RedisURL(), prefix
	})
	g := k.gp("user_audit", "pat-audit")
	photos := map[string][]byte{}
	for i := range 3 {
		id := fmt.Sprintf("img-%d", i)
		photos[id] = photoN(40 + i)
		g.record(id, photos[id], "User-Agent", iPhoneUA)
	}
	g.ownBytes(3) // every photo processed: its verified and cleaned records exist
	sess := g.session()
	sessionID := sess.SessionID

	// img-1 recoded on the desktop, with a note; img-2 deleted on the phone.
	k.c.call("PATCH", g.path("/images/img-1"), g.desk, map[string]any{"bodySite": "14975008", "notes": auditNote}, http.StatusOK, nil)
	k.c.call("DELETE", g.path("/images/img-2"), g.phone, nil, http.StatusOK, nil)

	// ALEX refuses img-1 once: the first commit fails with img-0 in the
	// record, the second lands img-1.
	var ident string
	for _, im := range g.session().Images {
		if im.ID == "img-1" {
			ident = im.MediaIdentifier
		}
	}
	k.st.ALEX.Inject(alexsim.Rule{Method: http.MethodPost, Path: "/Media", Identifier: ident,
		Fault: alexsim.Fault{Status: 422, Code: "business-rule", Message: "Body site not accepted"}})
	k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusBadGateway, nil)
	k.c.call("POST", g.path("/commit"), g.desk, nil, http.StatusOK, nil)
	final := g.session()

	// The trail is written from the stream, after the fact: wait for the
	// last record, then check the whole.
	var trail []audit.Record
	testenv.Eventually(t, 60*time.Second, "the commit's success in the trail", func() bool {
		trail = g.audit(sessionID)
		return len(trail) > 0 && trail[len(trail)-1].Step == audit.CommitSucceeded
	})

	type step struct {
		Step    audit.Step
		By      string
		Outcome string
		Fields  []string
	}
	steps := func(recs []audit.Record, keep func(audit.Record) bool) []step {
		var out []step
		for _, r := range recs {
			if keep(r) {
				out = append(out, step{r.Step, r.By, r.Outcome, r.Fields})
			}
		}
		return out
	}
	photo := func(id string) func(audit.Record) bool { return func(r audit.Record) bool { return r.ImageID == id } }
	custody := []step{{audit.Captured, "phone", "", nil}, {audit.Uploaded, "phone", "", nil}, {audit.Verified, "", "", nil}, {audit.Cleaned, "", "", nil}}
	want := map[string][]step{
		"img-0": append(slices.Clone(custody), step{audit.CommitPhoto, "", "in_record", nil}),
		"img-1": append(slices.Clone(custody), step{audit.Coded, "desktop", "", []string{"bodySite", "bodySiteDisplay", "notes"}},
			step{audit.CommitPhoto, "", "refused", nil}, step{audit.CommitPhoto, "", "in_record", nil}),
		"img-2": append(slices.Clone(custody), step{audit.Deleted, "phone", "", nil}),
		// The session's own records and the commits', in order.
		"": {{audit.SessionStarted, "desktop", "", nil}, {audit.PhonePaired, "phone", "", nil}, {audit.ConsentRecorded, "desktop", "", nil},
			{audit.CommitRequested, "desktop", "", nil}, {audit.CommitFailed, "", "failed", nil},
			{audit.CommitRequested, "desktop", "", nil}, {audit.CommitSucceeded, "", "committed", nil}},
	}
	total := 0
	for id, w := range want {
		total += len(w)
		if diff := cmp.Diff(w, steps(trail, photo(id))); diff != "" {
			t.Errorf("trail of %q (-want +got):\n%s", id, diff)
		}
	}
	if len(trail) != total {
		t.Errorf("%d records, want exactly %d", len(trail), total)
	}

	// Hashes: SHA-256 of the bytes sent, SHA-1 of the bytes in ALEX.
	media := map[string]alexsim.Stored{}
	for _, m := range k.st.ALEX.Media() {
		media[m.ID] = m
	}
	cleaned := map[string]string{}
	for _, r := range trail {
		switch {
		case r.Step == audit.Captured && r.Device != "iPhone, iOS 18.1, Safari 18":
			t.Errorf("%s captured on %q", r.ImageID, r.Device)
		case r.Step == audit.Verified:
			sum := sha256.Sum256(photos[r.ImageID])
			if r.SHA256 != hex.EncodeToString(sum[:]) || r.Bytes != int64(len(photos[r.ImageID])) {
				t.Errorf("%s verified as %d bytes, SHA-256 %s: not what the phone sent", r.ImageID, r.Bytes, r.SHA256)
			}
		case r.Step == audit.Cleaned:
			cleaned[r.ImageID] = r.SHA1
		case r.Step == audit.CommitPhoto && r.Outcome == "in_record":
			m, ok := media[r.MediaID]
			if !ok || r.SHA1 == "" || r.SHA1 != m.Hash || r.SHA1 != cleaned[r.ImageID] {
				t.Errorf("%s in the record as Media %s with SHA-1 %q; ALEX holds %v with %q; cleaned %q",
					r.ImageID, r.MediaID, r.SHA1, ok, m.Hash, cleaned[r.ImageID])
			}
		}
	}
	for _, im := range final.Images {
		if media[im.MediaID].Hash == "" {
			t.Errorf("%s: Media %s not in ALEX", im.ID, im.MediaID)
		}
	}

	csv := g.auditCSV(sessionID)
	if rows := strings.Count(csv, "\n"); rows != total+1 {
		t.Errorf("CSV has %d lines, want %d", rows, total+1)
	}
	whole := g.auditRaw(sessionID, "")
	for _, doc := range []string{whole, csv} {
		if strings.Contains(doc, "NOTE-TEXT") || strings.Contains(doc, "melanoma") {
			t.Errorf("the trail carries the note:\n%s", doc)
		}
	}

	// Only the GP who owns it reads it: not the phone, not another GP.
	k.c.call("GET", g.path("/sessions/"+sessionID+"/audit"), g.phone, nil, http.StatusForbidden, nil)
	other, err := k.st.DesktopToken("user_other")
	if err != nil {
		t.Fatal(err)
	}
	k.c.call("GET", g.path("/sessions/"+sessionID+"/audit"), other, nil, http.StatusForbidden, nil)
	k.c.call("GET", g.path("/sessions/no-such-session/audit"), g.desk, nil, http.StatusNotFound, nil)
	k.c.call("GET", g.path("/sessions/"+sessionID+"/audit?format=xml"), g.desk, nil, http.StatusBadRequest, nil)

	// The session expires (its key goes, as after its TTL); the trail stays.
	if err := k.st.Redis.PExpire(context.Background(), k.st.Store.Keys.User(g.user), time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the session to expire", func() bool {
		n, _ := k.st.Redis.Exists(context.Background(), k.st.Store.Keys.User(g.user)).Result()
		return n == 0
	})
	k.c.call("GET", g.path("/session"), g.desk, nil, http.StatusNotFound, nil)
	if diff := cmp.Diff(trail, g.audit(sessionID)); diff != "" {
		t.Errorf("trail after expiry (-before +after):\n%s", diff)
	}
}

// audit is the session's trail as the API gives it, or nil while none.
func (g *gpClient) audit(sessionID string) []audit.Record {
	var out struct {
		Records []audit.Record `json:"records"`
	}
	code := g.k.c.try("GET", g.path("/sessions/"+sessionID+"/audit"), g.desk, &out)
	if code == http.StatusNotFound {
		return nil
	}
	if code != http.StatusOK {
		g.k.t.Fatalf("GET audit: %d", code)
	}
	return out.Records
}

func (g *gpClient) auditCSV(sessionID string) string { return g.auditRaw(sessionID, "?format=csv") }

func (g *gpClient) auditRaw(sessionID, query string) string {
	req, err := http.NewRequest("GET", g.k.c.base+g.path("/sessions/"+sessionID+"/audit"+query), nil)
	if err != nil {
		g.k.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+g.desk)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		g.k.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		g.k.t.Fatalf("GET audit%s: %s", query, res.Status)
	}
	return string(raw)
}

// try is call without a wanted status: it returns the status and decodes a
// 200's body into out.
func (c *client) try(method, path, token string, out any) int {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return res.StatusCode
}
