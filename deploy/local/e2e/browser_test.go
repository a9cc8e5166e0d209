package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/input"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// browser is one headless Chromium with a fresh profile, for one test.
type browser struct {
	t   *testing.T
	ctx context.Context
}

// chromiumPath finds Debian's chromium (CHROMIUM overrides).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: install Debian's chromium (apt-get install chromium) or set CHROMIUM")
	return ""
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	// Not t.TempDir: Chromium's helpers may still be writing when the test
	// ends, and a failed RemoveAll must not fail the test.
	profile, err := os.MkdirTemp("", "clinimg-e2e-chromium-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(profile) })
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithErrorf(quietErrorf(t)))
	if err := chromedp.Run(bctx); err != nil { // starts the browser
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	return &browser{t: t, ctx: bctx}
}

// quietErrorf logs chromedp's internal errors except the events this
// cdproto version does not know yet (newer Chromium sends more).
func quietErrorf(t *testing.T) func(string, ...any) {
	return func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if strings.Contains(msg, "unhandled node event") || strings.Contains(msg, "unhandled page event") {
			return
		}
		t.Logf("chromedp: %s", msg)
	}
}

// page is one tab: the desktop widget or the phone page.
type page struct {
	t    *testing.T
	name string
	ctx  context.Context

	mu      sync.Mutex
	console []string // every console message, for the leak check
	errors  []string // console errors and uncaught exceptions
	fail    func(method, url string) bool
	failed  int // requests failed by fail
	hold    func(method, url string) bool
	held    []fetch.RequestID // requests hold keeps waiting, until release
	fetchOn bool              // request interception is enabled
}

// viewport sizes: a desktop browser, the narrow side panel, a mid-range phone.
var (
	desktopView = [2]int64{1200, 860}
	panelView   = [2]int64{380, 860}
	phoneView   = [2]int64{390, 844}
)

func (b *browser) page(name string, size [2]int64, mobile bool) *page {
	b.t.Helper()
	// Each screen gets a window of its own: a background tab is hidden and
	// throttled, which neither a desktop monitor nor a phone in hand is.
	var id target.ID
	if err := chromedp.Run(b.ctx, chromedp.ActionFunc(func(ctx context.Context) error {
		var err error
		id, err = target.CreateTarget("about:blank").WithNewWindow(true).Do(cdp.WithExecutor(ctx, chromedp.FromContext(ctx).Browser))
		return err
	})); err != nil {
		b.t.Fatalf("%s: new window: %v", name, err)
	}
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithTargetID(id))
	b.t.Cleanup(cancel)
	p := &page{t: b.t, name: name, ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var parts []string
			for _, a := range e.Args {
				if a.Value != nil {
					parts = append(parts, string(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			msg := fmt.Sprintf("%s: %s", e.Type, strings.Join(parts, " "))
			p.mu.Lock()
			p.console = append(p.console, msg)
			if e.Type == runtime.APITypeError || e.Type == runtime.APITypeAssert {
				p.errors = append(p.errors, msg)
			}
			p.mu.Unlock()
		case *cdplog.EventEntryAdded:
			// Network errors are expected here (a 404 before any session, the
			// failures the tests inject); anything else the browser reports
			// as an error (CSP, JavaScript, security) counts.
			if e.Entry.Level == cdplog.LevelError && e.Entry.Source != cdplog.SourceNetwork {
				p.mu.Lock()
				p.errors = append(p.errors, fmt.Sprintf("browser %s: %s (%s)", e.Entry.Source, e.Entry.Text, e.Entry.URL))
				p.mu.Unlock()
			}
		case *fetch.EventRequestPaused:
			p.mu.Lock()
			drop := p.fail != nil && p.fail(e.Request.Method, e.Request.URL)
			if drop {
				p.failed++
			}
			wait := !drop && p.hold != nil && p.hold(e.Request.Method, e.Request.URL)
			if wait {
				p.held = append(p.held, e.RequestID)
			}
			p.mu.Unlock()
			if wait {
				return
			}
			go func() {
				var act chromedp.Action = fetch.ContinueRequest(e.RequestID)
				if drop {
					act = fetch.FailRequest(e.RequestID, network.ErrorReasonConnectionReset)
				}
				_ = chromedp.Run(ctx, act)
			}()
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			p.mu.Lock()
			p.errors = append(p.errors, fmt.Sprintf("exception: %s (%s:%d)", msg, d.URL, d.LineNumber))
			p.mu.Unlock()
		}
	})
	em := emulation.SetDeviceMetricsOverride(size[0], size[1], 1, mobile)
	actions := []chromedp.Action{runtime.Enable(), cdplog.Enable(), em}
	if mobile {
		actions = append(actions, emulation.SetTouchEmulationEnabled(true),
			emulation.SetUserAgentOverride("Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36"))
	}
	if err := chromedp.Run(ctx, actions...); err != nil {
		b.t.Fatalf("%s: open tab: %v", name, err)
	}
	return p
}

// run runs actions, failing the test on error.
func (p *page) run(what string, actions ...chromedp.Action) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		p.shot("failed-" + slug(what))
		p.t.Fatalf("%s: %s: %v", p.name, what, err)
	}
}

func (p *page) navigate(url string) {
	p.t.Helper()
	p.run("open page", chromedp.Navigate(url))
}

// waitJS polls a JavaScript expression until it is truthy.
func (p *page) waitJS(d time.Duration, what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, d)
	defer cancel()
	var ok bool
	if err := chromedp.Run(ctx, chromedp.Poll(expr, &ok, chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		p.shot("timeout-" + slug(what))
		var body string
		_ = chromedp.Run(p.ctx, chromedp.Evaluate(`document.body.innerText.slice(0, 600).replace(/\s+/g, ' ') + ' | imgs: ' + [...document.querySelectorAll('img')].map(i => (i.src || '').slice(0, 60) + ' hidden=' + i.hidden + ' w=' + i.naturalWidth + ' complete=' + i.complete).join('; ')`, &body))
		p.t.Fatalf("%s: waiting for %s (%s): %v\npage text:\n%s", p.name, what, expr, err, body)
	}
}

// eval evaluates expr into out.
func (p *page) eval(expr string, out any) {
	p.t.Helper()
	p.run("eval "+expr, chromedp.Evaluate(expr, out))
}

// evalAsync evaluates expr, awaiting the Promise it returns, into out.
func (p *page) evalAsync(expr string, out any) {
	p.t.Helper()
	p.run("eval "+expr, chromedp.Evaluate(expr, out, func(e *runtime.EvaluateParams) *runtime.EvaluateParams {
		return e.WithAwaitPromise(true)
	}))
}

// all lists the text of every element sel matches.
func (p *page) all(sel string) []string {
	p.t.Helper()
	var out []string
	p.eval(fmt.Sprintf(`[...document.querySelectorAll(%q)].map(e => e.innerText)`, sel), &out)
	return out
}

func (p *page) text(sel string) string {
	p.t.Helper()
	var s string
	p.eval(fmt.Sprintf(`(document.querySelector(%q) || {}).innerText || ''`, sel), &s)
	return s
}

// click scrolls the element to the middle of the screen, as a person would
// before tapping it, and clicks it.
func (p *page) click(sel string) {
	p.t.Helper()
	p.run("click "+sel,
		chromedp.WaitVisible(sel, chromedp.ByQuery),
		chromedp.Evaluate(fmt.Sprintf(`document.querySelector(%q).scrollIntoView({block: 'center'})`, sel), nil),
		chromedp.Click(sel, chromedp.ByQuery, chromedp.NodeVisible))
}

// consent records verbal consent for the clinical record on the page's
// consent panel, as a GP does before committing (CONSENT_REQUIRED is on).
func (p *page) consent() {
	p.t.Helper()
	p.waitJS(15*time.Second, "the consent form", `!!document.querySelector('[data-test=consent-method-verbal]') && !document.querySelector('[data-test=consent-edit]').hidden`)
	p.run("open the consent form", chromedp.Evaluate(`document.querySelector('[data-test=consent-edit]').open = true`, nil))
	p.click(`[data-test=consent-method-verbal]`)
	p.click(`[data-test=consent-save]`)
	p.waitJS(15*time.Second, "consent recorded", `document.querySelector('[data-test=consent]').dataset.state === 'recorded'`)
}

// dropFiles drags files from the desktop onto the element, as a person
// dropping photos from a file manager does.
func (p *page) dropFiles(sel string, paths ...string) {
	p.t.Helper()
	var box struct{ X, Y float64 }
	p.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.scrollIntoView({block: 'center'});
		const r = e.getBoundingClientRect(); return {X: r.x + r.width / 2, Y: r.y + r.height / 2}; })()`, sel), &box)
	data := &input.DragData{Items: []*input.DragDataItem{}, Files: paths, DragOperationsMask: 1}
	p.run("drop files",
		input.DispatchDragEvent(input.DragEnter, box.X, box.Y, data),
		input.DispatchDragEvent(input.DragOver, box.X, box.Y, data),
		input.DispatchDragEvent(input.Drop, box.X, box.Y, data))
}

// typeInto focuses the element, types text as keystrokes and tabs away.
// The keys go to the focused element (chromedp's SendKeys would read the
// node's attributes while the page changes them, a race in chromedp).
func (p *page) typeInto(sel, text string) {
	p.t.Helper()
	p.run("type into "+sel,
		chromedp.Evaluate(fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.scrollIntoView({block: 'center'}); e.focus(); return document.activeElement === e; })()`, sel), nil),
		chromedp.KeyEvent(text),
		chromedp.KeyEvent(kb.Tab))
}

// files hands files to a file input, as picking them in the camera or file
// dialog does.
func (p *page) files(sel string, paths ...string) {
	p.t.Helper()
	p.run("set files", chromedp.SetUploadFiles(sel, paths, chromedp.ByQuery))
}

var shotSeq struct {
	sync.Mutex
	n map[string]int
}

// nextShot numbers a test's screenshots in order.
func nextShot(t *testing.T) int {
	shotSeq.Lock()
	defer shotSeq.Unlock()
	if shotSeq.n == nil {
		shotSeq.n = map[string]int{}
	}
	shotSeq.n[t.Name()]++
	if shotSeq.n[t.Name()] == 1 {
		// the test's screenshots are this run's only, none left from an earlier one
		os.RemoveAll(filepath.Join(artifactsDir(), slug(t.Name())))
	}
	return shotSeq.n[t.Name()]
}

// shot saves a PNG of what this screen shows (the viewport) under the
// artifacts directory: <test>/<nn>-<step>-<screen>.png.
func (p *page) shot(step string) string {
	p.t.Helper()
	return p.shotAs(nextShot(p.t), step)
}

func (p *page) shotAs(n int, step string) string {
	p.t.Helper()
	var buf []byte
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, chromedp.CaptureScreenshot(&buf)); err != nil {
		p.t.Logf("%s: screenshot %s: %v", p.name, step, err)
		return ""
	}
	dir := filepath.Join(artifactsDir(), slug(p.t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%02d-%s-%s.png", n, slug(step), p.name))
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		p.t.Fatal(err)
	}
	return path
}

var tokenLike = regexp.MustCompile(`ph_[A-Za-z0-9_-]{8,}|X-Amz-Signature|accessToken=|eyJ[A-Za-z0-9_-]{10,}\.`)

// checkConsole fails the test on any console error or uncaught exception,
// and on anything token-like written to the console.
func (p *page) checkConsole() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.errors {
		p.t.Errorf("%s: console error: %s", p.name, e)
	}
	for _, m := range p.console {
		if tokenLike.MatchString(m) {
			p.t.Errorf("%s: console shows a token or presigned URL: %.120s", p.name, m)
		}
	}
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]+`)

func slug(s string) string {
	return strings.Trim(nonWord.ReplaceAllString(strings.ToLower(s), "-"), "-")
}

// artifactsDir is $CLINIMG_ARTIFACTS, else artifacts/e2e at the repository
// root (gitignored), where CI collects the screenshots.
func artifactsDir() string {
	if d := os.Getenv("CLINIMG_ARTIFACTS"); d != "" {
		return d
	}
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return filepath.Join(d, "artifacts", "e2e")
		}
		if filepath.Dir(d) == d {
			return filepath.Join(dir, "artifacts") // outside the repository
		}
	}
}

// testdata is the shared photo set (../shared/testdata from the repository).
func testdata(t *testing.T, name string) string {
	return filepath.Join(findUp(t, filepath.Join("shared", "testdata")), "shared", "testdata", name)
}

// findUp returns the nearest directory, from the working directory up, that
// contains rel.
func findUp(t *testing.T, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, rel)); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no %s above the working directory", rel)
		}
		dir = parent
	}
}

// failedCount is how many requests interceptFail has failed so far.
func (p *page) failedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// interceptFail makes this tab's network fail every request rule picks (as
// a dropped connection), until called again; nil lets everything through.
func (p *page) interceptFail(rule func(method, url string) bool) {
	p.t.Helper()
	p.mu.Lock()
	p.fail = rule
	p.mu.Unlock()
	if rule != nil {
		p.intercept()
	}
}

// intercept routes every request of this tab through Fetch.requestPaused
// (once), for interceptFail and holdRequests.
func (p *page) intercept() {
	p.t.Helper()
	p.mu.Lock()
	first := !p.fetchOn
	p.fetchOn = true
	p.mu.Unlock()
	if first {
		p.run("intercept", fetch.Enable().WithPatterns([]*fetch.RequestPattern{{URLPattern: "*"}}))
	}
}

// holdRequests keeps every request rule picks waiting, as a slow network
// does, until release.
func (p *page) holdRequests(rule func(method, url string) bool) {
	p.t.Helper()
	p.mu.Lock()
	p.hold = rule
	p.mu.Unlock()
	p.intercept()
}

// heldCount is how many requests holdRequests keeps waiting.
func (p *page) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

// release lets the held requests go on, and holds no more.
func (p *page) release() {
	p.t.Helper()
	p.mu.Lock()
	held := p.held
	p.held, p.hold = nil, nil
	p.mu.Unlock()
	for _, id := range held {
		p.run("release a held request", fetch.ContinueRequest(id))
	}
}
