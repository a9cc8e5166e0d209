package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrUploadLimit is a presigned upload refused because the session already
// has Options.MaxUploads outstanding (issued, not yet recorded, not expired).
var ErrUploadLimit = errors.New("too many uploads outstanding for this session: record or wait for the earlier ones")

// DefaultMaxUploads is the default cap on a session's outstanding presigned
// uploads: a phone sending a burst of photos stays well under it, a client
// asking for URLs in a loop does not.
const DefaultMaxUploads = 20

// Uploads is the sorted set of a session's outstanding presigned uploads:
// original keys by when their URL expires (Unix ms).
func (k Keys) Uploads(userID, sessionID string) string {
	return string(k) + "uploads:" + userID + ":" + sessionID
}

// Objects is the set of every original key issued to a session, what the
// sweep deletes (with the previews, viewer images and clean copies beside
// them) once the session has ended.
func (k Keys) Objects(userID, sessionID string) string {
	return string(k) + "objects:" + userID + ":" + sessionID
}

// Expiry is the sorted set of sessions that hold objects, "<userId> <sessionId>"
// by when the session key expires at the latest (Unix ms): what the sweep
// reads. It is durable, unlike a keyspace notification, so a session that
// expires while no sweeper runs is swept by the next.
func (k Keys) Expiry() string { return string(k) + "session-expiry" }

// SweepLock is held by the one sweeper working at a time.
func (k Keys) SweepLock() string { return string(k) + "session-sweep-lock" }

// objectsGrace is how long a session's upload sets outlive it at most, had
// no sweeper ever run.
const objectsGrace = 24 * time.Hour

// trackUploadScript counts an upload against its session's outstanding
// ones and keeps its key for the sweep. Returns ok, not_found, changed or
// limit.
var trackUploadScript = plainScript("trackUpload", []string{
	"session", // user:{id}
	"uploads", // the session's outstanding uploads, by URL expiry
	"objects", // every key issued to the session
	"expiry",  // the sweep's index of sessions, by when they may end
}, []string{
	"sessionId",    // the session the upload is for
	"object",       // the upload's key
	"nowMs",        // Unix ms
	"urlExpiresMs", // when its URL expires, Unix ms
	"max",          // most outstanding uploads
	"sessionTtlMs", // the session's TTL, should the key have none
	"member",       // the session in key.expiry: "<userId> <sessionId>"
	"graceMs",      // how long the sets outlive the session at most
}, `
local t = redis.call('TYPE', key.session).ok
local raw
if t == 'hash' then raw = redis.call('HGET', key.session, 'session') elseif t == 'string' then raw = redis.call('GET', key.session) end
if not raw then return 'not_found' end
local s = cjson.decode(raw)
if s.sessionId ~= arg.sessionId then return 'changed' end
redis.call('ZREMRANGEBYSCORE', key.uploads, '-inf', arg.nowMs)
if redis.call('ZCARD', key.uploads) >= tonumber(arg.max) then return 'limit' end
redis.call('ZADD', key.uploads, arg.urlExpiresMs, arg.object)
redis.call('SADD', key.objects, arg.object)
local ttl = redis.call('PTTL', key.session)
if ttl < 0 then ttl = tonumber(arg.sessionTtlMs) end
redis.call('ZADD', key.expiry, tonumber(arg.nowMs) + ttl, arg.member)
redis.call('PEXPIRE', key.uploads, ttl + tonumber(arg.graceMs))
redis.call('PEXPIRE', key.objects, ttl + tonumber(arg.graceMs))
return 'ok'
`)

// SessionIDOf is the id of userID's current session, without reading its
// photos; ErrNotFound if there is none.
func (s *Store) SessionIDOf(ctx context.Context, userID string) (string, error) {
	key := s.Keys.User(userID)
	raw, err := s.rdb.HGet(ctx, key, "session").Result()
	if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
		raw, err = s.rdb.Get(ctx, key).Result() // stored whole by an earlier version
	}
	if errors.Is(err, redis.Nil) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("session id: %w", err)
	}
	var head struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal([]byte(raw), &head); err != nil || head.SessionID == "" {
		return "", fmt.Errorf("session id: undecodable session")
	}
	return head.SessionID, nil
}

// TrackUpload records a presigned upload of key for userID's session
// sessionID, whose URL expires at urlExpires: it counts against the
// session's outstanding uploads (at most Options.MaxUploads, else
// ErrUploadLimit) until recorded (UploadRecorded) or expired, and the
// sweep deletes it, and what is made from it, once the session has ended.
// It fails with ErrNotFound without a session and ErrSessionChanged if the
// user's session is no longer sessionID.
func (s *Store) TrackUpload(ctx context.Context, userID, sessionID, key string, urlExpires time.Time) error {
	now := s.opt.Now()
	res, err := trackUploadScript.run(ctx, s.rdb, keyNames{
		"session": s.Keys.User(userID), "uploads": s.Keys.Uploads(userID, sessionID),
		"objects": s.Keys.Objects(userID, sessionID), "expiry": s.Keys.Expiry(),
	}, args{
		"sessionId": sessionID, "object": key, "nowMs": now.UnixMilli(), "urlExpiresMs": urlExpires.UnixMilli(),
		"max": s.opt.MaxUploads, "sessionTtlMs": s.opt.SessionTTL.Milliseconds(),
		"member": userID + " " + sessionID, "graceMs": objectsGrace.Milliseconds(),
	}).Text()
	return trackReply("track upload", res, err)
}

// trackReply maps the tracking scripts' one-word answers to the store's
// errors.
func trackReply(op, res string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch res {
	case "ok":
		return nil
	case "not_found":
		return ErrNotFound
	case "changed":
		return ErrSessionChanged
	case "limit":
		return ErrUploadLimit
	}
	return fmt.Errorf("%s: unexpected %q", op, res)
}

// trackObjectScript keeps the keys of objects the server writes for a
// session for the sweep. Returns ok, not_found or changed.
var trackObjectScript = plainScript("trackObject", []string{
	"session", // user:{id}
	"objects", // every key issued to the session
	"expiry",  // the sweep's index of sessions, by when they may end
}, []string{
	"sessionId",    // the session the objects are for
	"nowMs",        // Unix ms
	"sessionTtlMs", // the session's TTL, should the key have none
	"member",       // the session in key.expiry: "<userId> <sessionId>"
	"graceMs",      // how long the set outlives the session at most
	"objectKeys",   // the objects' keys (JSON array)
}, `
local t = redis.call('TYPE', key.session).ok
local raw
if t == 'hash' then raw = redis.call('HGET', key.session, 'session') elseif t == 'string' then raw = redis.call('GET', key.session) end
if not raw then return 'not_found' end
local s = cjson.decode(raw)
if s.sessionId ~= arg.sessionId then return 'changed' end
for _, k in ipairs(cjson.decode(arg.objectKeys)) do redis.call('SADD', key.objects, k) end
local ttl = redis.call('PTTL', key.session)
if ttl < 0 then ttl = tonumber(arg.sessionTtlMs) end
redis.call('ZADD', key.expiry, tonumber(arg.nowMs) + ttl, arg.member)
redis.call('PEXPIRE', key.objects, ttl + tonumber(arg.graceMs))
return 'ok'
`)

// TrackObjects adds keys, objects the server itself writes for userID's
// session sessionID (earlier photos' previews), to what the sweep deletes
// once the session has ended, as TrackUpload does for a photo's original.
// Call it before writing the objects. It fails with ErrNotFound without a
// session and ErrSessionChanged if the user's session is no longer
// sessionID.
func (s *Store) TrackObjects(ctx context.Context, userID, sessionID string, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	res, err := trackObjectScript.run(ctx, s.rdb, keyNames{
		"session": s.Keys.User(userID), "objects": s.Keys.Objects(userID, sessionID), "expiry": s.Keys.Expiry(),
	}, args{
		"sessionId": sessionID, "nowMs": s.opt.Now().UnixMilli(), "sessionTtlMs": s.opt.SessionTTL.Milliseconds(),
		"member": userID + " " + sessionID, "graceMs": objectsGrace.Milliseconds(), "objectKeys": mustJSON(keys),
	}).Text()
	return trackReply("track objects", res, err)
}

// UploadRecorded ends key's count against its session's outstanding
// uploads: the photo is in the session.
func (s *Store) UploadRecorded(ctx context.Context, userID, sessionID, key string) error {
	if err := s.rdb.ZRem(ctx, s.Keys.Uploads(userID, sessionID), key).Err(); err != nil {
		return fmt.Errorf("upload recorded: %w", err)
	}
	return nil
}

// Ended is a session whose objects may be left, as the sweep finds it.
type Ended struct {
	UserID    string
	SessionID string
	Keys      []string // original keys issued to it
}

// sweepScript takes the sweep lock (or answers nil) and returns up to
// limit members of key.expiry due.
var sweepScript = plainScript("sweep", []string{
	"expiry", // the sessions, by when they may end
	"lock",   // the sweep lock
}, []string{
	"nowMs",  // Unix ms
	"limit",  // at most this many
	"token",  // the lock's holder
	"lockMs", // how long the lock holds
}, `
if not redis.call('SET', key.lock, arg.token, 'NX', 'PX', arg.lockMs) then return false end
return redis.call('ZRANGEBYSCORE', key.expiry, '-inf', arg.nowMs, 'LIMIT', 0, arg.limit)
`)

// DueForSweep takes the sweep lock for hold and returns up to limit
// sessions due, each either still live (its expiry pushed back to the
// session key's, and left out) or ended (returned with its keys). ok is
// false when another sweeper holds the lock. The caller deletes each ended
// session's objects, then calls Swept, and releases the lock with
// EndSweep(token).
func (s *Store) DueForSweep(ctx context.Context, token string, hold time.Duration, limit int) (ended []Ended, ok bool, err error) {
	now := s.opt.Now()
	res, err := sweepScript.run(ctx, s.rdb, keyNames{"expiry": s.Keys.Expiry(), "lock": s.Keys.SweepLock()},
		args{"nowMs": now.UnixMilli(), "limit": limit, "token": token, "lockMs": hold.Milliseconds()}).StringSlice()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("sweep: %w", err)
	}
	for _, m := range res {
		user, sid, _ := strings.Cut(m, " ")
		cur, err := s.SessionIDOf(ctx, user)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return ended, true, err
		}
		if cur == sid {
			ttl, err := s.rdb.PTTL(ctx, s.Keys.User(user)).Result()
			if err != nil {
				return ended, true, fmt.Errorf("sweep: %w", err)
			}
			if ttl > 0 {
				// Still live (its TTL was renewed): look again when it can
				// next expire.
				if err := s.rdb.ZAdd(ctx, s.Keys.Expiry(), redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: m}).Err(); err != nil {
					return ended, true, fmt.Errorf("sweep: %w", err)
				}
				continue
			}
		}
		keys, err := s.rdb.SMembers(ctx, s.Keys.Objects(user, sid)).Result()
		if err != nil {
			return ended, true, fmt.Errorf("sweep: %w", err)
		}
		ended = append(ended, Ended{UserID: user, SessionID: sid, Keys: keys})
	}
	return ended, true, nil
}

// Swept forgets an ended session once its objects are deleted.
func (s *Store) Swept(ctx context.Context, e Ended) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.Keys.Uploads(e.UserID, e.SessionID), s.Keys.Objects(e.UserID, e.SessionID))
		p.ZRem(ctx, s.Keys.Expiry(), e.UserID+" "+e.SessionID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("swept: %w", err)
	}
	return nil
}

// releaseScript deletes the lock only if token still holds it.
var releaseScript = plainScript("release", []string{"lock"}, []string{"token"}, `
if redis.call('GET', key.lock) == arg.token then return redis.call('DEL', key.lock) end
return 0
`)

// EndSweep releases the sweep lock if token holds it.
func (s *Store) EndSweep(ctx context.Context, token string) error {
	if err := releaseScript.run(ctx, s.rdb, keyNames{"lock": s.Keys.SweepLock()}, args{"token": token}).Err(); err != nil {
		return fmt.Errorf("end sweep: %w", err)
	}
	return nil
}
