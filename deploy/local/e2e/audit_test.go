package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/clinicalimages/clinimg/dev/alexsim"
)

// Issue 16, part 2 in the browser: in the narrow side panel, a photo's card
// opens its chain of custody — captured on the phone, uploaded, verified
// with the SHA-256 of the original, cleaned with the SHA-1 of the bytes
// committed, the refused first commit and the second one that put it in the
// record under its Media id, with the SHA-1 ALEX holds for that Media.
func TestPhotoTrailFromItsCard(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(panelView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)
	s := r.api().session()
	r.env.ALEX.Inject(alexsim.Rule{Method: "POST", Path: "/Media", Identifier: s.Images[0].MediaIdentifier, Times: 1,
		Fault: alexsim.Fault{Kind: alexsim.FaultStatus, Status: 400, Code: "business-rule", Message: "Body site not accepted"}})
	d.consent()
	d.click(`[data-test=commit]`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(60*time.Second, "commit failed", `document.getElementById('commitbar').dataset.phase === 'failed'`)
	d.click(`[data-test=commit]`)
	d.click(`[data-test=confirm-ok]`)
	d.waitJS(60*time.Second, "committed on retry", `document.getElementById('commitbar').dataset.phase === 'done'`)

	// The trail is written from the event stream: open it until it holds
	// the commit's success.
	deadline := time.Now().Add(60 * time.Second)
	for {
		d.click(`[data-test=image-card] [data-test=trail-open]`)
		d.waitJS(10*time.Second, "trail open", `document.getElementById('trail').open && document.querySelectorAll('[data-test=trail-list] li').length > 0`)
		var done bool
		d.eval(`!!document.querySelector('[data-test=trail-step][data-step=commit_succeeded]')`, &done)
		if done || time.Now().After(deadline) {
			break
		}
		d.click(`[data-test=trail-close]`)
		time.Sleep(500 * time.Millisecond)
	}
	var steps []string
	d.eval(`[...document.querySelectorAll('[data-test=trail-step]')].map(li => li.dataset.step)`, &steps)
	want := "captured uploaded verified cleaned commit_requested commit_photo commit_failed commit_requested commit_photo commit_succeeded"
	if got := strings.Join(steps, " "); got != want {
		t.Errorf("trail shows %q, want %q", got, want)
	}
	text := d.text(`[data-test=trail-list]`)
	var sha1 string
	d.eval(`[...document.querySelectorAll('[data-test=trail-sha1]')].map(c => c.title).pop() || ''`, &sha1)
	media := r.env.MediaFor(s.Images[0].MediaIdentifier)
	if len(media) != 1 || media[0].Hash != sha1 || !strings.Contains(text, "Media "+media[0].ID) {
		t.Errorf("trail shows SHA-1 %q; ALEX holds %+v\n%s", sha1, media, text)
	}
	if !strings.Contains(text, "refused by ALEX") || !strings.Contains(text, "by phone") {
		t.Errorf("trail does not say who captured it and that ALEX refused it first:\n%s", text)
	}
	r.shot("trail-narrow-panel")
	d.click(`[data-test=trail-close]`)
	d.checkConsole()
	ph.checkConsole()
}
