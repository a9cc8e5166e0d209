package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rig is one scenario: the stack, one browser, a user of its own and the
// patient and encounter the capture is for.
type rig struct {
	t         *testing.T
	env       *env
	b         *browser
	user      string
	patient   string
	encounter string
	pages     []*page // every screen open, for r.shot
}

// page opens a screen and remembers it for r.shot.
func (r *rig) page(name string, size [2]int64, mobile bool) *page {
	p := r.b.page(name, size, mobile)
	r.pages = append(r.pages, p)
	return p
}

// shot saves a screenshot of every open screen for this step, under one
// step number.
func (r *rig) shot(step string) {
	r.t.Helper()
	n := nextShot(r.t)
	for _, p := range r.pages {
		p.shotAs(n, step)
	}
}

func newRig(t *testing.T) *rig {
	t.Helper()
	e := stack(t)
	id := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	return &rig{t: t, env: e, b: newBrowser(t), user: "user_e2e" + id, patient: "pat_" + id, encounter: "enc_" + id}
}

// desktopURL opens the widget the way the local stack does (demo context in
// the query, desktop token from /dev/token), or with the token in the
// fragment as a host system would.
func (r *rig) desktopURL(withToken bool) string {
	u := fmt.Sprintf("%s/?userId=%s&patientId=%s&encounterId=%s", r.env.URL, r.user, r.patient, r.encounter)
	if withToken {
		u = fmt.Sprintf("%s/#token=%s&patientId=%s&encounterId=%s", r.env.URL, r.api().token, r.patient, r.encounter)
	}
	return u
}

// openDesktop opens the widget and waits until it knows whether a session exists.
func (r *rig) openDesktop(size [2]int64, withToken bool) *page {
	r.t.Helper()
	d := r.page("desktop", size, false)
	d.navigate(r.desktopURL(withToken))
	d.waitJS(15*time.Second, "widget ready",
		`!document.getElementById('start').hidden || !document.getElementById('capture').hidden`)
	return d
}

// startCapture clicks Start capture and returns the phone link behind the QR.
func (r *rig) startCapture(d *page) string {
	r.t.Helper()
	d.click(`[data-test=start]`)
	d.waitJS(15*time.Second, "QR code", `!document.getElementById('qr').hidden && document.getElementById('qr-img').naturalWidth > 0`)
	var link string
	d.eval(`document.getElementById('qr-link').href`, &link)
	if !strings.Contains(link, "/mobile?token=") {
		r.t.Fatalf("QR link = %q, want the phone page with a token", link)
	}
	return link
}

// openPhone opens the phone page from the QR link and waits for the camera.
func (r *rig) openPhone(link string) *page {
	r.t.Helper()
	if !strings.HasPrefix(link, r.env.URL+"/mobile?token=") {
		r.t.Fatalf("QR link %q does not open this stack's phone page (%s)", link, r.env.URL)
	}
	return r.openPhoneAt(link)
}

// openPhoneAt opens the phone page at link as given (a test may route the
// phone through a proxy of its own) and waits for the camera.
func (r *rig) openPhoneAt(link string) *page {
	r.t.Helper()
	ph := r.page("phone", phoneView, true)
	ph.navigate(link)
	ph.waitJS(15*time.Second, "capture screen with the session", `!document.getElementById('capture').hidden && document.querySelector('[data-test=count]').textContent.includes('in this session')`)
	var loc string
	ph.eval(`location.href`, &loc)
	if strings.Contains(loc, "token=") {
		r.t.Errorf("phone URL still holds the QR token after the exchange: %s", loc)
	}
	return ph
}

// takePhotos hands photos to the phone's camera input and waits until the
// server confirmed want photos in all.
func (r *rig) takePhotos(ph *page, want int, paths ...string) {
	r.t.Helper()
	if len(paths) > 0 {
		ph.files(`[data-test=file]`, paths...)
	}
	ph.waitJS(60*time.Second, fmt.Sprintf("%d photos confirmed", want), fmt.Sprintf(
		`document.querySelectorAll('[data-test=server-row]').length === %d && document.querySelectorAll('[data-test=upload-row]').length === 0`, want))
}

// waitCards waits for n photo cards on the desktop, each with its server
// preview loaded (not the local blob), without any reload.
func waitCards(d *page, n int, d2 time.Duration) {
	d.t.Helper()
	d.waitJS(d2, fmt.Sprintf("%d cards with previews", n), fmt.Sprintf(`(() => {
		const cards = [...document.querySelectorAll('[data-test=image-card]')];
		return cards.length === %d && cards.every(c => {
			const img = c.querySelector('[data-test=preview]');
			return !img.hidden && img.complete && img.naturalWidth > 0 && !img.src.startsWith('blob:');
		});
	})()`, n))
}

// setBodySite types a body site (its code, or its name and code as the
// picker lists it) into the n-th card's picker (1-based) from the keyboard,
// tabs away, and waits until it is saved. The card's note is cleared first,
// so a "Saved" left by an earlier edit of the card does not count.
func setBodySite(d *page, n int, text string) {
	d.t.Helper()
	card := fmt.Sprintf(`[data-test=image-card]:nth-child(%d)`, n)
	d.eval(fmt.Sprintf(`(() => { document.querySelector(%q).textContent = ''; return true; })()`, card+` [data-test=card-note]`), new(bool))
	d.typeInto(card+` [data-test=body-site]`, text)
	d.waitJS(15*time.Second, "body site saved", fmt.Sprintf(
		`document.querySelector(%q).textContent === 'Saved'`, card+` [data-test=card-note]`))
}

// pickOption picks value in the n-th card's select (data-test field), as a
// GP's choice does: the value and its change event in one step, so no
// re-render of the card comes between them. It waits until it is saved.
func pickOption(d *page, n int, field, value string) {
	d.t.Helper()
	card := fmt.Sprintf(`[data-test=image-card]:nth-child(%d)`, n)
	var ok bool
	d.eval(fmt.Sprintf(`(() => {
		document.querySelector(%q).textContent = '';
		const s = document.querySelector(%q);
		s.value = %q;
		s.dispatchEvent(new Event('change'));
		return s.value === %q; })()`, card+` [data-test=card-note]`, card+` [data-test=`+field+`]`, value, value), &ok)
	if !ok {
		d.t.Fatalf("%s: photo %d's %s offers no %q", d.name, n, field, value)
	}
	d.waitJS(15*time.Second, field+" saved", fmt.Sprintf(
		`document.querySelector(%q).textContent === 'Saved'`, card+` [data-test=card-note]`))
}

// apiClient calls the API from the test, as the desktop user.
type apiClient struct {
	t     *testing.T
	base  string
	user  string
	token string
}

func (r *rig) api() apiClient {
	r.t.Helper()
	tok, err := r.env.DesktopToken(r.user)
	if err != nil {
		r.t.Fatalf("desktop token: %v", err)
	}
	return apiClient{t: r.t, base: r.env.URL, user: r.user, token: tok}
}

func (c apiClient) do(method, path string, body, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %d %s: %v", method, path, res.StatusCode, raw, err)
		}
	}
	return res.StatusCode
}

// sessionView is the part of GET session the tests look at.
type sessionView struct {
	SessionID    string `json:"sessionId"`
	PatientID    string `json:"patientId"`
	CommitStatus string `json:"commitStatus"`
	Images       []struct {
		ID              string `json:"id"`
		MediaIdentifier string `json:"mediaIdentifier"`
		S3URL           string `json:"s3Url"`
		Source          string `json:"source"`
		Status          string `json:"status"`
		Size            int64  `json:"size"`
		Width           int    `json:"width"`
		Height          int    `json:"height"`
		Metadata        struct {
			BodySite   string `json:"bodySite"`
			Laterality string `json:"laterality"`
			Notes      string `json:"notes"`
		} `json:"metadata"`
	} `json:"images"`
}

func (c apiClient) session() sessionView {
	c.t.Helper()
	var s sessionView
	if st := c.do("GET", "/api/users/"+c.user+"/session", nil, &s); st != 200 {
		c.t.Fatalf("GET session: %d", st)
	}
	return s
}

// start begins a session through the API, as the widget does, and returns the phone link.
func (c apiClient) start(patient, encounter string) string {
	c.t.Helper()
	var r struct {
		QRCodeURL string `json:"qrCodeUrl"`
	}
	if st := c.do("POST", "/api/session-tokens", map[string]any{"patientId": patient, "encounterId": encounter}, &r); st != 200 {
		c.t.Fatalf("POST session-tokens: %d", st)
	}
	return r.QRCodeURL
}

// seed records n small photos straight through the API (presign, PUT, record),
// for the 50-photo limit without 49 trips through the browser.
func (c apiClient) seed(n int) {
	c.t.Helper()
	for i := 0; i < n; i++ {
		id, key := c.put()
		if st := c.record(id, key, nil); st != 200 {
			c.t.Fatalf("record seed photo %d: %d", i, st)
		}
	}
}

// smallJPEG is a 64x48 photo.
func smallJPEG(t *testing.T) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	img.Set(0, 0, color.White)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// put presigns and uploads a small photo, returning its image id and key.
func (c apiClient) put() (imageID, s3Key string) {
	c.t.Helper()
	body := smallJPEG(c.t)
	var p struct {
		UploadURL string            `json:"uploadUrl"`
		S3Key     string            `json:"s3Key"`
		ImageID   string            `json:"imageId"`
		Headers   map[string]string `json:"headers"`
	}
	if st := c.do("POST", "/api/users/"+c.user+"/presigned-url", map[string]any{"contentType": "image/jpeg", "contentLength": len(body)}, &p); st != 200 {
		c.t.Fatalf("presign: %d", st)
	}
	req, _ := http.NewRequest("PUT", p.UploadURL, bytes.NewReader(body))
	for k, v := range p.Headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("PUT photo: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		c.t.Fatalf("PUT photo: %s", res.Status)
	}
	return p.ImageID, p.S3Key
}

// record records an uploaded photo in the session.
func (c apiClient) record(imageID, s3Key string, out any) int {
	c.t.Helper()
	return c.do("POST", "/api/users/"+c.user+"/images", map[string]any{"imageId": imageID, "s3Key": s3Key, "source": "desktop"}, out)
}

// phoneStored counts the photos waiting in the phone's IndexedDB.
func phoneStored(ph *page) int {
	ph.t.Helper()
	var n int
	ph.evalAsync(`new Promise(res => { const o = indexedDB.open('clinimg-phone'); o.onsuccess = () => {
		const q = o.result.transaction('pending').objectStore('pending').count(); q.onsuccess = () => res(q.result); }; })`, &n)
	return n
}

// s3PUT picks the uploads to S3 (the phone's PUT of its pending count to
// the API is not one).
func s3PUT(method, url string) bool { return method == "PUT" && !strings.Contains(url, "/api/") }
