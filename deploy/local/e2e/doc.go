// Package e2e drives the two pages a GP uses, the desktop widget and the phone
// capture page, in headless Chromium (Debian's chromium, through chromedp)
// against the whole system started in-process by deploy/local, for the notes'
// manual scenarios: the happy path with real photos, the phone committing,
// the desktop opened late or reloaded, the realtime stream cut, uploads that
// fail and resume, the 50-photo cap, a failed commit and its retry, QR token
// screens, another patient's photos, realtime token renewal.
//
// Every step leaves a PNG of both screens under $CLINIMG_ARTIFACTS (default
// artifacts/e2e at the repository root), plus the stack's logs; every test
// fails on a console error, an uncaught exception, a browser-reported error
// other than a network one (CSP, security, JavaScript), or a token or
// presigned URL written to the console.
//
//	cd deploy/local && go test -race ./e2e
//
// CHROMIUM overrides the browser's path. Faults are injected in the browser
// (DevTools Fetch interception) and on the wire (a TCP proxy in front of the
// relay); see NEEDS.md.
package e2e
