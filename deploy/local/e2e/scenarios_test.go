package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/clinicalimages/clinimg/dev/alexsim"
	"github.com/clinicalimages/clinimg/dev/testenv"
)

// The notes' manual scenarios (seeds §8) and the "must show", each
// against the whole local stack in headless Chromium. Every step leaves a
// screenshot of both screens under the artifacts directory.

// Three real photos go from the phone to the desktop live, get a body site
// there (seen on the phone too), and are committed from the keyboard; ALEX
// then holds three valid Media with that body site.
func TestHappyPath(t *testing.T) {
	r := newRig(t)
	api := r.api()
	d := r.openDesktop(desktopView, true) // token in the fragment, as a host system passes it
	var loc string
	d.eval(`location.href`, &loc)
	if strings.Contains(loc, "token=") {
		t.Errorf("desktop URL still holds its token: %s", loc)
	}
	r.shot("start")
	link := r.startCapture(d)
	d.waitJS(10*time.Second, "live", `document.getElementById('conn').dataset.state === 'live'`)
	r.shot("qr")

	ph := r.openPhone(link)
	r.shot("paired")
	if who := ph.text(`[data-test=who]`); !strings.Contains(who, r.patient) {
		t.Errorf("phone shows %q, want the patient %s", who, r.patient)
	}
	d.waitJS(10*time.Second, "phone state", `document.querySelector('[data-test=paired-state]').textContent.includes('Phone connected')`)
	r.shot("phone-connected")

	r.takePhotos(ph, 3,
		testdata(t, "photo-1920.jpg"),
		testdata(t, "photo-12mp-orient6.jpg"),
		testdata(t, "exif-orientation/Landscape_6.jpg"))
	r.shot("three-sent")
	waitCards(d, 3, 30*time.Second)
	r.shot("three-previews")

	// Cards show each photo whole (a portrait is not cropped to the card),
	// and a click opens it large in the viewer, named by its number.
	var fits []string
	d.eval(`[...document.querySelectorAll('[data-test=preview]')].map(i => getComputedStyle(i).objectFit)`, &fits)
	if strings.Join(fits, ",") != "contain,contain,contain" {
		t.Errorf("card images fit %v, want the whole photo (contain)", fits)
	}
	var zoomNames []string
	d.eval(`[...document.querySelectorAll('[data-test=zoom]')].map(b => b.getAttribute('aria-label'))`, &zoomNames)
	if strings.Join(zoomNames, "|") != "View photo 1 larger|View photo 2 larger|View photo 3 larger" {
		t.Errorf("zoom buttons are named %q, want each with its photo's number", zoomNames)
	}
	d.click(`[data-test=image-card]:nth-child(2) [data-test=zoom]`)
	d.waitJS(10*time.Second, "viewer open with the photo", `document.getElementById('viewer').open && document.querySelector('[data-test=viewer-img]').complete && document.querySelector('[data-test=viewer-img]').naturalWidth > 0`)
	if c := d.text(`[data-test=viewer-caption]`); !strings.HasPrefix(c, "Photo 2") {
		t.Errorf("viewer caption %q, want Photo 2", c)
	}
	r.shot("viewer")
	d.click(`[data-test=viewer-close]`)
	d.waitJS(5*time.Second, "viewer closed", `!document.getElementById('viewer').open`)

	// What the phone sent: JPEG under 1 MB, longest side at most 1920, the
	// 12 MP portrait photo upright (EXIF orientation applied before upload).
	s := api.session()
	portrait := 0
	for _, im := range s.Images {
		if im.Source != "mobile" || im.Size >= 1_000_000 || max(im.Width, im.Height) > 1920 || im.Width == 0 {
			t.Errorf("image %s: source %s, %d bytes, %dx%d; want mobile, < 1 MB, longest side <= 1920", im.ID, im.Source, im.Size, im.Width, im.Height)
		}
		if im.Height > im.Width {
			portrait++
		}
	}
	if portrait != 1 {
		t.Errorf("%d portrait photos, want 1 (the 12 MP photo with EXIF orientation 6, turned upright)", portrait)
	}
	for _, im := range s.Images { // the bytes the phone sent carry no EXIF (no GPS, no camera serial)
		res, err := http.Get(im.S3URL)
		if err != nil {
			t.Fatalf("GET uploaded photo: %v", err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || len(b) < 3 || b[0] != 0xFF || b[1] != 0xD8 {
			t.Errorf("uploaded photo %s: %s, %d bytes, not a JPEG", im.ID, res.Status, len(b))
		}
		if bytes.Contains(b, []byte("Exif\x00\x00")) {
			t.Errorf("uploaded photo %s still carries EXIF", im.ID)
		}
	}

	for i := 1; i <= 3; i++ {
		setBodySite(d, i, "368208006")
	}
	pickOption(d, 1, "laterality", "left")
	if got := api.session().Images[0].Metadata.Laterality; got != "left" {
		t.Errorf("photo 1 stored with laterality %q, want left", got)
	}
	r.shot("coded")
	ph.waitJS(15*time.Second, "coding on the phone",
		`[...document.querySelectorAll('[data-test=coding]')].filter(e => /upper arm/i.test(e.textContent)).length === 3`)
	r.shot("coding-shown")

	d.consent()
	r.shot("consent-recorded")
	// Commit from the keyboard: focus the button, Enter, Enter on the dialog.
	d.run("commit by keyboard", chromedp.Focus(`[data-test=commit]`, chromedp.ByQuery), chromedp.KeyEvent(kb.Enter))
	d.waitJS(5*time.Second, "confirm dialog", `(document.querySelector('dialog[open] h2') || {}).textContent === 'Commit photos?'`)
	if body := d.text(`dialog[open]`); !strings.Contains(body, r.patient) || !strings.Contains(body, "3 photos") {
		t.Errorf("confirm dialog says %q, want the patient and the count", body)
	}
	r.shot("confirm")
	d.run("confirm by keyboard", chromedp.KeyEvent(kb.Enter))
	d.waitJS(60*time.Second, "committed", `document.getElementById('commitbar').dataset.phase === 'done'`)
	if note := d.text(`[data-test=commit-note]`); note != "3 photos committed to the record" {
		t.Errorf("desktop outcome %q", note)
	}
	r.shot("desktop-committed")
	ph.waitJS(15*time.Second, "phone outcome", `!document.getElementById('outcome').hidden && document.getElementById('outcome-icon').classList.contains('ok')`)
	r.shot("phone-committed")

	ids := []string{}
	for _, im := range s.Images {
		ids = append(ids, im.MediaIdentifier)
	}
	media := r.env.MediaFor(ids...)
	if len(media) != 3 {
		t.Fatalf("ALEX holds %d Media for this session, want 3", len(media))
	}
	for _, m := range media {
		if !strings.HasSuffix(m.PatientRef, "/"+r.patient) {
			t.Errorf("Media %s is for %q, want patient %s", m.ID, m.PatientRef, r.patient)
		}
		if !strings.Contains(string(m.Resource), `"368208006"`) {
			t.Errorf("Media %s has no body site 368208006: %.300s", m.ID, m.Resource)
		}
	}
	d.checkConsole()
	ph.checkConsole()
}

// The phone commits on its own; the desktop shows the outcome live.
func TestPhoneCommits(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 2, testdata(t, "photo-1920.jpg"), testdata(t, "exif-orientation/Landscape_1.jpg"))
	waitCards(d, 2, 30*time.Second)
	ph.consent() // on the phone this time
	d.waitJS(15*time.Second, "the desktop shows the phone's consent", `/on the phone/.test(document.querySelector('[data-test=consent-state]').textContent)`)
	ph.waitJS(30*time.Second, "commit enabled", `!document.querySelector('[data-test=commit]').disabled`)
	r.shot("ready-to-commit")
	ph.click(`[data-test=commit]`)
	ph.waitJS(5*time.Second, "confirm", `(document.querySelector('dialog[open] h2') || {}).textContent === 'Commit photos?'`)
	r.shot("confirm")
	ph.click(`[data-test=confirm-ok]`)
	ph.waitJS(60*time.Second, "phone outcome", `document.getElementById('outcome-icon').classList.contains('ok')`)
	if got := ph.text(`[data-test=outcome-title]`); got != "2 photos committed to the record" {
		t.Errorf("phone outcome %q", got)
	}
	r.shot("phone-committed")
	d.waitJS(15*time.Second, "desktop outcome", `document.getElementById('commitbar').dataset.phase === 'done'`)
	if note := d.text(`[data-test=commit-note]`); note != "2 photos committed to the record" {
		t.Errorf("desktop outcome %q", note)
	}
	d.waitJS(10*time.Second, "cards committed", `[...document.querySelectorAll('[data-test=status]')].every(s => s.textContent === 'In the record')`)
	r.shot("desktop-committed")
	var ids []string
	for _, im := range r.api().session().Images {
		ids = append(ids, im.MediaIdentifier)
	}
	if n := len(r.env.MediaFor(ids...)); n != 2 {
		t.Errorf("ALEX holds %d Media, want 2", n)
	}
	d.checkConsole()
	ph.checkConsole()
}

// The desktop is opened only after the phone took its photos: it shows them all.
func TestDesktopOpenedLate(t *testing.T) {
	r := newRig(t)
	link := r.api().start(r.patient, r.encounter)
	ph := r.openPhone(link)
	r.takePhotos(ph, 3, testdata(t, "photo-1920.jpg"), testdata(t, "exif-orientation/Landscape_3.jpg"), testdata(t, "exif-orientation/Landscape_8.jpg"))
	r.shot("three-sent")
	d := r.openDesktop(desktopView, false)
	waitCards(d, 3, 30*time.Second)
	if st := d.text(`[data-test=paired-state]`); !strings.Contains(st, "Phone connected") {
		t.Errorf("desktop phone state %q, want connected", st)
	}
	r.shot("all-three")
	ph.checkConsole()
	// The desktop removes the phone (issue 12): it leaves the list at once.
	d.click(`[data-test=phone-remove]`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(20*time.Second, "the phone removed", `document.querySelectorAll('[data-test=phone-remove]').length === 0`)
	r.shot("phone-removed")
	d.checkConsole()
}

// The desktop's event stream breaks: it says so, keeps up by polling, and
// goes live again on its own.
func TestRealtimeCut(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	d.waitJS(10*time.Second, "live", `document.getElementById('conn').dataset.state === 'live'`)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)

	r.env.SSE.Cut() // every open stream breaks; reopening fails until Restore
	defer r.env.SSE.Restore()
	d.waitJS(10*time.Second, "reconnecting shown", `document.getElementById('conn').dataset.state === 'reconnecting'`)
	r.shot("reconnecting")
	r.takePhotos(ph, 2, testdata(t, "exif-orientation/Landscape_5.jpg"))
	waitCards(d, 2, 15*time.Second) // caught up by polling while the stream is still down
	r.shot("caught-up-while-cut")

	if r.env.SSE.Refused() == 0 {
		t.Error("the page did not try to reopen its stream while it was cut")
	}
	r.env.SSE.Restore()
	d.waitJS(30*time.Second, "live again", `document.getElementById('conn').dataset.state === 'live'`)
	r.takePhotos(ph, 3, testdata(t, "exif-orientation/Landscape_7.jpg"))
	waitCards(d, 3, 15*time.Second)
	r.shot("live-again")
	d.checkConsole()
	ph.checkConsole()
}

// A photo arrives from the phone while the desktop is still looking up the
// body site the GP typed and tabbed away from (a slow network, a busy
// machine): what was typed is neither wiped by the new card's render nor
// lost, it is saved once the lookup answers.
func TestBodySiteTypedWhilePhotoArrives(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)

	d.holdRequests(func(method, url string) bool { return strings.Contains(url, "/api/body-sites") })
	site := `[data-test=image-card]:nth-child(1) [data-test=body-site]`
	d.typeInto(site, "368208006")
	testenv.Eventually(t, 10*time.Second, "the lookup of what was typed on its way", func() bool { return d.heldCount() > 0 })
	r.takePhotos(ph, 2, testdata(t, "exif-orientation/Landscape_3.jpg"))
	waitCards(d, 2, 30*time.Second)
	var typed string
	d.eval(fmt.Sprintf(`document.querySelector(%q).value`, site), &typed)
	if typed != "368208006" {
		t.Errorf("while its lookup waits, the body site field shows %q, want what was typed", typed)
	}
	r.shot("typed-while-photo-arrived")

	d.release()
	d.waitJS(15*time.Second, "body site saved", `document.querySelector('[data-test=image-card]:nth-child(1) [data-test=card-note]').textContent === 'Saved'`)
	testenv.Eventually(t, 10*time.Second, "the body site stored", func() bool {
		return r.api().session().Images[0].Metadata.BodySite == "368208006"
	})
	r.shot("saved")
	d.checkConsole()
	ph.checkConsole()
}

// Reloading the desktop mid-session loses nothing: photos, coding, phone state.
func TestDesktopReload(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(panelView, false) // the narrow side panel
	link := r.startCapture(d)
	r.shot("qr-in-panel")
	ph := r.openPhone(link)
	r.takePhotos(ph, 2, testdata(t, "photo-1920.jpg"), testdata(t, "exif-orientation/Landscape_2.jpg"))
	waitCards(d, 2, 30*time.Second)
	setBodySite(d, 1, "Left upper arm structure (368208006)")
	d.eval(`(() => { const n = document.querySelector('[data-test=image-card]:nth-child(2) [data-test=notes]');
		n.focus(); n.value = 'raised lesion, 4 mm'; n.dispatchEvent(new Event('input')); n.blur(); return true; })()`, new(bool))
	d.waitJS(10*time.Second, "notes saved", `document.querySelector('[data-test=image-card]:nth-child(2) [data-test=card-note]').textContent === 'Saved'`)
	r.shot("before-reload")

	d.run("reload", chromedp.Reload())
	waitCards(d, 2, 20*time.Second)
	var site, code, notes string
	d.eval(`document.querySelector('[data-test=image-card]:nth-child(1) [data-test=body-site]').value`, &site)
	d.eval(`document.querySelector('[data-test=image-card]:nth-child(1) [data-test=body-site-code]').textContent`, &code)
	d.eval(`document.querySelector('[data-test=image-card]:nth-child(2) [data-test=notes]').value`, &notes)
	if site != "Left upper arm structure" || code != "SNOMED CT 368208006" || notes != "raised lesion, 4 mm" {
		t.Errorf("after reload: body site %q (%q), notes %q", site, code, notes)
	}
	d.waitJS(10*time.Second, "phone state", `document.querySelector('[data-test=paired-state]').textContent.includes('Phone connected')`)
	r.shot("after-reload")

	// Deleting a photo asks first, and the phone sees it gone.
	d.click(`[data-test=image-card]:nth-child(2) [data-test=delete]`)
	d.waitJS(5*time.Second, "delete dialog", `(document.querySelector('dialog[open] h2') || {}).textContent === 'Delete photo 2?'`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(10*time.Second, "one card left", `document.querySelectorAll('[data-test=image-card]').length === 1`)
	ph.waitJS(15*time.Second, "phone shows one photo", `document.querySelectorAll('[data-test=server-row]').length === 1`)
	r.shot("deleted")
	d.checkConsole()
	ph.checkConsole()
}

// The first PUT to S3 drops; the phone retries and the photo lands once.
// Then every PUT drops and the phone is reloaded: the photo waits in the
// browser's storage and goes up when the network is back. Last, the network
// stays down through five attempts: the photo still waits, and a tap sends it.
func TestUploadRetry(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)

	var puts atomic.Int32
	ph.interceptFail(func(method, url string) bool {
		return s3PUT(method, url) && puts.Add(1) == 1
	})
	ph.files(`[data-test=file]`, testdata(t, "photo-1920.jpg"))
	ph.waitJS(10*time.Second, "retrying shown", `!!document.querySelector('[data-test=upload-row][data-state=retrying]')`)
	r.shot("retrying")
	r.takePhotos(ph, 1)
	r.shot("sent-after-retry")
	waitCards(d, 1, 30*time.Second)
	if n := len(r.api().session().Images); n != 1 || puts.Load() != 2 {
		t.Errorf("%d photos after %d PUTs, want 1 photo after 2 PUTs", n, puts.Load())
	}

	ph.interceptFail(s3PUT)
	ph.files(`[data-test=file]`, testdata(t, "exif-orientation/Landscape_4.jpg"))
	ph.waitJS(10*time.Second, "retrying", `!!document.querySelector('[data-test=upload-row][data-state=retrying]')`)
	ph.run("reload", chromedp.Reload())
	ph.waitJS(10*time.Second, "resumed after reload", `!!document.querySelector('[data-test=upload-row]')`)
	r.shot("waiting-after-reload")
	ph.interceptFail(func(string, string) bool { return false })
	ph.waitJS(30*time.Second, "resumed upload confirmed",
		`document.querySelectorAll('[data-test=server-row]').length === 2 && !document.querySelector('[data-test=upload-row]')`)
	if left := phoneStored(ph); left != 0 {
		t.Errorf("%d photos left in the phone's storage after the server confirmed them", left)
	}
	waitCards(d, 2, 30*time.Second)
	r.shot("resumed")
	r.shot("two-photos")

	// The network stays down past the old fixed give-up (1+2+4+8 s): the
	// phone keeps waiting, says so, and a tap on "Try now" sends the photo
	// once the network is back, without waiting for the next attempt.
	ph.interceptFail(s3PUT)
	before := ph.failedCount()
	ph.files(`[data-test=file]`, testdata(t, "exif-orientation/Landscape_7.jpg"))
	testenv.Eventually(t, 60*time.Second, "five failed PUTs", func() bool { return ph.failedCount() >= before+5 })
	ph.waitJS(10*time.Second, "still waiting, and saying so", `(document.querySelector('[data-test=upload-row][data-state=retrying]') || {innerText: ''}).innerText.includes('Waiting for a connection') &&
		document.querySelector('[data-test=queue]').textContent.includes('1 waiting for a connection')`)
	r.shot("still-waiting")
	ph.interceptFail(func(string, string) bool { return false })
	ph.click(`[data-test=retry]`)
	r.takePhotos(ph, 3)
	waitCards(d, 3, 30*time.Second)
	r.shot("sent-after-tap")
	d.checkConsole()
	ph.checkConsole()
}

// The 50-photo cap: warnings on both screens, the camera and the desktop
// upload disabled at 50, and the API refusing a 51st.
func TestFiftyPhotoLimit(t *testing.T) {
	r := newRig(t)
	api := r.api()
	link := api.start(r.patient, r.encounter)
	api.seed(49)
	d := r.openDesktop(desktopView, false)
	d.waitJS(30*time.Second, "49 cards", `document.querySelectorAll('[data-test=image-card]').length === 49`)
	if w := d.text(`[data-test=limit]`); w != "You have 49 photos. Consider committing this batch." {
		t.Errorf("desktop warning at 49: %q", w)
	}
	r.shot("desktop-warning-49")
	ph := r.openPhone(link)
	r.shot("phone-warning-49")
	r.takePhotos(ph, 50, testdata(t, "photo-1920.jpg"))
	const full = "Maximum 50 photos reached. Please commit before adding more."
	ph.waitJS(10*time.Second, "phone limit", fmt.Sprintf(`document.querySelector('[data-test=limit]').textContent === %q && document.querySelector('[data-test=file]').disabled`, full))
	r.shot("phone-limit")
	d.waitJS(15*time.Second, "desktop limit", fmt.Sprintf(`document.querySelector('[data-test=limit]').textContent === %q && document.querySelector('[data-test=file]').disabled`, full))
	r.shot("desktop-limit")

	var refused struct {
		Code string `json:"code"`
	}
	// The API may refuse already at presigning; if not, the record is refused.
	st := api.do("POST", "/api/users/"+r.user+"/presigned-url", map[string]any{"contentType": "image/jpeg", "contentLength": 1000}, &refused)
	if st == 200 {
		id, key := api.put()
		st = api.record(id, key, &refused)
	}
	if st != 400 || refused.Code != "image_limit" {
		t.Errorf("51st photo: %d %q, want 400 image_limit", st, refused.Code)
	}
	d.checkConsole()
	ph.checkConsole()
}

// ALEX refuses one photo: the desktop names the photo and the reason, and a
// retry commits both, each once. (The photo already in the record stays
// there; the retry sends only the refused one.)
func TestCommitFailureAndRetry(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 2, testdata(t, "photo-1920.jpg"), testdata(t, "exif-orientation/Landscape_2.jpg"))
	waitCards(d, 2, 30*time.Second)
	s := r.api().session()
	r.env.ALEX.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: s.Images[1].MediaIdentifier, Times: 1,
		Fault: alexsim.Fault{Kind: alexsim.FaultStatus, Status: 400, Code: "business-rule", Message: "Body site not accepted"}})

	d.consent()
	d.click(`[data-test=commit]`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(60*time.Second, "commit failed", `document.getElementById('commitbar').dataset.phase === 'failed'`)
	d.waitJS(10*time.Second, "photo marked", `document.querySelector('[data-test=image-card]:nth-child(2)').dataset.status === 'failed'`)
	// The failure and the first photo's place in the record arrive as two
	// events; on a busy machine the second can follow by a few seconds.
	d.waitJS(15*time.Second, "the retry offered for the other photo only", `document.querySelector('[data-test=commit]').textContent === 'Commit the other 1 photo'`)
	note := d.text(`[data-test=commit-note]`)
	if !strings.Contains(note, "Photo 2") {
		t.Errorf("failure shown as %q, want the failing photo named", note)
	}
	// Photo 1 is in the record and stays there: the retry sends photo 2 only.
	if !strings.Contains(note, "ALEX has no undo") {
		t.Errorf("failure shown as %q, want what stays in the record said", note)
	}
	if btn := d.text(`[data-test=commit]`); btn != "Commit the other 1 photo" {
		t.Errorf("commit button %q, want Commit the other 1 photo", btn)
	}
	r.shot("failed")
	if n := len(r.env.MediaFor(s.Images[1].MediaIdentifier)); n != 0 {
		t.Errorf("%d Media in ALEX for the refused photo, want 0", n)
	}

	d.click(`[data-test=commit]`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(60*time.Second, "committed on retry", `document.getElementById('commitbar').dataset.phase === 'done'`)
	r.shot("committed-on-retry")
	ph.waitJS(15*time.Second, "phone outcome", `document.getElementById('outcome-icon').classList.contains('ok')`)
	for i, im := range s.Images {
		if n := len(r.env.MediaFor(im.MediaIdentifier)); n != 1 {
			t.Errorf("photo %d has %d Media in ALEX after the retry, want 1", i+1, n)
		}
	}
	d.checkConsole()
	ph.checkConsole()
}

// A QR token works once: a second scan says so, and a made-up one is expired.
func TestPhoneTokenScreens(t *testing.T) {
	r := newRig(t)
	link := r.api().start(r.patient, r.encounter)
	first := r.openPhone(link)
	again := r.page("phone-again", phoneView, true)
	again.navigate(link)
	again.waitJS(10*time.Second, "used screen", `!document.getElementById('gone').hidden`)
	if got := again.text(`#gone-title`); got != "This QR code was already used" {
		t.Errorf("second scan shows %q", got)
	}
	r.shot("already-used")
	again.navigate(r.env.URL + "/mobile?token=made-up-token")
	again.waitJS(10*time.Second, "expired screen", `!document.getElementById('gone').hidden`)
	if got := again.text(`#gone-title`); got != "This QR code has expired" {
		t.Errorf("unknown token shows %q", got)
	}
	r.shot("expired")
	again.navigate(r.env.URL + "/mobile")
	again.waitJS(10*time.Second, "no token screen", `!document.getElementById('gone').hidden`)
	r.shot("no-token")
	first.run("reload", chromedp.Reload())
	first.waitJS(10*time.Second, "still capturing after reload", `!document.getElementById('capture').hidden`)
	first.checkConsole()
	again.checkConsole()
}

// The practice system moves to patient B while the session holds patient A's
// uncommitted photo. The header shows B; nothing can be added, coded,
// deleted, paired or committed as before; the only two actions name A (and
// their confirmations name both); a photo dropped on the desktop, one
// recorded through the API for B, and one sent by A's phone are refused,
// and the phone says it is on hold. The GP commits A's photo to
// A, then starts B's capture and adds photos from the desktop (picked and
// dropped), which go to B.
func TestPatientSwitch(t *testing.T) {
	r := newRig(t)
	api := r.api()
	link := api.start(r.patient, r.encounter)
	ph := r.openPhone(link)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	ph.consent()

	a, b := r.patient, r.patient+"b"
	d := r.page("desktop", desktopView, false)
	d.navigate(fmt.Sprintf("%s/?userId=%s&patientId=%s&encounterId=%s", r.env.URL, r.user, b, r.encounter))
	waitCards(d, 1, 30*time.Second)
	d.waitJS(15*time.Second, "mismatch warning", `!document.querySelector('[data-test=mismatch]').hidden`)
	if h := d.text(`[data-test=patient]`); !strings.HasPrefix(h, "Patient "+b+" ") {
		t.Errorf("header %q, want the open patient %s", h, b)
	}
	if w := d.text(`[data-test=mismatch-text]`); !strings.Contains(w, a) || !strings.Contains(w, b) {
		t.Errorf("warning %q does not name both patients", w)
	}
	r.shot("other-patient")

	// Every action that adds, edits, pairs or commits is off; the viewer and
	// a photo's trail only read (desktop-view.js leaves both on).
	var enabled []string
	d.eval(`(() => {
		const on = (e) => e && !e.disabled && !e.hidden && !e.closest('[hidden]') && e.offsetParent !== null;
		const out = [];
		for (const e of document.querySelectorAll('[data-test=image-card] input, [data-test=image-card] select, [data-test=image-card] textarea, [data-test=image-card] button:not(.zoom):not(.trail-open)')) if (on(e)) out.push(e.dataset.test || e.className);
		for (const sel of ['[data-test=file]', '[data-test=commit]', '[data-test=qr-new]', '[data-test=qr-show]', '[data-test=start]']) if (on(document.querySelector(sel))) out.push(sel);
		if (on(document.querySelector('[data-test=drop]'))) out.push('drop zone');
		return out; })()`, &enabled)
	if len(enabled) != 0 {
		t.Errorf("with another patient's photos, still enabled: %v", enabled)
	}
	var actions []string
	d.eval(`[...document.querySelectorAll('[data-test=mismatch] button')].filter(b => !b.disabled).map(b => b.textContent)`, &actions)
	want := []string{"Commit 1 photo to patient " + a, "Discard patient " + a + "'s 1 photo"}
	if strings.Join(actions, "|") != strings.Join(want, "|") {
		t.Errorf("offered actions %q, want %q", actions, want)
	}

	// A photo dropped on the desktop goes nowhere; the API refuses one for B.
	d.dropFiles(`[data-test=grid]`, testdata(t, "exif-orientation/Landscape_4.jpg"))
	d.files(`[data-test=file]`, testdata(t, "exif-orientation/Landscape_8.jpg"))
	d.waitJS(5*time.Second, "refusal shown", `!!document.querySelector('[data-test=banner-error]')`)
	if n := len(d.all(`[data-test=upload-card]`)); n != 0 {
		t.Errorf("%d uploads started for another patient's session", n)
	}
	id, key := api.put()
	var refused struct {
		Code string `json:"code"`
	}
	if st := api.do("POST", "/api/users/"+r.user+"/images", map[string]any{"imageId": id, "s3Key": key, "source": "desktop", "patientId": b}, &refused); st != 409 || refused.Code != "patient_mismatch" {
		t.Errorf("record for %s into %s's session: %d %q, want 409 patient_mismatch", b, a, st, refused.Code)
	}
	// The phone in hand is still A's: it is told the session is on hold, its
	// camera is off, and the API refuses what it sends.
	ph.waitJS(15*time.Second, "phone on hold", `!document.querySelector('[data-test=held]').hidden && document.querySelector('[data-test=file]').disabled`)
	if h := ph.text(`[data-test=held]`); strings.Contains(h, b) {
		t.Errorf("the phone for %s is told the other patient's id: %q", a, h)
	}
	var phoneToken string
	ph.eval(`JSON.parse(sessionStorage.getItem('clinimg.phone')).phoneToken`, &phoneToken)
	phoneAPI := api
	phoneAPI.token = phoneToken
	pid, pkey := phoneAPI.put()
	if st := phoneAPI.do("POST", "/api/users/"+r.user+"/images", map[string]any{"imageId": pid, "s3Key": pkey, "source": "mobile"}, &refused); st != 409 || refused.Code != "patient_mismatch" {
		t.Errorf("phone records into %s's session while %s is open: %d %q, want 409 patient_mismatch", a, b, st, refused.Code)
	}
	if n := len(api.session().Images); n != 1 {
		t.Errorf("session holds %d photos, want A's 1", n)
	}
	r.shot("refused")

	// Each action names both patients before it does anything.
	d.click(`[data-test=mismatch-discard]`)
	d.waitJS(5*time.Second, "discard dialog", `!!document.querySelector('dialog[open]')`)
	if body := d.text(`dialog[open]`); !strings.Contains(body, a) || !strings.Contains(body, b) || !strings.Contains(body, "1 photo") {
		t.Errorf("discard dialog %q, want both patients and the count", body)
	}
	r.shot("discard-confirm")
	d.click(`[data-test=confirm-cancel]`)
	d.click(`[data-test=mismatch-commit]`)
	d.waitJS(5*time.Second, "commit dialog", `(document.querySelector('dialog[open] h2') || {}).textContent === 'Commit to patient ' + `+fmt.Sprintf("%q", a)+` + '?'`)
	if body := d.text(`dialog[open]`); !strings.Contains(body, a) || !strings.Contains(body, b) {
		t.Errorf("commit dialog %q, want both patients", body)
	}
	r.shot("commit-confirm")
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(60*time.Second, "committed", `document.getElementById('commitbar').dataset.phase === 'done'`)
	s := api.session()
	if media := r.env.MediaFor(s.Images[0].MediaIdentifier); len(media) != 1 || !strings.HasSuffix(media[0].PatientRef, "/"+a) {
		t.Fatalf("A's photo: %d Media, want 1 in patient %s", len(media), a)
	}
	r.shot("committed-to-a")

	// Now B's capture, with photos from the desktop, picked and dropped.
	d.waitJS(10*time.Second, "start for B", fmt.Sprintf(`document.querySelector('[data-test=start]').textContent.includes(%q) && !document.getElementById('start').hidden`, b))
	d.click(`[data-test=start]`)
	d.waitJS(15*time.Second, "new session", `document.querySelectorAll('[data-test=image-card]').length === 0 && !document.getElementById('qr').hidden && document.querySelector('[data-test=mismatch]').hidden`)
	ph.waitJS(15*time.Second, "old phone told", `!document.getElementById('gone').hidden || !document.getElementById('outcome').hidden`)
	d.files(`[data-test=file]`, testdata(t, "exif-orientation/Landscape_8.jpg"))
	waitCards(d, 1, 30*time.Second)
	d.dropFiles(`[data-test=drop]`, testdata(t, "exif-orientation/Landscape_4.jpg"))
	waitCards(d, 2, 30*time.Second)
	var sources []string
	d.eval(`[...document.querySelectorAll('[data-test=source]')].map(e => e.textContent)`, &sources)
	if strings.Join(sources, ",") != "Desktop,Desktop" {
		t.Errorf("sources %v, want two from the desktop", sources)
	}
	if s := api.session(); s.PatientID != b || len(s.Images) != 2 || s.Images[0].Source != "desktop" || s.Images[1].Source != "desktop" {
		t.Errorf("session for %s with %d photos, want %s with the two desktop photos", s.PatientID, len(s.Images), b)
	}
	r.shot("desktop-upload")
	d.checkConsole()
	ph.checkConsole()
}

// Realtime tokens that live seconds, not an hour (the shared stack's
// realtimeTTL): the desktop renews its token before it expires and reopens
// the stream from where it was, never dropping to "reconnecting", and
// photos keep arriving live.
func TestRealtimeTokenRenewal(t *testing.T) {
	t.Parallel() // mostly waiting for renewals: it runs beside the minute offline
	r := newRig(t)
	e := r.env
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	d.waitJS(10*time.Second, "live", `document.getElementById('conn').dataset.state === 'live'`)
	d.eval(`(() => { window.__states = []; const c = document.getElementById('conn');
		new MutationObserver(() => window.__states.push(c.dataset.state)).observe(c, {attributes: true, attributeFilter: ['data-state']});
		return true; })()`, new(bool))
	ph := r.openPhone(link)
	opened := e.SSE.Opened()
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)
	// Two renewals of the desktop's and the phone's streams.
	testenv.Eventually(t, 4*realtimeTTL, "streams renewed", func() bool { return e.SSE.Opened() >= opened+4 })
	r.takePhotos(ph, 2, testdata(t, "exif-orientation/Landscape_3.jpg"))
	waitCards(d, 2, 15*time.Second)
	var states []string
	d.eval(`window.__states`, &states)
	for _, s := range states {
		if s != "live" {
			t.Errorf("desktop went %q while renewing its token (states %v)", s, states)
			break
		}
	}
	r.shot("after-renewals")
	d.checkConsole()
	ph.checkConsole()
}
