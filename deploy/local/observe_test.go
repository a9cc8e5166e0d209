package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinicalimages/clinimg/dev/testenv"
	"github.com/clinicalimages/clinimg/pkg/events"
	"github.com/clinicalimages/clinimg/pkg/ops"
)

// services are the four services whose metrics and logs are checked.
var services = []string{"api", "thumbnailer", "committer", "relay"}

// observed is one run of the scripted session on a fresh stack: what the
// client held (tokens, URLs, ids) and what the services logged and counted.
type observed struct {
	st         *Stack
	regs       map[string]*prometheus.Registry
	logs       *testenv.Logs
	user       string
	patient    string
	note       string
	traceID    string
	imageIDs   []string
	secrets    map[string]string // what must never reach a log, by what it is
	commitBody map[string]any
}

// TestObserveScriptedSession runs one capture session over HTTP as the two
// pages do (desktop starts, phone pairs, three real photos, commit) and
// then checks the services' metrics and logs.
func TestObserveScriptedSession(t *testing.T) {
	o := runSession(t)

	t.Run("metrics", func(t *testing.T) { o.checkMetrics(t) })
	t.Run("correlation", func(t *testing.T) { o.checkCorrelation(t) })
	t.Run("no secrets in logs", func(t *testing.T) { o.checkNoSecrets(t) })
	t.Run("trace context in NATS headers", func(t *testing.T) { o.checkTraceHeaders(t) })
}

func runSession(t *testing.T) *observed {
	t.Helper()
	log, logs := testenv.Logger(t)
	regs := map[string]*prometheus.Registry{}
	for _, s := range services {
		regs[s] = ops.Registry()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	st, err := Start(ctx, Options{Logger: log, Registries: regs, NATSURL: testenv.StartNATS(t).URL})
	if err != nil {
		t.Fatalf("start the stack: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("stack: %v", err)
		}
	})

	id := testenv.ID()
	o := &observed{
		st: st, regs: regs, logs: logs,
		user: "user_obs" + id[:8], patient: "ZZZ" + strings.ToUpper(id[:4]),
		note:    "Pigmented lesion left forearm, irregular border " + id,
		traceID: "4bf92f3577b34da6a3ce929d" + id[:8],
		secrets: map[string]string{},
	}
	// One trace for the whole capture, as a client with tracing would send.
	traceparent := "00-" + o.traceID + "-00f067aa0ba902b7-01"

	desktop, err := st.DesktopToken(o.user)
	if err != nil {
		t.Fatal(err)
	}
	o.secrets["desktop JWT"] = desktop
	c := &client{t: t, base: st.URL, traceparent: traceparent}

	// Desktop: start the session; phone: exchange the QR token.
	var started struct {
		SessionToken string `json:"sessionToken"`
	}
	c.call("POST", "/api/session-tokens", desktop, map[string]any{"patientId": o.patient, "encounterId": "enc_" + id[:6]}, 200, &started)
	o.secrets["QR session token"] = started.SessionToken
	var paired struct {
		PhoneToken string `json:"phoneToken"`
	}
	c.call("GET", "/api/session-tokens/"+started.SessionToken, "", nil, 200, &paired)
	if !strings.HasPrefix(paired.PhoneToken, "ph_") {
		t.Fatalf("phone token %q", paired.PhoneToken)
	}
	o.secrets["phone token"] = paired.PhoneToken
	var rt struct {
		Token string `json:"token"`
	}
	c.call("GET", "/api/users/"+o.user+"/realtime-token", desktop, nil, 200, &rt)
	o.secrets["realtime token"] = rt.Token

	// Phone: three real photos, presigned, uploaded, recorded with a note.
	dir := sharedTestdata(t)
	for i, name := range []string{"photo-1920.jpg", "photo-12mp-orient6.jpg", "exif-orientation/Landscape_6.jpg"} {
		body, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var ps struct {
			UploadURL string            `json:"uploadUrl"`
			S3Key     string            `json:"s3Key"`
			ImageID   string            `json:"imageId"`
			Headers   map[string]string `json:"headers"`
		}
		c.call("POST", "/api/users/"+o.user+"/presigned-url", paired.PhoneToken,
			map[string]any{"contentType": "image/jpeg", "contentLength": len(body), "fileName": filepath.Base(name)}, 200, &ps)
		o.secrets[fmt.Sprintf("upload URL %d", i)] = ps.UploadURL
		c.put(ps.UploadURL, ps.Headers, body)
		c.call("POST", "/api/users/"+o.user+"/images", paired.PhoneToken, map[string]any{
			"imageId": ps.ImageID, "s3Key": ps.S3Key, "source": "mobile",
			"metadata": map[string]any{"bodySite": "14975008", "bodySiteDisplay": "Forearm", "laterality": "left", "notes": o.note},
		}, 200, nil)
		o.imageIDs = append(o.imageIDs, ps.ImageID)
	}

	// Desktop: wait for the previews, read the session (presigned GETs),
	// commit.
	var sess struct {
		Images []struct {
			Status     string `json:"status"`
			S3URL      string `json:"s3Url"`
			PreviewURL string `json:"previewUrl"`
		} `json:"images"`
	}
	testenv.Eventually(t, 60*time.Second, "three photos ready", func() bool {
		c.call("GET", "/api/users/"+o.user+"/session", desktop, nil, 200, &sess)
		ready := 0
		for _, im := range sess.Images {
			if im.Status == "ready" {
				ready++
			}
		}
		return ready == 3
	})
	for i, im := range sess.Images {
		o.secrets[fmt.Sprintf("view URL %d", i)] = im.S3URL
		o.secrets[fmt.Sprintf("preview URL %d", i)] = im.PreviewURL
	}
	c.call("PUT", "/api/users/"+o.user+"/consent", desktop, map[string]any{"method": "verbal"}, 200, nil)
	c.call("POST", "/api/users/"+o.user+"/commit", desktop, nil, 200, &o.commitBody)
	if o.commitBody["success"] != true {
		t.Fatalf("commit: %v", o.commitBody)
	}
	return o
}

// checkMetrics waits until the asynchronous work has been counted, then
// compares every counter the session must have moved.
func (o *observed) checkMetrics(t *testing.T) {
	type series struct {
		service string
		name    string
		labels  map[string]string
	}
	l := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	routes := "/api/users/:userId"
	// On a loaded machine the commit may tell the screens ALEX is slow
	// (one more commit.progress); the committer counts each time it does.
	progress := 3 + sample(t, o.regs["committer"], "clinimg_committer_retries_total", l("reason", "alex_slow"))
	want := []struct {
		series
		n float64
	}{
		{series{"api", "clinimg_api_http_requests_total", l("method", "POST", "route", "/api/session-tokens", "status", "200")}, 1},
		{series{"api", "clinimg_api_http_requests_total", l("method", "GET", "route", "/api/session-tokens/:token", "status", "200")}, 1},
		{series{"api", "clinimg_api_http_requests_total", l("method", "POST", "route", routes+"/presigned-url", "status", "200")}, 3},
		{series{"api", "clinimg_api_http_requests_total", l("method", "POST", "route", routes+"/images", "status", "200")}, 3},
		{series{"api", "clinimg_api_http_requests_total", l("method", "POST", "route", routes+"/commit", "status", "200")}, 1},
		{series{"api", "clinimg_api_images_recorded_total", l("outcome", "added")}, 3},
		{series{"api", "clinimg_api_commits_total", l("answer", "succeeded")}, 1},
		{series{"thumbnailer", "clinimg_thumbnailer_previews_total", nil}, 3},
		{series{"thumbnailer", "clinimg_thumbnailer_rejected_total", nil}, 0},
		{series{"thumbnailer", "clinimg_thumbnailer_messages_total", l("outcome", "ack")}, 3},
		{series{"thumbnailer", "clinimg_consumer_pending", l("consumer", "thumbnailer")}, 0},
		{series{"thumbnailer", "clinimg_consumer_ack_pending", l("consumer", "thumbnailer")}, 0},
		{series{"thumbnailer", "clinimg_consumer_delivered", l("consumer", "thumbnailer")}, 3},
		{series{"committer", "clinimg_committer_commits_total", l("outcome", "succeeded")}, 1},
		{series{"committer", "clinimg_committer_commit_duration_seconds", l("outcome", "succeeded")}, 1},
		{series{"committer", "clinimg_committer_photos_total", l("how", "created")}, 3},
		{series{"committer", "clinimg_committer_alex_requests_total", l("op", "create", "status", "201")}, 3},
		{series{"committer", "clinimg_events_consumed_total", l("type", "commit.requested", "outcome", "ack")}, 1},
		{series{"committer", "clinimg_consumer_delivered", l("consumer", "committer")}, 1},
		{series{"relay", "relay_events_relayed_total", l("type", "image.uploaded")}, 3},
		{series{"relay", "relay_events_relayed_total", l("type", "image.processed")}, 3},
		{series{"relay", "relay_events_relayed_total", l("type", "commit.progress")}, progress},
		{series{"relay", "relay_events_relayed_total", l("type", "commit.succeeded")}, 1},
		// Any service's outbox publisher may move any entry (they share the
		// outbox), so these are summed over the services.
		{series{"*", "clinimg_events_published_total", l("type", "session.started")}, 1},
		{series{"*", "clinimg_events_published_total", l("type", "session.paired")}, 1},
		{series{"*", "clinimg_events_published_total", l("type", "image.uploaded")}, 3},
		{series{"*", "clinimg_events_published_total", l("type", "image.processed")}, 3},
		{series{"*", "clinimg_events_published_total", l("type", "commit.requested")}, 1},
		{series{"*", "clinimg_events_published_total", l("type", "commit.progress")}, progress},
		{series{"*", "clinimg_events_published_total", l("type", "commit.succeeded")}, 1},
		{series{"*", "clinimg_outbox_depth", nil}, 0},
	}
	read := func(s series) float64 {
		if s.service != "*" {
			return sample(t, o.regs[s.service], s.name, s.labels)
		}
		var n float64
		for _, svc := range services {
			n += sample(t, o.regs[svc], s.name, s.labels)
		}
		return n
	}
	got := func() []string {
		var out []string
		for _, w := range want {
			out = append(out, fmt.Sprintf("%s %s%v = %g", w.service, w.name, w.labels, read(w.series)))
		}
		return out
	}
	var wantLines []string
	for _, w := range want {
		wantLines = append(wantLines, fmt.Sprintf("%s %s%v = %g", w.service, w.name, w.labels, w.n))
	}
	// The relay and the outbox publishers finish a little after the commit
	// answer; wait for them, then compare (a counter past its mark fails).
	poll(20*time.Second, func() bool { return cmp.Equal(wantLines, got()) })
	if diff := cmp.Diff(wantLines, got()); diff != "" {
		t.Errorf("metrics after one session of three photos and a commit (-want +got):\n%s", diff)
	}

	// The same counters are what a scrape of the API's /metrics sees, on
	// its operations port only.
	if res, err := http.Get(o.st.URL + "/metrics"); err != nil || res.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the public port: %v %v, want 404", err, res)
	} else {
		res.Body.Close()
	}
	res, err := http.Get(o.st.APIOps + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	text, _ := io.ReadAll(res.Body)
	for _, line := range []string{`clinimg_api_images_recorded_total{outcome="added"} 3`, `clinimg_api_commits_total{answer="succeeded"} 1`} {
		if !strings.Contains(string(text), line+"\n") {
			t.Errorf("GET /metrics lacks %q", line)
		}
	}
}

// poll checks cond every 20 ms until it holds or d passes, and says which;
// the caller then reports what it saw.
func poll(d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			return cond()
		}
	}
	return true
}

// sample sums the values (counters, gauges) or sample counts (histograms)
// of every series of name whose labels include labels.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				n += m.Counter.GetValue()
			case m.Gauge != nil:
				n += m.Gauge.GetValue()
			case m.Histogram != nil:
				n += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return n
}

// logLines parses every JSON log line written so far.
func (o *observed) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, raw := range o.logs.Lines() {
		for _, line := range strings.Split(strings.TrimSpace(raw), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Errorf("log line is not JSON: %q", line)
				continue
			}
			m["_raw"] = line
			out = append(out, m)
		}
	}
	return out
}

// checkCorrelation follows the first photo by its image id, and the session
// by its trace id, through every service's log.
func (o *observed) checkCorrelation(t *testing.T) {
	img := o.imageIDs[0]
	var got map[string][]string
	seen := func() map[string][]string {
		out := map[string][]string{}
		for _, m := range o.logLines(t) {
			svc, _ := m["service"].(string)
			msg, _ := m["msg"].(string)
			if m["image_id"] == img {
				out[svc] = append(out[svc], msg)
			}
			if m["trace_id"] == o.traceID {
				out[svc+" trace"] = append(out[svc+" trace"], msg)
			}
		}
		return out
	}
	// The relay logs the last events a moment after the commit answer.
	poll(10*time.Second, func() bool {
		got = seen()
		for _, s := range []string{"api", "thumbnailer", "committer", "relay", "thumbnailer trace", "committer trace", "relay trace"} {
			if len(got[s]) == 0 {
				return false
			}
		}
		return true
	})
	has := func(svc, msg string) bool {
		for _, m := range got[svc] {
			if m == msg {
				return true
			}
		}
		return false
	}
	// What each service logs about the photo, by stable message.
	wantMsgs := []struct{ svc, msg string }{
		{"api", "image.recorded"},              // the API recorded it
		{"thumbnailer", "consume.acked"},       // image.uploaded handled
		{"committer", "photo.committed"},       // its Media written to ALEX
		{"relay", "relay.event"},               // its events sent to the screens
		{"thumbnailer trace", "consume.acked"}, // the request's trace reached the thumbnailer
		{"committer trace", "consume.acked"},   // ... the committer
		{"relay trace", "relay.event"},         // ... and the relay
	}
	for _, w := range wantMsgs {
		if !has(w.svc, w.msg) {
			t.Errorf("no %q line in the %s log for image %s (lines with it: %v)", w.msg, w.svc, img, got[w.svc])
		}
	}
}

// checkNoSecrets scans every log line for the tokens, presigned URLs,
// patient id and clinical note the session used.
func (o *observed) checkNoSecrets(t *testing.T) {
	lines := o.logLines(t)
	if len(lines) < 50 {
		t.Fatalf("only %d log lines: the logger is not receiving the services' logs", len(lines))
	}
	forbidden := map[string]string{"clinical note": o.note, "patient id": o.patient,
		"SigV4 signature": "X-Amz-Signature", "SigV4 credential": "X-Amz-Credential"}
	for what, v := range o.secrets {
		if v == "" {
			t.Fatalf("%s is empty: the session did not get it", what)
		}
		forbidden[what] = v
		// A URL without its query is fine to log; its signature is not.
		if i := strings.IndexByte(v, '?'); i > 0 {
			forbidden[what] = v[i+1:]
		}
	}
	var kinds []string
	for what := range forbidden {
		kinds = append(kinds, what)
	}
	sort.Strings(kinds)
	for _, m := range lines {
		line := m["_raw"].(string)
		for _, what := range kinds {
			if strings.Contains(line, forbidden[what]) {
				t.Errorf("a %s log line holds the %s: %.200s", m["service"], what, line)
			}
		}
	}
}

// checkTraceHeaders reads the stream: the photo's image.uploaded carries
// the request's trace in its `traceparent` header, and the image.processed
// the thumbnailer caused is on the same trace.
func (o *observed) checkTraceHeaders(t *testing.T) {
	nc, err := nats.Connect(o.st.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := events.DefaultNames
	cons, err := js.OrderedConsumer(ctx, names.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{names.Subject(events.ImageUploaded, o.user), names.Subject(events.ImageProcessed, o.user)},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	batch, err := cons.FetchNoWait(100)
	if err != nil {
		t.Fatal(err)
	}
	for msg := range batch.Messages() {
		ev, err := events.Decode(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		hdr := msg.Headers().Get("traceparent")
		if hdr != ev.TraceParent {
			t.Errorf("%s: header traceparent %q, envelope %q", ev.Type, hdr, ev.TraceParent)
		}
		if events.TraceID(hdr) == o.traceID {
			got[string(ev.Type)]++
		}
	}
	if diff := cmp.Diff(map[string]int{"image.uploaded": 3, "image.processed": 3}, got); diff != "" {
		t.Errorf("events on the session's trace (-want +got):\n%s", diff)
	}
}

// client calls the API as the pages do, with the session's traceparent.
type client struct {
	t           *testing.T
	base        string
	traceparent string
}

func (c *client) call(method, path, token string, body any, wantStatus int, out any, headers ...string) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.traceparent != "" {
		req.Header.Set("traceparent", c.traceparent)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != wantStatus {
		c.t.Fatalf("%s %s: %d %s, want %d", method, path, res.StatusCode, raw, wantStatus)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func (c *client) put(url string, headers map[string]string, body []byte) {
	c.t.Helper()
	req, err := http.NewRequest("PUT", url, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("PUT photo: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		c.t.Fatalf("PUT photo: %s", res.Status)
	}
}

// sharedTestdata finds the shared photo set (shared/testdata) in a parent
// directory of the repository.
func sharedTestdata(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", "testdata")
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("shared/testdata not found above the repository")
		}
		dir = parent
	}
}
