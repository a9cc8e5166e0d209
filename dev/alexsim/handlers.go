package alexsim

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/clinicalimages/clinimg/pkg/fhir"
)

var eventStatus = map[string]bool{
	"preparation": true, "in-progress": true, "not-done": true, "on-hold": true,
	"stopped": true, "completed": true, "entered-in-error": true, "unknown": true,
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Hijack lets a fault drop the connection.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	lat := s.latency
	s.mu.Unlock()
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	rec := Request{Method: r.Method, Path: r.URL.Path, CorrelationID: r.Header.Get("mt-correlationid"),
		FacilityID: r.Header.Get("mt-facilityid"), AppID: r.Header.Get("mt-appid")}
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		rec.Status = sw.status
		s.record(rec)
		s.opt.Logger.Info("alexsim.request", "method", rec.Method, "path", rec.Path, "status", rec.Status,
			"mt_correlationid", rec.CorrelationID, "fault", rec.Fault)
	}()
	switch {
	case r.URL.Path == TokenPath:
		if f := s.match(r.Method, TokenPath, "", false); f != nil {
			rec.Fault = string(f.Kind)
			if done, _ := s.apply(sw, r, f); done {
				return
			}
		}
		s.token(sw, r)
	case r.URL.Path == "/_sim/media" && r.Method == http.MethodGet:
		s.inspect(sw)
	case r.URL.Path == BasePath || strings.HasPrefix(r.URL.Path, BasePath+"/"):
		s.fhirAPI(sw, r, &rec)
	default:
		writePlain(sw, http.StatusNotFound, "Resource not found")
	}
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writePlain(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "form body expected"})
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type", "error_description": "only client_credentials"})
		return
	}
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	s.mu.Lock()
	want, ok := s.clients[id]
	s.mu.Unlock()
	if !ok || want != secret || id == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "client credentials not valid"})
		return
	}
	if s.opt.Scope != "*" && r.PostForm.Get("scope") != s.opt.Scope {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_scope", "error_description": "scope not granted"})
		return
	}
	tok := "sim_" + s.newID() + s.newID()
	s.mu.Lock()
	s.tokens[tok] = s.opt.Now().Add(s.opt.TokenTTL)
	s.mu.Unlock()
	secs := int(s.opt.TokenTTL / time.Second)
	writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok})
}

func (s *Server) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && s.opt.Now().Before(exp)
}

func (s *Server) fhirAPI(w *statusWriter, r *http.Request, rec *Request) {
	path := strings.TrimPrefix(r.URL.Path, BasePath)
	var body []byte
	if r.Body != nil && (r.Method == http.MethodPost || r.Method == http.MethodPatch || r.Method == http.MethodPut) {
		b, err := readBody(r, s.opt.MaxBody+1)
		if err != nil {
			return // the client went away
		}
		if int64(len(b)) > s.opt.MaxBody {
			writeOutcome(w, http.StatusRequestEntityTooLarge, "too-costly", "request body too large")
			return
		}
		body = b
	}
	var v validated
	if r.Method == http.MethodPost && path == "/Media" {
		// Decode once: the photo makes the body large.
		v.m, v.status, v.code, v.msg = validateMedia(body)
		rec.Identifier = firstIdentifier(v.m).Value
	}
	s.mu.Lock()
	pick := s.hooks.Fault
	s.mu.Unlock()
	var after *Fault // strikes once the Media is stored
	var f *Fault
	if pick != nil {
		f = pick(r.Method, path, rec.Identifier)
	} else {
		f = s.match(r.Method, path, rec.Identifier, false)
	}
	if f != nil && f.AfterStore && r.Method == http.MethodPost && path == "/Media" {
		after, f = f, nil
	}
	if f != nil {
		rec.Fault = string(f.Kind)
		if done, _ := s.apply(w, r, f); done {
			return
		}
	}
	if !s.authorized(r) {
		writePlain(w, http.StatusUnauthorized, "Unauthorized. Access token is missing or invalid.")
		return
	}
	s.mu.Lock()
	facOK := s.facilities[r.Header.Get("mt-facilityid")]
	caps := s.caps
	s.mu.Unlock()
	if !facOK {
		writePlain(w, http.StatusForbidden, "Practice Facility not found")
		return
	}
	base := baseURL(r)
	switch {
	case r.Method == http.MethodPost && path == "/Media":
		s.createMedia(w, r, body, v, caps, base, rec, after)
	case r.Method == http.MethodGet && path == "/Media":
		s.searchMedia(w, r, caps, base)
	case strings.HasPrefix(path, "/Media/") && !strings.Contains(path[len("/Media/"):], "/"):
		id := path[len("/Media/"):]
		switch r.Method {
		case http.MethodGet:
			s.readMedia(w, id)
		case http.MethodDelete:
			s.deleteMedia(w, id, caps)
		case http.MethodPatch:
			s.patchMedia(w, r, id, body, caps)
		default:
			writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "operation not supported")
		}
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/Patient/"):
		s.readPatient(w, path[len("/Patient/"):])
	case r.Method == http.MethodPost && (path == "" || path == "/"):
		s.transaction(w, r, body, caps, base)
	default:
		writePlain(w, http.StatusNotFound, "Resource not found")
	}
}

func firstIdentifier(m fhir.Media) fhir.Identifier {
	if len(m.Identifier) > 0 {
		return m.Identifier[0]
	}
	return fhir.Identifier{}
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + BasePath
}

// validateMedia checks raw as an R4 Media the way a strict server does. It
// returns the HTTP status, issue code and message of the first problem.
func validateMedia(raw []byte) (fhir.Media, int, string, string) {
	m, photo, status, code, msg := decodeMedia(raw)
	if status != 0 {
		return m, status, code, msg
	}
	switch {
	case m.ResourceType != "Media":
		return m, http.StatusBadRequest, "structure", fmt.Sprintf("resourceType %q is not Media", m.ResourceType)
	case m.Status == "":
		return m, http.StatusBadRequest, "required", "Media.status is required"
	case !eventStatus[m.Status]:
		return m, http.StatusBadRequest, "code-invalid", fmt.Sprintf("Media.status %q is not an event-status code", m.Status)
	case m.Content == nil:
		return m, http.StatusBadRequest, "required", "Media.content is required"
	case m.Content.Data != "" && m.Content.ContentType == "":
		return m, http.StatusBadRequest, "invariant", "att-1: Attachment.data requires contentType"
	case m.Content.Data == "" && m.Content.URL == "":
		return m, http.StatusBadRequest, "required", "Media.content carries neither data nor url"
	case m.Subject != nil && !strings.HasPrefix(m.Subject.Reference, "Patient/"):
		return m, http.StatusBadRequest, "invalid", "Media.subject must reference a Patient"
	case m.Encounter != nil && !strings.HasPrefix(m.Encounter.Reference, "Encounter/"):
		return m, http.StatusBadRequest, "invalid", "Media.encounter must reference an Encounter"
	}
	if m.Content.Data != "" {
		data := photo
		if data == nil {
			var err error
			if data, err = base64.StdEncoding.DecodeString(m.Content.Data); err != nil {
				return m, http.StatusBadRequest, "value", "Media.content.data is not base64"
			}
		}
		if m.Content.Size != 0 && m.Content.Size != int64(len(data)) {
			return m, http.StatusBadRequest, "value", fmt.Sprintf("Media.content.size %d but data holds %d bytes", m.Content.Size, len(data))
		}
		if m.Content.Hash != "" {
			sum := sha1.Sum(data)
			if base64.StdEncoding.EncodeToString(sum[:]) != m.Content.Hash {
				return m, http.StatusBadRequest, "value", "Media.content.hash is not the SHA-1 of the data"
			}
		}
	}
	id := firstIdentifier(m)
	if strings.TrimSpace(id.Value) == "" {
		return m, http.StatusBadRequest, "business-rule", "The mandatory Identifier.value with the reference number is missing"
	}
	return m, 0, "", ""
}

// readBody reads up to limit bytes of r's body into one buffer sized by
// its Content-Length, as a photo's body is large and growing a buffer for
// it copied it over and over.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 && n < limit {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(io.LimitReader(r.Body, limit))
	return buf.Bytes(), err
}

// decodeMedia parses a POSTed Media strictly (no unknown fields, nothing
// after it). The photo's base64 is most of the body and encoding/json reads
// a long string slowly (about 20 ms a megabyte, the simulator's whole cost
// of a write), so a body whose content.data is plain base64 under a single
// "data" key is parsed without it and the data set afterwards: what is
// decoded is the same, as a string of base64 characters has no escapes.
// Anything else, and every error, goes the ordinary way. photo is the
// data decoded, when the cut decoded it (nil otherwise).
func decodeMedia(raw []byte) (m fhir.Media, photo []byte, status int, code, msg string) {
	if stripped, data, photo, ok := cutData(raw); ok {
		if m, err := decodeStrict(stripped); err == nil && m.Content != nil && m.Content.Data == "" {
			// Nothing writes to a body once read, so the string shares its
			// bytes: copying 1.4 MB of base64 a write cost as much as the
			// SHA-1 that checks it.
			m.Content.Data = unsafe.String(unsafe.SliceData(data), len(data))
			return m, photo, 0, "", ""
		}
	}
	m, err := decodeStrict(raw)
	if errors.Is(err, errTrailing) {
		return m, nil, http.StatusBadRequest, "structure", "trailing data after the resource"
	}
	if err != nil {
		return m, nil, http.StatusBadRequest, "structure", "Media is not valid R4 JSON: " + err.Error()
	}
	return m, nil, 0, "", ""
}

var errTrailing = errors.New("trailing data")

func decodeStrict(raw []byte) (fhir.Media, error) {
	var m fhir.Media
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, err
	}
	if dec.More() {
		return m, errTrailing
	}
	return m, nil
}

// cutData returns raw with the value of its only "data" key emptied, that
// value, and the bytes it decodes to, when it is a string of base64 alone
// (so its JSON text is its value). The decoder refuses every byte outside
// the alphabet but line breaks, which JSON refuses in a string: with no
// backslash and no line break found (memchr scans), a value that decodes
// holds nothing else, and checking it byte by byte cost as much as
// decoding it.
func cutData(raw []byte) (stripped, data, photo []byte, ok bool) {
	key := []byte(`"data":"`)
	i := bytes.Index(raw, key)
	if i < 0 || bytes.Count(raw, key) != 1 {
		return nil, nil, nil, false
	}
	start := i + len(key)
	end := bytes.IndexByte(raw[start:], '"')
	if end < 0 {
		return nil, nil, nil, false
	}
	data = raw[start : start+end]
	for _, c := range []byte{'\\', '\n', '\r'} {
		if bytes.IndexByte(data, c) >= 0 {
			return nil, nil, nil, false
		}
	}
	photo = make([]byte, base64.StdEncoding.DecodedLen(len(data)))
	n, err := base64.StdEncoding.Decode(photo, data)
	if err != nil {
		return nil, nil, nil, false
	}
	stripped = make([]byte, 0, len(raw)-len(data))
	stripped = append(append(stripped, raw[:start]...), raw[start+end:]...)
	return stripped, data, photo[:n], true
}

// validated is a POSTed Media and the first problem found in it.
type validated struct {
	m         fhir.Media
	status    int
	code, msg string
}

func (s *Server) createMedia(w *statusWriter, r *http.Request, body []byte, v validated, caps fhir.Capabilities, base string, rec *Request, after *Fault) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/fhir+json" {
		writeOutcome(w, http.StatusUnsupportedMediaType, "not-supported", "Content-Type must be application/fhir+json")
		return
	}
	if v.status != 0 {
		writeOutcome(w, v.status, v.code, v.msg)
		return
	}
	m := v.m
	ident := firstIdentifier(m)
	if inx := r.Header.Get("If-None-Exist"); inx != "" && caps.ConditionalCreate {
		sys, val, ok := parseIdentifierQuery(inx)
		if !ok {
			writeOutcome(w, http.StatusBadRequest, "invalid", "If-None-Exist supports identifier=system|value only")
			return
		}
		found := s.ByIdentifier(sys, val)
		switch len(found) {
		case 0:
		case 1:
			w.Header().Set("Location", fmt.Sprintf("%s/Media/%s/_history/%s", base, found[0].ID, found[0].VersionID))
			writeFHIR(w, http.StatusOK, withoutData(found[0].Resource))
			return
		default:
			writeOutcome(w, http.StatusPreconditionFailed, "duplicate", fmt.Sprintf("%d Media match %s", len(found), inx))
			return
		}
	}
	s.mu.Lock()
	hooks := s.hooks
	s.mu.Unlock()
	if hooks.MediaReceived != nil {
		if err := hooks.MediaReceived(ident.Value); err != nil {
			rec.Fault = "hook"
			reset(w)
			return
		}
	}
	st := s.store(m, body, rec.CorrelationID)
	if hooks.MediaStored != nil {
		if err := hooks.MediaStored(ident.Value, st.ID); err != nil {
			rec.Fault = "hook"
			reset(w)
			return
		}
	}
	if after == nil && hooks.Fault == nil {
		after = s.match(r.Method, "/Media", ident.Value, true)
	}
	if f := after; f != nil {
		rec.Fault = string(f.Kind) + " after store"
		if done, _ := s.apply(w, r, f); done {
			return
		}
	}
	w.Header().Set("Location", fmt.Sprintf("%s/Media/%s/_history/%s", base, st.ID, st.VersionID))
	w.Header().Set("ETag", fmt.Sprintf(`W/"%s"`, st.VersionID))
	writeFHIR(w, http.StatusCreated, withoutData(st.Resource))
}

// store keeps m (already validated) and returns what was stored.
func (s *Server) store(m fhir.Media, body []byte, cid string) Stored {
	now := s.opt.Now().UTC()
	id := s.newID()
	m.ID = id
	m.Meta = &fhir.Meta{VersionID: "1", LastUpdated: now.Format(time.RFC3339Nano)}
	st := &Stored{
		ID: id, VersionID: "1", Identifier: firstIdentifier(m), Status: m.Status,
		ContentType: m.Content.ContentType, Size: m.Content.Size, Hash: m.Content.Hash,
		CorrelationID: cid, Created: now,
	}
	if m.Subject != nil {
		st.PatientRef = m.Subject.Reference
	}
	if s.opt.DropData {
		m.Content.Data = ""
	} else {
		st.Body = body
	}
	st.Resource, _ = json.Marshal(m)
	s.mu.Lock()
	s.media = append(s.media, st)
	s.byID[id] = st
	out := *st
	s.mu.Unlock()
	return out
}

func (s *Server) searchMedia(w http.ResponseWriter, r *http.Request, caps fhir.Capabilities, base string) {
	q := r.URL.Query()
	var match func(Stored) bool
	switch {
	case q.Has("subject") || q.Has("patient"):
		writePlain(w, http.StatusForbidden, "Search parameter not allowed")
		return
	case q.Has("patient.identifier"):
		sys, val, ok := parseIdentifierQuery("identifier=" + q.Get("patient.identifier"))
		if !ok || sys != fhir.NHISystem {
			writeOutcome(w, http.StatusBadRequest, "invalid", "patient.identifier must be "+fhir.NHISystem+"|<NHI>")
			return
		}
		s.mu.Lock()
		refs := map[string]bool{}
		for id, nhi := range s.patients {
			if nhi == val {
				refs["Patient/"+id] = true
			}
		}
		s.mu.Unlock()
		match = func(m Stored) bool { return refs[m.PatientRef] }
	case q.Has("identifier") && caps.Search:
		sys, val, ok := parseIdentifierQuery("identifier=" + q.Get("identifier"))
		if !ok {
			writeOutcome(w, http.StatusBadRequest, "invalid", "identifier must be system|value")
			return
		}
		match = func(m Stored) bool { return m.Identifier.System == sys && m.Identifier.Value == val }
	case q.Has("identifier"):
		writePlain(w, http.StatusForbidden, "Search parameter not allowed")
		return
	default:
		writeOutcome(w, http.StatusBadRequest, "required", "Media search needs patient.identifier")
		return
	}
	// As ALEX answers: a searchset with its self link, each Media a
	// "match" entry, and an empty result carrying an OperationOutcome
	// entry (search mode "outcome") with total 0.
	self := base + "/Media?" + r.URL.RawQuery
	b := fhir.Bundle{ResourceType: "Bundle", ID: s.newID(), Type: "searchset", Link: []fhir.BundleLink{{Relation: "self", URL: self}}}
	for _, m := range s.Media() {
		if m.Deleted || !match(m) {
			continue
		}
		e := fhir.BundleEntry{FullURL: base + "/Media/" + m.ID, Resource: m.Resource}
		e.Search = &fhir.BundleSearch{Mode: "match"}
		b.Entry = append(b.Entry, e)
	}
	n := len(b.Entry)
	b.Total = &n
	if n == 0 {
		oo, _ := json.Marshal(fhir.Outcome("information", "not-found", "No Media found"))
		e := fhir.BundleEntry{Resource: oo}
		e.Search = &fhir.BundleSearch{Mode: "outcome"}
		b.Entry = append(b.Entry, e)
	}
	writeFHIR(w, http.StatusOK, mustJSON(b))
}

func (s *Server) readMedia(w http.ResponseWriter, id string) {
	s.mu.Lock()
	m, ok := s.byID[id]
	var res []byte
	var deleted bool
	if ok {
		res, deleted = m.Resource, m.Deleted
	}
	s.mu.Unlock()
	switch {
	case !ok:
		writePlain(w, http.StatusNotFound, "Resource not found")
	case deleted:
		writeOutcome(w, http.StatusGone, "deleted", "Media/"+id+" was deleted")
	default:
		writeFHIR(w, http.StatusOK, res)
	}
}

func (s *Server) deleteMedia(w http.ResponseWriter, id string, caps fhir.Capabilities) {
	if !caps.Delete {
		writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "DELETE of Media is not supported")
		return
	}
	s.mu.Lock()
	m, ok := s.byID[id]
	if ok {
		m.Deleted = true
	}
	s.mu.Unlock()
	if !ok {
		writePlain(w, http.StatusNotFound, "Resource not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) patchMedia(w http.ResponseWriter, r *http.Request, id string, body []byte, caps fhir.Capabilities) {
	if !caps.EnteredInError {
		writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "PATCH of Media is not supported")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json-patch+json" {
		writeOutcome(w, http.StatusUnsupportedMediaType, "not-supported", "Content-Type must be application/json-patch+json")
		return
	}
	var ops []struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	if err := json.Unmarshal(body, &ops); err != nil || len(ops) != 1 || ops[0].Op != "replace" || ops[0].Path != "/status" || ops[0].Value != "entered-in-error" {
		writeOutcome(w, http.StatusUnprocessableEntity, "not-supported", "only replace /status with entered-in-error is supported")
		return
	}
	s.mu.Lock()
	m, ok := s.byID[id]
	var res []byte
	if ok && !m.Deleted {
		var mm fhir.Media
		_ = json.Unmarshal(m.Resource, &mm)
		v, _ := strconv.Atoi(m.VersionID)
		m.VersionID = strconv.Itoa(v + 1)
		mm.Status = "entered-in-error"
		mm.Meta = &fhir.Meta{VersionID: m.VersionID, LastUpdated: s.opt.Now().UTC().Format(time.RFC3339Nano)}
		m.Status = mm.Status
		m.Resource, _ = json.Marshal(mm)
		res = m.Resource
	}
	s.mu.Unlock()
	if res == nil {
		writePlain(w, http.StatusNotFound, "Resource not found")
		return
	}
	writeFHIR(w, http.StatusOK, withoutData(res))
}

func (s *Server) readPatient(w http.ResponseWriter, id string) {
	s.mu.Lock()
	nhi, ok := s.patients[id]
	if !ok && s.opt.AutoPatients && id != "" {
		sum := sha1.Sum([]byte(id))
		nhi = fmt.Sprintf("ZZZ%04d", int(binary.BigEndian.Uint16(sum[:]))%10000)
		s.patients[id] = nhi
		ok = true
	}
	s.mu.Unlock()
	if !ok {
		writePlain(w, http.StatusNotFound, "Resource not found")
		return
	}
	p := map[string]any{"resourceType": "Patient", "id": id}
	if nhi != "" {
		// A patient registered without an NHI (AddPatient(id, "")) has no
		// identifier at all, as in a practice whose patient was never
		// matched to the NHI.
		p["identifier"] = []fhir.Identifier{{Use: "official", System: fhir.NHISystem, Value: nhi}}
	}
	writeFHIR(w, http.StatusOK, mustJSON(p))
}

// transaction stores every Media of a transaction Bundle, or none.
func (s *Server) transaction(w http.ResponseWriter, r *http.Request, body []byte, caps fhir.Capabilities, base string) {
	if !caps.Transaction {
		writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "transaction Bundles are not supported")
		return
	}
	var b fhir.Bundle
	if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "transaction" {
		writeOutcome(w, http.StatusBadRequest, "structure", "a transaction Bundle is expected")
		return
	}
	ms := make([]fhir.Media, 0, len(b.Entry))
	for i, e := range b.Entry {
		if e.Request == nil || e.Request.Method != http.MethodPost || strings.TrimPrefix(e.Request.URL, "/") != "Media" {
			writeOutcome(w, http.StatusBadRequest, "not-supported", fmt.Sprintf("entry %d: only POST Media", i))
			return
		}
		m, status, code, msg := validateMedia(e.Resource)
		if status != 0 {
			writeOutcome(w, status, code, fmt.Sprintf("entry %d: %s", i, msg))
			return
		}
		ms = append(ms, m)
	}
	out := fhir.Bundle{ResourceType: "Bundle", ID: s.newID(), Type: "transaction-response"}
	for i, m := range ms {
		st := s.store(m, b.Entry[i].Resource, r.Header.Get("mt-correlationid"))
		out.Entry = append(out.Entry, fhir.BundleEntry{Response: &fhir.BundleResponse{
			Status: "201 Created", Location: fmt.Sprintf("Media/%s/_history/%s", st.ID, st.VersionID), Etag: `W/"1"`,
		}})
	}
	writeFHIR(w, http.StatusOK, mustJSON(out))
}

// inspect lists the stored Media without their data.
func (s *Server) inspect(w http.ResponseWriter) {
	type item struct {
		ID          string `json:"id"`
		Identifier  string `json:"identifier"`
		Status      string `json:"status"`
		Deleted     bool   `json:"deleted,omitempty"`
		Patient     string `json:"patient"`
		ContentType string `json:"contentType"`
		Size        int64  `json:"size"`
		Hash        string `json:"hash"`
	}
	out := []item{}
	for _, m := range s.Media() {
		out = append(out, item{m.ID, m.Identifier.System + "|" + m.Identifier.Value, m.Status, m.Deleted, m.PatientRef, m.ContentType, m.Size, m.Hash})
	}
	writeJSON(w, http.StatusOK, out)
}

// parseIdentifierQuery reads "identifier=system|value" (URL-decoded).
func parseIdentifierQuery(s string) (system, value string, ok bool) {
	v, found := strings.CutPrefix(s, "identifier=")
	if !found {
		return "", "", false
	}
	if u, err := url.QueryUnescape(v); err == nil {
		v = u
	}
	system, value, found = strings.Cut(v, "|")
	return system, value, found && value != ""
}

// withoutData drops content.data from a stored resource for answers that
// need not echo the photo.
func withoutData(res []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(res, &m) != nil {
		return res
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(m["content"], &c) != nil {
		return res
	}
	delete(c, "data")
	m["content"] = mustJSON(c)
	return mustJSON(m)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func writeFHIR(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeOutcome answers with an OperationOutcome.
func writeOutcome(w http.ResponseWriter, status int, code, msg string) {
	writeFHIR(w, status, mustJSON(fhir.Outcome("error", code, msg)))
}

// writePlain answers as ALEX does outside FHIR: {"statusCode","message"}.
func writePlain(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"statusCode": status, "message": msg})
}
