// Package realtime is what the API, the relay and the Ably stand-in share
// about the browsers' live channel: the channel name of a user's session,
// the short-lived token a browser subscribes with (an Ably-compatible JWT,
// minted locally from a key and never calling Ably), its verification, and
// the wire format of the Server-Sent Events stream.
//
// One code path serves both deployments. With Ably, the key is the Ably API
// key ("appId.keyId:secret") and the browser opens Ably's SSE endpoint; with
// the relay's built-in SSE, the key is REALTIME_SIGNING_KEY, shared by the
// API and every relay, and the browser opens the relay's /sse. Either way
// the page does:
//
//	GET /api/users/{userId}/realtime-token
//	  -> {"mode","token","expiresAt","channel","url"}
//	new EventSource(url + "?v=1.2&channels=" + encodeURIComponent(channel) +
//	                "&accessToken=" + token [+ "&lastEvent=" + lastId])
//
// and receives `message` events whose data is a Message (see sse.go). It
// opens the stream first and then reconciles with GET .../session, renews the
// token before expiresAt (or when the stream ends with an `error` event
// whose code is 40140-40149), and reopens with lastEvent set to the last id
// it saw so nothing is missed.
package realtime

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/clinicalimages/clinimg/pkg/events"
)

// ChannelPrefix starts every session channel's name.
const ChannelPrefix = "session:"

// Channel is the channel of userID's capture sessions: "session:<userId>",
// the seeds' channel. The desktop subscribes to it and sees every session
// of its user.
func Channel(userID string) string { return ChannelPrefix + userID }

// SessionChannel is the channel of one session of userID:
// "session:<userId>:<sessionId>". A phone subscribes to it and sees only the
// events of the session it paired with.
func SessionChannel(userID, sessionID string) string {
	return ChannelPrefix + userID + ":" + sessionID
}

// Ref is what a channel name stands for: a user's channel (Session empty)
// or one session's channel.
type Ref struct {
	User    string
	Session string
}

// ParseChannel reads a user's or a session's channel name; ok is false for
// any other name.
func ParseChannel(channel string) (Ref, bool) {
	rest, ok := strings.CutPrefix(channel, ChannelPrefix)
	if !ok {
		return Ref{}, false
	}
	user, sess, scoped := strings.Cut(rest, ":")
	if !events.ValidUserID(user) || (scoped && !events.ValidUserID(sess)) {
		return Ref{}, false
	}
	return Ref{User: user, Session: sess}, true
}

// ChannelUser returns the user id of a user's channel, and false for any
// other name (a session's channel included).
func ChannelUser(channel string) (string, bool) {
	r, ok := ParseChannel(channel)
	if !ok || r.Session != "" {
		return "", false
	}
	return r.User, true
}

// PhoneClientPrefix starts the client id of a phone's token:
// "phone:<phoneId>".
const PhoneClientPrefix = "phone:"

// MaxTTL is the longest token Ably accepts; Mint never issues a longer one.
const MaxTTL = 24 * time.Hour

// Key is an API key: Name ("appId.keyId" for Ably) goes in the token's kid
// header, Secret signs it. String hides the secret so a Key can be logged.
type Key struct {
	Name   string
	Secret string
}

// ParseKey reads "name:secret", the form of ABLY_API_KEY and
// REALTIME_SIGNING_KEY.
func ParseKey(s string) (Key, error) {
	name, secret, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || name == "" || secret == "" || strings.ContainsAny(name, " \t\r\n") {
		return Key{}, errors.New(`key is not of the form "name:secret"`)
	}
	return Key{Name: name, Secret: secret}, nil
}

// GenerateKey returns a new random signing key named name, for a local
// stack that has no REALTIME_SIGNING_KEY.
func GenerateKey(name string) Key {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return Key{Name: name, Secret: base64.RawURLEncoding.EncodeToString(b[:])}
}

// IsZero reports whether k is unset.
func (k Key) IsZero() bool { return k.Name == "" && k.Secret == "" }

// Encode is the "name:secret" form, for passing the key on in an environment.
func (k Key) Encode() string { return k.Name + ":" + k.Secret }

// String is the key name only; the secret never reaches a log.
func (k Key) String() string { return k.Name + ":<secret>" }

// Claims are what a verified token says.
type Claims struct {
	KeyName    string              // the kid header
	ClientID   string              // x-ably-clientId, "" if absent
	IssuedAt   time.Time           // iat
	ExpiresAt  time.Time           // exp
	Capability map[string][]string // x-ably-capability: channel -> operations
}

// PhoneID is the paired phone a token was issued to, "" for a desktop's.
func (c Claims) PhoneID() string {
	id, _ := strings.CutPrefix(c.ClientID, PhoneClientPrefix)
	if id == c.ClientID {
		return ""
	}
	return id
}

// Allows reports whether the capability grants op on channel, with Ably's
// wildcards: a resource "*" (every channel) or "ns:*" (every channel of a
// namespace), an operation "*" (every operation).
func (c Claims) Allows(channel, op string) bool {
	for res, ops := range c.Capability {
		if !resourceMatches(res, channel) {
			continue
		}
		for _, o := range ops {
			if o == op || o == "*" {
				return true
			}
		}
	}
	return false
}

func resourceMatches(res, channel string) bool {
	if res == channel || res == "*" {
		return true
	}
	if ns, ok := strings.CutSuffix(res, ":*"); ok {
		return strings.HasPrefix(channel, ns+":")
	}
	return false
}

// Token errors. Each maps to an Ably error code through ErrorFor.
var (
	ErrNoToken       = errors.New("no access token")
	ErrTokenInvalid  = errors.New("access token invalid")
	ErrTokenExpired  = errors.New("access token expired")
	ErrNotPermitted  = errors.New("channel not permitted by the token's capability")
	ErrBadChannel    = errors.New("not a session channel")
	ErrSessionEnded  = errors.New("session already expired")
	ErrRevoked       = errors.New("access revoked: the session ended or the phone was removed")
	ErrBadTTL        = errors.New("token lifetime must be positive")
	ErrBadUserID     = errors.New("invalid user id")
	errNoCapability  = errors.New("token has no x-ably-capability")
	errBadCapability = errors.New("x-ably-capability is not a JSON object of string arrays")
)

// Grant is what one token lets its holder subscribe to: a user's channel
// (a desktop), or, with SessionID and PhoneID set, the channel of that one
// session (a phone).
type Grant struct {
	UserID    string
	SessionID string
	PhoneID   string
}

// Channel is the one channel the grant covers.
func (g Grant) Channel() string {
	if g.SessionID != "" {
		return SessionChannel(g.UserID, g.SessionID)
	}
	return Channel(g.UserID)
}

func (g Grant) clientID() string {
	if g.PhoneID != "" {
		return PhoneClientPrefix + g.PhoneID
	}
	return g.UserID
}

func (g Grant) valid() bool {
	if !events.ValidUserID(g.UserID) {
		return false
	}
	if g.SessionID == "" && g.PhoneID == "" {
		return true
	}
	return events.ValidUserID(g.SessionID) && events.ValidUserID(g.PhoneID)
}

// Mint signs a desktop token: it lets its holder subscribe to userID's
// channel and nothing else. See MintGrant.
func Mint(key Key, userID string, ttl time.Duration, now time.Time) (token string, expires time.Time, err error) {
	return MintGrant(key, Grant{UserID: userID}, ttl, now)
}

// MintGrant signs a token that lets its holder subscribe to g's one channel
// and nothing else, valid from now for ttl (at most MaxTTL, in whole
// seconds). It is an Ably JWT: HS256, header kid = key.Name, claims iat,
// exp, x-ably-capability = {"<channel>":["subscribe"]} as a JSON string, and
// x-ably-clientId = the user id (desktop) or "phone:<phoneId>" (phone). The
// caller limits ttl to what is left of the session (Settings.Issue does).
func MintGrant(key Key, g Grant, ttl time.Duration, now time.Time) (token string, expires time.Time, err error) {
	if !g.valid() {
		return "", time.Time{}, ErrBadUserID
	}
	if key.Name == "" || key.Secret == "" {
		return "", time.Time{}, errors.New("mint token: no key")
	}
	ttl = min(ttl, MaxTTL)
	iat := now.Unix()
	exp := now.Add(ttl).Unix()
	if ttl <= 0 || exp <= iat {
		return "", time.Time{}, ErrBadTTL
	}
	capability, err := json.Marshal(map[string][]string{g.Channel(): {"subscribe"}})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("mint token: %w", err)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iat":               iat,
		"exp":               exp,
		"x-ably-capability": string(capability),
		"x-ably-clientId":   g.clientID(),
	})
	t.Header["kid"] = key.Name
	signed, err := t.SignedString([]byte(key.Secret))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("mint token: %w", err)
	}
	return signed, time.Unix(exp, 0).UTC(), nil
}

// Verify checks a token's signature against key (HS256 only, kid must be
// key.Name) and that it is current at now, and returns its claims. It fails
// with ErrTokenExpired once now reaches exp, ErrNoToken for "", and
// ErrTokenInvalid (wrapping the reason) for anything else.
func Verify(token string, key Key, now time.Time) (Claims, error) {
	if token == "" {
		return Claims{}, ErrNoToken
	}
	mc := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, mc, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != key.Name {
			return nil, errors.New("unknown kid")
		}
		return []byte(key.Secret), nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(0),
	)
	if errors.Is(err, jwt.ErrTokenExpired) {
		return Claims{}, ErrTokenExpired
	}
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrTokenInvalid, err)
	}
	c := Claims{KeyName: key.Name}
	if id, ok := mc["x-ably-clientId"].(string); ok {
		c.ClientID = id
	}
	if iat, err := mc.GetIssuedAt(); err == nil && iat != nil {
		c.IssuedAt = iat.UTC()
	}
	if exp, err := mc.GetExpirationTime(); err == nil && exp != nil {
		c.ExpiresAt = exp.UTC()
	}
	raw, ok := mc["x-ably-capability"].(string)
	if !ok {
		// Ably reads a missing capability as "everything": refuse it.
		return Claims{}, fmt.Errorf("%w: %w", ErrTokenInvalid, errNoCapability)
	}
	if err := json.Unmarshal([]byte(raw), &c.Capability); err != nil || c.Capability == nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrTokenInvalid, errBadCapability)
	}
	return c, nil
}

// Authorize verifies token and checks that it may subscribe to every one of
// channels, each a user's or a session's channel. It returns the claims and
// what each channel stands for, in order.
func Authorize(token string, key Key, channels []string, now time.Time) (Claims, []Ref, error) {
	if len(channels) == 0 {
		return Claims{}, nil, ErrBadChannel
	}
	refs := make([]Ref, 0, len(channels))
	for _, ch := range channels {
		r, ok := ParseChannel(ch)
		if !ok {
			return Claims{}, nil, ErrBadChannel
		}
		refs = append(refs, r)
	}
	c, err := Verify(token, key, now)
	if err != nil {
		return Claims{}, nil, err
	}
	for _, ch := range channels {
		if !c.Allows(ch, "subscribe") {
			return Claims{}, nil, ErrNotPermitted
		}
	}
	return c, refs, nil
}
