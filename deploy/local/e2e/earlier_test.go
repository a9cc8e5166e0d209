package e2e

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/pkg/fhir"
)

// earlierWait polls cond until it holds, failing the test after d.
func earlierWait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// earlierJPEG is a w×h photo of one colour with a darker square in it (a
// "lesion"), so a preview is visibly a picture.
func earlierJPEG(t *testing.T, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			p := c
			if x > w*2/5 && x < w*3/5 && y > h*2/5 && y < h*3/5 {
				p = color.RGBA{c.R / 3, c.G / 3, c.B / 3, 255}
			}
			img.SetRGBA(x, y, p)
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Issue 16, part 3 and the screenshots of the three features. A patient
// whose record in ALEX holds Media from two earlier sessions (the forearm
// and the hand in March, the forearm again in May): the narrow panel lists
// all three newest first, then, once the new photo is coded as the
// forearm, only the two of the forearm, with Show all bringing the hand
// back; Compare opens the May photo beside the new one, both panes the same
// size. A patient with no earlier Media gets a sentence, not an error;
// while ALEX fails, the panel says so and the rest of the widget works.
// Screenshots, narrow panel and phone together: consent recorded, a photo's
// trail, the earlier photos, the comparison, the empty state.
func TestEarlierPhotosSideBySide(t *testing.T) {
	r := newRig(t)
	sim := r.env.ALEX
	nhi := fmt.Sprintf("ZEA%04d", time.Now().UnixNano()%10000)
	sim.AddPatient(r.patient, nhi)
	day := func(m time.Month, d int) time.Time { return time.Date(2026, m, d, 10, 15, 0, 0, time.UTC) }
	seed := func(taken time.Time, site, display, note string, c color.RGBA) string {
		return sim.Seed(fhir.NewMedia(fhir.Photo{ImageID: "earlier-" + r.patient + "-" + taken.Format("0102150405"), PatientID: r.patient,
			CapturedAt: taken, ContentType: "image/jpeg", BodySite: site, BodySiteDisplay: display, Laterality: "left",
			ViewType: "close-up", Notes: note}), earlierJPEG(t, 1200, 900, c)).ID
	}
	seed(day(3, 2), "14975008", "Forearm structure", "Pigmented lesion 4 mm, March", color.RGBA{205, 150, 120, 255})
	seed(day(3, 2).Add(time.Minute), "85562004", "Hand structure", "Dorsum of hand, March", color.RGBA{190, 160, 130, 255})
	may := seed(day(5, 9), "14975008", "Forearm structure", "Lesion 6 mm, May", color.RGBA{200, 140, 110, 255})

	d := r.openDesktop(panelView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)

	// Before any new photo: all three, newest first.
	items := `[...document.querySelectorAll('[data-test=earlier-item]')]`
	d.waitJS(60*time.Second, "three earlier photos with previews", fmt.Sprintf(`(() => { const l = %s;
		return l.length === 3 && l.every(li => { const i = li.querySelector('img'); return i && i.complete && i.naturalWidth > 0; }); })()`, items))
	var notes []string
	d.eval(`[...document.querySelectorAll('[data-test=earlier-note]')].map(n => n.textContent)`, &notes)
	if got := strings.Join(notes, " | "); got != "Lesion 6 mm, May | Dorsum of hand, March | Pigmented lesion 4 mm, March" {
		t.Errorf("earlier photos read %q, want the three newest first", got)
	}

	// A new photo of the forearm: only the forearm's earlier photos.
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 60*time.Second)
	setBodySite(d, 1, "14975008")
	d.waitJS(30*time.Second, "filtered to the forearm", fmt.Sprintf(`(() => { const l = %s;
		return l.length === 2 && l.every(li => li.dataset.site === '14975008'); })()`, items))
	if s := d.text(`[data-test=earlier-scope]`); !strings.Contains(s, "2 of 3") || !strings.Contains(s, "photo 1") {
		t.Errorf("the filter says %q, want 2 of 3 and the photo it follows", s)
	}
	d.click(`[data-test=earlier-all]`)
	d.waitJS(15*time.Second, "all three again", fmt.Sprintf(`%s.length === 3`, items))
	d.click(`[data-test=earlier-all]`)
	d.waitJS(15*time.Second, "the forearm again", fmt.Sprintf(`%s.length === 2`, items))
	d.run("earlier photos into view", chromedp.Evaluate(`document.querySelector('[data-test=earlier]').scrollIntoView({block: 'start'})`, nil))
	r.shot("earlier-photos-filtered")

	// Compare: the May photo beside the new one, the same size.
	d.click(`[data-test=earlier-item][data-id="` + may + `"] [data-test=earlier-compare]`)
	d.waitJS(30*time.Second, "both photos side by side", `(() => {
		const dlg = document.getElementById('compare'), a = document.getElementById('compare-earlier'), b = document.getElementById('compare-new-img');
		return dlg.open && !a.hidden && !b.hidden && a.complete && b.complete && a.naturalWidth > 0 && b.naturalWidth > 0; })()`)
	var panes struct {
		A, B   [2]float64
		NewSrc string
		Cap    string
	}
	d.eval(`(() => { const [a, b] = [...document.querySelectorAll('#compare .pane-img')].map(p => p.getBoundingClientRect());
		return {A: [a.width, a.height], B: [b.width, b.height], NewSrc: document.getElementById('compare-new-img').src,
			Cap: document.getElementById('compare-earlier-caption').textContent}; })()`, &panes)
	if panes.A != panes.B || panes.A[0] < 100 || panes.A[1] < 100 {
		t.Errorf("the panes are %v and %v, want one size", panes.A, panes.B)
	}
	if strings.HasPrefix(panes.NewSrc, "blob:") || panes.NewSrc == "" || !strings.Contains(panes.Cap, "May") {
		t.Errorf("compare shows new %q beside %q, want the session's photo beside May's", panes.NewSrc, panes.Cap)
	}
	r.shot("earlier-beside-new")
	d.click(`[data-test=compare-close]`)

	// Consent on both screens.
	d.consent()
	ph.waitJS(30*time.Second, "the phone shows the consent", `document.querySelector('[data-test=consent]').dataset.state === 'recorded'`)
	d.run("consent into view", chromedp.Evaluate(`document.querySelector('[data-test=consent]').scrollIntoView({block: 'start'})`, nil))
	ph.run("consent into view", chromedp.Evaluate(`document.querySelector('[data-test=consent-state]').scrollIntoView({block: 'start'})`, nil))
	r.shot("consent-recorded")

	// The photo's trail, once the audit consumer has written its cleaning.
	c := r.api()
	s := c.session()
	earlierWait(t, 60*time.Second, "the trail holds the cleaned photo", func() bool {
		var trail struct {
			Records []struct{ Step string } `json:"records"`
		}
		if c.do("GET", "/api/users/"+c.user+"/sessions/"+s.SessionID+"/audit", nil, &trail) != 200 {
			return false
		}
		for _, rec := range trail.Records {
			if rec.Step == "cleaned" {
				return true
			}
		}
		return false
	})
	d.click(`[data-test=image-card] [data-test=trail-open]`)
	d.waitJS(15*time.Second, "the trail", `document.getElementById('trail').open && !!document.querySelector('[data-test=trail-step][data-step=cleaned]')`)
	r.shot("photo-trail")
	d.click(`[data-test=trail-close]`)

	// Another patient, with an NHI and nothing in the record: a sentence.
	none := "pat_none_" + r.patient
	sim.AddPatient(none, fmt.Sprintf("ZEB%04d", time.Now().UnixNano()%10000))
	// ALEX fails the first look-up: the panel says earlier photos are
	// unavailable, the rest of the widget (the QR code) works, and Try
	// again gets the answer.
	sim.Inject(alexsim.Rule{Method: "GET", Path: "/Patient/" + none, Times: 1, Fault: alexsim.Fault{Status: 503}})
	e := r.page("desktop-none", panelView, false)
	e.navigate(fmt.Sprintf("%s/?userId=%s_b&patientId=%s&encounterId=%s", r.env.URL, r.user, none, r.encounter))
	e.click(`[data-test=start]`)
	e.waitJS(60*time.Second, "earlier photos unavailable, the QR code shown", `document.querySelector('[data-test=earlier-state]').dataset.state === 'unavailable' &&
		!document.getElementById('qr').hidden && document.getElementById('qr-img').naturalWidth > 0`)
	if s := e.text(`[data-test=earlier-state]`); !strings.Contains(s, "Earlier photos are unavailable") {
		t.Errorf("ALEX down reads %q", s)
	}
	e.click(`[data-test=earlier-retry]`)
	e.waitJS(60*time.Second, "the empty state", `document.querySelector('[data-test=earlier-state]').dataset.state === 'none' && !document.querySelector('[data-test=earlier-state]').hidden`)
	if s := e.text(`[data-test=earlier-state]`); s != "No earlier photos of this patient in the record." {
		t.Errorf("empty state reads %q", s)
	}
	if n := len(e.all(`[data-test=earlier-item]`)); n != 0 {
		t.Errorf("%d earlier photos for a patient with none", n)
	}
	e.run("earlier photos into view", chromedp.Evaluate(`document.querySelector('[data-test=earlier]').scrollIntoView({block: 'start'})`, nil))
	e.shot("earlier-none")

	d.checkConsole()
	ph.checkConsole()
	e.checkConsole()
}
