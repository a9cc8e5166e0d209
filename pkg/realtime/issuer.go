package realtime

import (
	"cmp"
	"errors"
	"time"

	"github.com/clinicalimages/clinimg/pkg/config"
)

// Mode says who serves the browsers' SSE stream.
type Mode string

// The two modes: Ably when ABLY_API_KEY is set, else the relay's built-in SSE.
const (
	ModeAbly Mode = "ably"
	ModeSSE  Mode = "sse"
)

// AblySSEURL is Ably's SSE endpoint.
const AblySSEURL = "https://main.realtime.ably.net/sse"

// DefaultSSEURL is where the local relay serves SSE (RELAY_ADDR :8081).
const DefaultSSEURL = "http://127.0.0.1:8081/sse"

// DefaultTTL is how long a desktop's token lives unless the session ends
// sooner; pages renew it before then.
const DefaultTTL = time.Hour

// DefaultPhoneTTL is how long a phone's token lives: minutes, so a phone
// that is removed or whose session ends loses the stream soon even where
// the stream cannot be cut at once (Ably); it is renewed only with a live
// phone credential.
const DefaultPhoneTTL = 5 * time.Minute

// Settings are the realtime settings the API and the relay both read:
//
//	ABLY_API_KEY          "appId.keyId:secret"; set = Ably mode
//	REALTIME_SIGNING_KEY  "name:secret"; required without ABLY_API_KEY (SSE mode),
//	                      the same value for the API and every relay
//	REALTIME_SSE_URL      SSE mode: the relay's SSE URL pages open (default
//	                      http://127.0.0.1:8081/sse)
//	ABLY_SSE_URL          Ably mode: Ably's SSE URL pages open (default
//	                      https://main.realtime.ably.net/sse; a stand-in's in tests).
//	                      Two names, so a deployment that sets the relay's URL
//	                      for SSE mode never hands it to browsers in Ably mode.
//	REALTIME_TOKEN_TTL    desktop token lifetime, default 1h, at most 24h
//	REALTIME_PHONE_TOKEN_TTL phone token lifetime, default 5m (never above REALTIME_TOKEN_TTL)
type Settings struct {
	Mode     Mode
	Key      Key // the Ably API key (ModeAbly) or the shared signing key (ModeSSE)
	URL      string
	TTL      time.Duration
	PhoneTTL time.Duration
}

// ReadSettings reads Settings, recording problems in r.
func ReadSettings(r *config.Reader) Settings {
	s := Settings{Mode: ModeSSE, TTL: r.Duration("REALTIME_TOKEN_TTL", DefaultTTL),
		PhoneTTL: r.Duration("REALTIME_PHONE_TOKEN_TTL", DefaultPhoneTTL)}
	name, urlVar, def := "REALTIME_SIGNING_KEY", "REALTIME_SSE_URL", DefaultSSEURL
	raw := r.Secret("ABLY_API_KEY")
	if raw != "" {
		s.Mode, urlVar, def = ModeAbly, "ABLY_SSE_URL", AblySSEURL
	} else {
		raw = r.Secret(name)
	}
	s.URL = r.String(urlVar, def)
	switch k, err := ParseKey(raw); {
	case raw == "":
		r.Fail("%s is required when ABLY_API_KEY is not set (built-in SSE), or %s_FILE", name, name)
	case err != nil:
		if s.Mode == ModeAbly {
			name = "ABLY_API_KEY"
		}
		r.Fail("%s: %v", name, err)
	default:
		s.Key = k
	}
	if s.TTL <= 0 || s.TTL > MaxTTL {
		r.Fail("REALTIME_TOKEN_TTL must be between 1s and 24h")
	}
	if s.PhoneTTL <= 0 {
		r.Fail("REALTIME_PHONE_TOKEN_TTL must be positive")
	}
	s.PhoneTTL = min(s.PhoneTTL, s.TTL) // a phone's never outlives a desktop's
	return s
}

// Token is the answer of GET /api/users/:userId/realtime-token. Channel is
// the one channel the token covers: the user's for a desktop, the session's
// for a phone.
type Token struct {
	Mode      Mode      `json:"mode"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
	Channel   string    `json:"channel"`
	URL       string    `json:"url"`
	SessionID string    `json:"sessionId,omitempty"`
}

// Issue mints g's browser token, valid from now for s.TTL (s.PhoneTTL for a
// phone) but never past notAfter (when the session expires). It fails with
// ErrSessionEnded if notAfter is not after now.
func (s Settings) Issue(g Grant, notAfter, now time.Time) (Token, error) {
	ttl := cmp.Or(s.TTL, DefaultTTL)
	if g.PhoneID != "" {
		ttl = min(ttl, cmp.Or(s.PhoneTTL, DefaultPhoneTTL))
	}
	if !notAfter.IsZero() {
		left := notAfter.Sub(now).Truncate(time.Second)
		if left < time.Second {
			return Token{}, ErrSessionEnded
		}
		ttl = min(ttl, left)
	}
	if s.Key.IsZero() {
		return Token{}, errors.New("issue token: no key configured")
	}
	tok, exp, err := MintGrant(s.Key, g, ttl, now)
	if err != nil {
		return Token{}, err
	}
	return Token{Mode: s.Mode, Token: tok, ExpiresAt: exp, Channel: g.Channel(), URL: s.URL, SessionID: g.SessionID}, nil
}
