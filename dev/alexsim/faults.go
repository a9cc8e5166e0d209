package alexsim

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// FaultKind is how an injected fault shows itself.
type FaultKind string

// Fault kinds.
const (
	// FaultStatus answers with Fault.Status (500, 503, 429 with Retry-After,
	// a 4xx with an OperationOutcome of Fault.Code).
	FaultStatus FaultKind = "status"
	// FaultTimeout holds the request without answering for Fault.Hold
	// (default until the client gives up, at most a minute), then drops it.
	FaultTimeout FaultKind = "timeout"
	// FaultReset drops the connection without an answer.
	FaultReset FaultKind = "reset"
	// FaultExpireToken expires every token just before the request is
	// checked, so it gets 401 as a token expiring mid-commit would.
	FaultExpireToken FaultKind = "expire-token"
	// FaultEmpty answers 200 with no body and no Location: a success that
	// does not say what, if anything, was stored.
	FaultEmpty FaultKind = "empty"
)

// Fault is what happens to a matching request.
type Fault struct {
	Kind       FaultKind
	Status     int           // FaultStatus
	RetryAfter time.Duration // sent as Retry-After (whole seconds)
	Code       string        // OperationOutcome issue code (default by status); "plain" sends ALEX's plain JSON
	Message    string
	Hold       time.Duration // FaultTimeout
	// AfterStore applies the fault after the Media was stored: the write
	// happened, the answer is lost.
	AfterStore bool
}

// Rule picks requests for a fault.
type Rule struct {
	Method string // "" for any
	// Path is matched against the path below the FHIR base ("/Media",
	// "/Media/abc", "" for the base) or the token path; a trailing "*"
	// matches a prefix. "" matches any.
	Path string
	// Identifier, if set, matches only a POST /Media whose identifier value
	// is this.
	Identifier string
	// Nth is the first matching request to fail (default 1).
	Nth int
	// Times is how many matching requests fail from the Nth on (default 1;
	// negative for all).
	Times int
	Fault Fault
}

type rule struct {
	Rule
	seen int
}

// Inject adds a fault rule; it stays until it has fired Times times, or
// remove or ClearFaults is called (remove takes out this rule alone, for a
// simulator tests share).
func (s *Server) Inject(r Rule) (remove func()) {
	if r.Nth <= 0 {
		r.Nth = 1
	}
	if r.Times == 0 {
		r.Times = 1
	}
	if r.Fault.Kind == "" {
		r.Fault.Kind = FaultStatus
	}
	added := &rule{Rule: r}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = append(s.rules, added)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, x := range s.rules {
			if x == added {
				s.rules = append(s.rules[:i:i], s.rules[i+1:]...)
				return
			}
		}
	}
}

// ClearFaults removes every fault rule.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = nil
}

// match returns the fault for this request, if a rule fires.
func (s *Server) match(method, path, identifier string, afterStore bool) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.rules {
		if r.Fault.AfterStore != afterStore {
			continue
		}
		if r.Method != "" && !strings.EqualFold(r.Method, method) {
			continue
		}
		if r.Path != "" {
			if p, ok := strings.CutSuffix(r.Path, "*"); ok {
				if !strings.HasPrefix(path, p) {
					continue
				}
			} else if r.Path != path {
				continue
			}
		}
		if r.Identifier != "" && r.Identifier != identifier {
			continue
		}
		r.seen++
		if r.seen < r.Nth || (r.Times >= 0 && r.seen >= r.Nth+r.Times) {
			continue
		}
		f := r.Fault
		return &f
	}
	return nil
}

// apply carries out f. It reports whether the request is finished.
func (s *Server) apply(w http.ResponseWriter, r *http.Request, f *Fault) (done bool, status int) {
	switch f.Kind {
	case FaultExpireToken:
		s.ExpireTokens()
		return false, 0
	case FaultReset:
		reset(w)
		return true, 0
	case FaultEmpty:
		w.WriteHeader(http.StatusOK)
		return true, http.StatusOK
	case FaultTimeout:
		hold := f.Hold
		if hold <= 0 {
			hold = time.Minute
		}
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-t.C:
		}
		reset(w)
		return true, 0
	}
	st := f.Status
	if st == 0 {
		st = http.StatusInternalServerError
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(int((f.RetryAfter+time.Second-1)/time.Second)))
	}
	msg := f.Message
	if msg == "" {
		msg = fmt.Sprintf("injected %d", st)
	}
	code := f.Code
	if code == "" {
		switch {
		case st == http.StatusTooManyRequests:
			code = "throttled"
		case st >= 500:
			code = "exception"
		case st == http.StatusUnprocessableEntity:
			code = "processing"
		default:
			code = "invalid"
		}
	}
	if code == "plain" {
		writePlain(w, st, msg)
	} else {
		writeOutcome(w, st, code, msg)
	}
	return true, st
}

// reset drops the connection without an answer (a TCP reset where the
// platform allows).
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}
