package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/clinicalimages/clinimg/dev/testenv"
)

// The phone's coding editor while the photo changes under it: the phone
// re-renders a photo's row on every change to it (processing finished, a
// coding made on the desktop, a token renewal's reconcile), and what the GP
// is typing there must survive it.

// phoneRow is the phone's row of photo 1 (the newest photo is on top).
const phoneRow = `[data-test=server-row][aria-label="Photo 1"]`

// openPhoneEditor opens the editor of the phone's photo 1 once it is
// ready (so its status does not change under the test) and types text into
// its body-site field, staying in the field: nothing is saved yet.
func openPhoneEditor(ph *page, text string) {
	ph.t.Helper()
	ph.waitJS(30*time.Second, "the photo ready on the phone", fmt.Sprintf(`document.querySelector(%q).dataset.status === 'ready'`, phoneRow))
	ph.click(phoneRow + ` [data-test=edit]`)
	ph.waitJS(5*time.Second, "the editor open", fmt.Sprintf(`!!document.querySelector(%q)`, phoneRow+` details[open] [data-test=body-site]`))
	ph.run("type a body site without leaving the field",
		chromedp.Evaluate(fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.scrollIntoView({block: 'center'}); e.focus(); return document.activeElement === e; })()`, phoneRow+` [data-test=body-site]`), nil),
		chromedp.KeyEvent(text))
}

// The desktop codes the photo's side while the GP types its body site on
// the phone: the phone shows the new side and keeps the open editor, the
// typed text and the focus; leaving the field saves the body site, and the
// desktop's side stays.
func TestPhoneEditSurvivesDesktopCoding(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)

	openPhoneEditor(ph, "368208006")
	pickOption(d, 1, "laterality", "left")
	ph.waitJS(15*time.Second, "the desktop's side on the phone", fmt.Sprintf(`document.querySelector(%q).value === 'left'`, phoneRow+` [data-test=side]`))
	r.shot("side-coded-while-typing")
	typing := func(after string) {
		t.Helper()
		var got struct {
			Typed   string
			Focused bool
			Open    bool
		}
		ph.eval(fmt.Sprintf(`(() => { const i = document.querySelector(%q);
			return {Typed: i.value, Focused: document.activeElement === i, Open: !!i.closest('details[open]')}; })()`, phoneRow+` [data-test=body-site]`), &got)
		if got.Typed != "368208006" || !got.Focused || !got.Open {
			t.Errorf("after %s, the phone's body-site field holds %q (focused %v, editor open %v); want what was typed, focused, open",
				after, got.Typed, got.Focused, got.Open)
		}
	}
	typing("the desktop coded the photo's side")

	// a photo arriving puts a row above it
	r.api().seed(1)
	ph.waitJS(30*time.Second, "the new photo on the phone", `document.querySelectorAll('[data-test=server-row]').length === 2`)
	typing("another photo arrived")
	r.shot("photo-arrived-while-typing")

	// leaving the field picks and saves what was typed
	ph.run("leave the field", chromedp.KeyEvent(kb.Tab))
	ph.waitJS(15*time.Second, "body site saved on the phone", fmt.Sprintf(`document.querySelector(%q).textContent === 'Saved'`, phoneRow+` [data-test=row-note]`))
	testenv.Eventually(t, 10*time.Second, "the body site stored, the desktop's side kept", func() bool {
		m := r.api().session().Images[0].Metadata
		return m.BodySite == "368208006" && m.Laterality == "left"
	})
	d.waitJS(15*time.Second, "the desktop shows the phone's body site", `document.querySelector('[data-test=image-card] [data-test=body-site-code]').textContent.includes('368208006')`)
	r.shot("saved")
	d.checkConsole()
	ph.checkConsole()
}

// The desktop deletes the photo whose editor is open on the phone: the
// editor goes with its row, and the phone says why instead of silently
// dropping what was typed.
func TestPhoneEditorClosedWhenPhotoDeleted(t *testing.T) {
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	ph := r.openPhone(link)
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)

	openPhoneEditor(ph, "forearm")
	api := r.api()
	id := api.session().Images[0].ID
	if st := api.do("DELETE", "/api/users/"+r.user+"/images/"+id, nil, nil); st/100 != 2 {
		t.Fatalf("DELETE the photo: %d", st)
	}
	ph.waitJS(15*time.Second, "the row gone", fmt.Sprintf(`!document.querySelector(%q)`, phoneRow))
	if n := len(ph.all(`[data-test=upload-row]`)); n != 0 {
		t.Errorf("the deleted photo is back as %d row(s) of photos on their way", n)
	}
	ph.waitJS(5*time.Second, "why the editor closed", `!document.querySelector('[data-test=notice]').hidden`)
	if n := ph.text(`[data-test=notice]`); !strings.Contains(n, "Photo 1 was deleted") {
		t.Errorf("phone notice %q, want it to say photo 1 was deleted while being coded", n)
	}
	r.shot("deleted-while-coding")
	d.checkConsole()
	ph.checkConsole()
}
