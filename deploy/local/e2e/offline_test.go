package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// offline cuts this tab off the network (navigator.onLine false, the
// offline and online events), or brings it back.
func (p *page) offline(on bool) {
	p.t.Helper()
	acts := []chromedp.Action{network.Enable(), network.EmulateNetworkConditions(on, 0, -1, -1)}
	p.run(fmt.Sprintf("offline %v", on), acts...)
}

// offlineFor is how long the phone stays without a connection.
const offlineFor = 60 * time.Second

// No photo left behind. The phone has a weak signal: its API calls get
// through but every upload to S3 fails, so it says what it holds and the
// desktop shows those photos as coming, and asks before committing without
// them. Then the phone loses its connection for a minute and is reloaded
// meanwhile: the page comes from its service worker (the server is out of
// reach, not only the tab) and shows the queue.
// When the connection returns, every photo arrives by itself.
func TestPhoneOffline(t *testing.T) {
	t.Parallel() // a minute of waiting: it runs beside the other long tests
	r := newRig(t)
	d := r.openDesktop(desktopView, false)
	link := r.startCapture(d)
	// The phone reaches the server through a link of its own that the test
	// can cut: DevTools' offline mode does not stop a service worker's own
	// requests, so without the cut the offline reload would prove nothing.
	signal, err := startCutProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { signal.Close() })
	api := strings.TrimPrefix(r.env.URL, "http://")
	signal.SetBackend(api)
	ph := r.openPhoneAt(strings.Replace(link, api, signal.Addr(), 1))
	r.takePhotos(ph, 1, testdata(t, "photo-1920.jpg"))
	waitCards(d, 1, 30*time.Second)
	ph.waitJS(10*time.Second, "service worker in control", `!!navigator.serviceWorker.controller`)

	ph.interceptFail(s3PUT)
	ph.files(`[data-test=file]`, testdata(t, "exif-orientation/Landscape_3.jpg"), testdata(t, "exif-orientation/Landscape_6.jpg"))
	ph.waitJS(30*time.Second, "two waiting on the phone", `document.querySelectorAll('[data-test=upload-row][data-state=retrying]').length === 2 &&
		document.querySelector('[data-test=queue]').textContent.includes('2 waiting for a connection')`)
	d.waitJS(15*time.Second, "desktop shows them coming", `document.querySelector('[data-test=coming]').textContent.startsWith('2 more photos coming from the phone')`)
	r.shot("two-coming")

	// Committing now asks about them, and waiting is the default answer.
	d.consent()
	d.click(`[data-test=commit]`)
	d.waitJS(5*time.Second, "commit dialog", `!!document.querySelector('dialog[open]')`)
	if body := d.text(`dialog[open]`); !strings.Contains(body, "The phone still holds 2 photos") {
		t.Errorf("commit dialog %q does not mention the 2 photos on the phone", body)
	}
	var focused, cancel string
	d.eval(`document.activeElement.dataset.test || ''`, &focused)
	if cancel = d.text(`[data-test=confirm-cancel]`); cancel != "Wait for them" || focused != "confirm-cancel" {
		t.Errorf("cancel button %q (focused: %q), want Wait for them, focused so that Enter waits", cancel, focused)
	}
	r.shot("commit-asks")
	d.click(`[data-test=confirm-cancel]`)

	// A minute without any connection, with a reload in the middle.
	signal.Cut()
	ph.offline(true)
	gone := time.Now()
	ph.waitJS(5*time.Second, "phone knows it is offline", `navigator.onLine === false`)
	ph.run("reload offline", chromedp.Reload())
	ph.waitJS(15*time.Second, "queue after the offline reload", `!document.getElementById('capture').hidden &&
		document.querySelectorAll('[data-test=upload-row]').length === 2 &&
		document.querySelector('[data-test=queue]').textContent.includes('2 waiting for a connection')`)
	if n := len(ph.all(`[data-test=server-row]`)); n != 1 {
		t.Errorf("offline reload shows %d sent photos, want the 1 the session had", n)
	}
	r.shot("offline-reload")
	for time.Since(gone) < offlineFor {
		// the desktop keeps saying they are coming, the phone keeps them
		if n := len(ph.all(`[data-test=upload-row]`)); n != 2 {
			t.Fatalf("%s offline: the phone shows %d photos waiting, want 2", time.Since(gone).Round(time.Second), n)
		}
		d.waitJS(5*time.Second, "still coming", `document.querySelector('[data-test=coming]').textContent.startsWith('2 more photos')`)
		<-time.After(5 * time.Second) // the outage goes on: this is its length, not a wait for a result
	}
	r.shot("offline-a-minute")
	if n := len(r.api().session().Images); n != 1 {
		t.Fatalf("session has %d photos while the phone was offline, want 1", n)
	}

	ph.interceptFail(func(string, string) bool { return false })
	signal.Restore()
	ph.offline(false)
	ph.waitJS(60*time.Second, "every photo sent by itself",
		`document.querySelectorAll('[data-test=server-row]').length === 3 && !document.querySelector('[data-test=upload-row]')`)
	waitCards(d, 3, 30*time.Second)
	d.waitJS(15*time.Second, "nothing coming any more", `document.querySelector('[data-test=coming]').hidden`)
	if left := phoneStored(ph); left != 0 {
		t.Errorf("%d photos left in the phone's storage after the server confirmed them", left)
	}
	r.shot("all-arrived")
	d.checkConsole()
	ph.checkConsole()
}

// The QR code opens the phone page at the address the desktop used: opened
// as localhost, it says localhost; as 127.0.0.1, 127.0.0.1. With PUBLIC_URL
// set, it says that.
func TestQRFollowsTheDesktopAddress(t *testing.T) {
	r := newRig(t)
	for _, host := range []string{"localhost", "127.0.0.1"} {
		base := strings.Replace(r.env.URL, "127.0.0.1", host, 1)
		d := r.page("desktop-"+host, panelView, false)
		r.user += "x" // a session of its own per address
		d.navigate(fmt.Sprintf("%s/?userId=%s&patientId=%s&encounterId=%s", base, r.user, r.patient, r.encounter))
		d.waitJS(15*time.Second, "widget ready", `!document.getElementById('start').hidden`)
		link := r.startCapture(d)
		if !strings.HasPrefix(link, base+"/mobile?token=") {
			t.Errorf("desktop at %s: QR opens %q", base, link)
		}
	}
	r.shot("qr-per-address")

	const public = "https://images.clinic.example"
	e, err := startStack("public-url", map[string]string{"PUBLIC_URL": public})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close() })
	d := r.page("desktop-public-url", panelView, false)
	d.navigate(fmt.Sprintf("%s/?userId=%s&patientId=%s&encounterId=%s", e.URL, r.user, r.patient, r.encounter))
	d.waitJS(15*time.Second, "widget ready", `!document.getElementById('start').hidden`)
	d.click(`[data-test=start]`)
	d.waitJS(15*time.Second, "QR code", `!document.getElementById('qr').hidden && document.getElementById('qr-img').naturalWidth > 0`)
	var link string
	d.eval(`document.getElementById('qr-link').href`, &link)
	if !strings.HasPrefix(link, public+"/mobile?token=") {
		t.Errorf("with PUBLIC_URL=%s the QR opens %q", public, link)
	}
	r.shot("qr-public-url")
	for _, p := range r.pages {
		p.checkConsole()
	}
}
