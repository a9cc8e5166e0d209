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

// trackUploadScript: KEYS user, uploads, objects, expiry; ARGV sessionId,
// key, now ms, URL expiry ms, max, session TTL ms, expiry member, grace ms.
var trackUploadScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
local raw
if t == 'hash' then raw = redis.call('HGET', KEYS[1], 'session') elseif t == 'string' then raw = redis.call('GET', KEYS[1]) end
if not raw then return 'not_found' end
local s = cjson.decode(raw)
if s.sessionId ~= ARGV[1] then return 'changed' end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 'limit' end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = tonumber(ARGV[6]) end
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) + ttl, ARGV[7])
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[8]))
redis.call('PEXPIRE', KEYS[3], ttl + tonumber(ARGV[8]))
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
	keys := []string{s.Keys.User(userID), s.Keys.Uploads(userID, sessionID), s.Keys.Objects(userID, sessionID), s.Keys.Expiry()}
	res, err := trackUploadScript.Run(ctx, s.rdb, keys, sessionID, key, now.UnixMilli(), urlExpires.UnixMilli(),
		s.opt.MaxUploads, s.opt.SessionTTL.Milliseconds(), userID+" "+sessionID, objectsGrace.Milliseconds()).Text()
	if err != nil {
		return fmt.Errorf("track upload: %w", err)
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
	return fmt.Errorf("track upload: unexpected %q", res)
}

// trackObjectScript: KEYS user, objects, expiry; ARGV sessionId, now ms,
// session TTL ms, expiry member, grace ms, keys...
var trackObjectScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
local raw
if t == 'hash' then raw = redis.call('HGET', KEYS[1], 'session') elseif t == 'string' then raw = redis.call('GET', KEYS[1]) end
if not raw then return 'not_found' end
local s = cjson.decode(raw)
if s.sessionId ~= ARGV[1] then return 'changed' end
for i = 6, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = tonumber(ARGV[3]) end
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[5]))
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
	args := []any{sessionID, s.opt.Now().UnixMilli(), s.opt.SessionTTL.Milliseconds(), userID + " " + sessionID, objectsGrace.Milliseconds()}
	for _, k := range keys {
		args = append(args, k)
	}
	res, err := trackObjectScript.Run(ctx, s.rdb, []string{s.Keys.User(userID), s.Keys.Objects(userID, sessionID), s.Keys.Expiry()}, args...).Text()
	if err != nil {
		return fmt.Errorf("track objects: %w", err)
	}
	switch res {
	case "ok":
		return nil
	case "not_found":
		return ErrNotFound
	case "changed":
		return ErrSessionChanged
	}
	return fmt.Errorf("track objects: unexpected %q", res)
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

// sweepScript: KEYS expiry, lock; ARGV now ms, limit, lock token, lock ms.
// It takes the lock (or answers nil) and returns up to limit members due.
var sweepScript = redis.NewScript(`
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return false end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
`)

// DueForSweep takes the sweep lock for hold and returns up to limit
// sessions due, each either still live (its expiry pushed back to the
// session key's, and left out) or ended (returned with its keys). ok is
// false when another sweeper holds the lock. The caller deletes each ended
// session's objects, then calls Swept, and releases the lock with
// EndSweep(token).
func (s *Store) DueForSweep(ctx context.Context, token string, hold time.Duration, limit int) (ended []Ended, ok bool, err error) {
	now := s.opt.Now()
	res, err := sweepScript.Run(ctx, s.rdb, []string{s.Keys.Expiry(), s.Keys.SweepLock()},
		now.UnixMilli(), limit, token, hold.Milliseconds()).StringSlice()
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
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// EndSweep releases the sweep lock if token holds it.
func (s *Store) EndSweep(ctx context.Context, token string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.Keys.SweepLock()}, token).Err(); err != nil {
		return fmt.Errorf("end sweep: %w", err)
	}
	return nil
}
