package session

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Every script names its keys and arguments: its Lua reads key.<name> and
// arg.<name>, never KEYS[n] or ARGV[n], and the Go side passes them by
// name (keyNames, args), in the order one table per script declares, so
// that adding one cannot shift what another means. The tests check both
// sides: each Lua body reads only (and all) its own names, and each Go
// call passes exactly those (scripts_test.go). A script on a session
// (sessionScript) also takes these, which Store.call fills in:
//
//	key.session  user:{id}          arg.now      now (RFC 3339)
//	key.outbox   the outbox stream  arg.ttl      TTL seconds ('keep' keeps it)
//	                                arg.event    event envelope (JSON)
//	                                arg.subject  the event's subject
//
// A script either fails with an error reply "CI_<CODE> [detail]" and changes
// nothing, or changes the session, appends the event to the outbox, and
// answers. Every answer has one shape, reply():
//
//	{outcome, extra, session without its photos, photo 1, photo 2, ...}
//
// outcome is a word ("added", "changed", "unchanged", ...) or "", extra a
// JSON document a script adds ("" if none).
//
// user:{id} is a hash: field "session" holds the session without its
// photos, with imageIds (their order); field "image:<id>" holds each photo,
// and "deleted:<id>" the s3Key of each photo deleted from it (see remove).
// A change reads and writes only what it touches: recording a photo reads
// the session's fields and writes one photo, so its cost does not grow with
// the photos already there; a script that needs every photo load()s them.
// A session an earlier version stored whole (a string) is read as it was
// and stored per photo by its next change.
//
// cjson writes an empty table as {}, so enc() restores [] for the fields
// that are arrays; a plain find (a memchr scan) guards each substitution.
const prelude = `
local arrays = {'images', 'mediaResourceIds', 'orphans', 'errors', 'sentHashes', 'phones', 'imageIds', 'purposes', 'fields'}
local function enc(v)
  local s = cjson.encode(v)
  if not string.find(s, ':{}', 1, true) then return s end
  for _, f in ipairs(arrays) do
    local empty = '"' .. f .. '":{}'
    if string.find(s, empty, 1, true) then
      s = string.gsub(s, empty, '"' .. f .. '":[]')
    end
  end
  return s
end
local function fail(code, detail)
  if detail then return redis.error_reply('CI_' .. code .. ' ' .. detail) end
  return redis.error_reply('CI_' .. code)
end
local whole = false -- key.session holds a session stored whole, as a string
local stored = {}   -- the photo ids stored under key.session when it was read
local saved = nil   -- what save() wrote: {head = json, images = {id = json}}
local function ids(s)
  if not s.images then return s.imageIds end
  local out = {}
  for i, im in ipairs(s.images) do out[i] = im.id end
  return out
end
local function count(s)
  if s.images then return #s.images end
  return #s.imageIds
end
-- head reads the session without its photos: s.imageIds names them, and
-- s.images is nil (or, for a session stored whole, every photo).
local function head(name)
  local raw = redis.pcall('HGET', name, 'session')
  local s
  if type(raw) == 'table' and raw.err then
    raw = redis.call('GET', name)
    if not raw then return nil end
    whole = true
    s = cjson.decode(raw)
    if type(s.images) ~= 'table' then s.images = {} end
  else
    if not raw then return nil end
    s = cjson.decode(raw)
    if type(s.imageIds) ~= 'table' then s.imageIds = {} end
    for _, id in ipairs(s.imageIds) do stored[id] = true end
  end
  if type(s.phones) ~= 'table' then s.phones = {} end
  return s
end
-- load reads the session with every photo, in order, in s.images.
local function load(name)
  local s = head(name)
  if not s or s.images then return s end
  s.images = {}
  if #s.imageIds > 0 then
    local fields = {}
    for i, id in ipairs(s.imageIds) do fields[i] = 'image:' .. id end
    for _, raw in ipairs(redis.call('HMGET', name, unpack(fields))) do
      if raw then table.insert(s.images, cjson.decode(raw)) end
    end
  end
  s.imageIds = nil
  return s
end
-- encHead is the session's own fields, its photos named by imageIds.
local function encHead(s)
  local images, list = s.images, ids(s)
  s.images, s.imageIds = nil, list
  local out = enc(s)
  s.images = images
  if images then s.imageIds = nil end
  return out
end
-- save writes the session's own fields and its photos: every photo of a
-- load()ed session, only the ones given (the photos the change wrote) of a
-- head()ed one. Photos no longer in the session are deleted.
local function save(s, ttl, only)
  local list = ids(s)
  local now = {}
  for _, id in ipairs(list) do now[id] = true end
  local fields, images = {}, {}
  for _, im in ipairs(s.images or only or {}) do
    images[im.id] = enc(im)
    table.insert(fields, 'image:' .. im.id)
    table.insert(fields, images[im.id])
  end
  local hdr = encHead(s)
  local keepMs = nil
  if whole then
    if ttl == 'keep' then keepMs = redis.call('PTTL', key.session) end
    redis.call('DEL', key.session)
    whole = false
  else
    local gone = {}
    for id in pairs(stored) do
      if not now[id] then table.insert(gone, 'image:' .. id) end
    end
    if #gone > 0 then redis.call('HDEL', key.session, unpack(gone)) end
  end
  redis.call('HSET', key.session, 'session', hdr, unpack(fields))
  if ttl ~= 'keep' then
    redis.call('EXPIRE', key.session, ttl)
  elseif keepMs and keepMs > 0 then
    redis.call('PEXPIRE', key.session, keepMs)
  end
  stored = now
  saved = {head = hdr, images = images}
end
-- replyHead answers the session's own fields only (the caller reads the
-- photos), for a change whose cost must not grow with them; a session
-- read whole answers in full.
local function replyHead(s, outcome)
  if s.images then return nil end
  if saved then return {outcome, '', saved.head} end
  return {outcome, '', encHead(s)}
end
-- replyPhoto answers the session's own fields and the one photo im a
-- change wrote (or found unchanged), for a caller that needs no other: the
-- answer does not grow with the photos.
local function replyPhoto(s, outcome, im)
  local hdr = (saved and saved.head) or encHead(s)
  local raw = (saved and saved.images[im.id]) or enc(im)
  return {outcome, '', hdr, raw}
end
-- reply is every script's answer: {outcome, extra, session, photos...}.
local function reply(s, outcome, extra)
  local r = {outcome or '', extra or ''}
  if saved then r[3] = saved.head else r[3] = encHead(s) end
  local written = (saved and saved.images) or {}
  if s.images then
    for _, im in ipairs(s.images) do table.insert(r, written[im.id] or enc(im)) end
  elseif #s.imageIds > 0 then
    local fields = {}
    for i, id in ipairs(s.imageIds) do fields[i] = 'image:' .. id end
    local raws = redis.call('HMGET', key.session, unpack(fields))
    for i, id in ipairs(s.imageIds) do
      if written[id] then table.insert(r, written[id]) elseif raws[i] then table.insert(r, raws[i]) end
    end
  end
  return r
end
local function bump(s)
  s.version = (s.version or 0) + 1
  s.lastActivity = arg.now
end
local function emit(s, extra)
  local ev = cjson.decode(arg.event)
  if type(ev.data) ~= 'table' then ev.data = {} end
  ev.data.sessionId = s.sessionId
  ev.data.version = s.version
  ev.data.imageCount = count(s)
  for k, v in pairs(extra or {}) do ev.data[k] = v end
  redis.call('XADD', key.outbox, '*', 'id', ev.id, 'subject', arg.subject, 'event', enc(ev))
end
local function find(s, id)
  for i, im in ipairs(s.images) do
    if im.id == id then return i, im end
  end
  return nil, nil
end
local function editable(s)
  if s.commitStatus == 'in_progress' then return fail('COMMIT_IN_PROGRESS') end
  if s.commitStatus == 'committed' then return fail('COMMITTED') end
  return nil
end
local function state(img)
  if img.commitState == nil or img.commitState == '' then return 'pending' end
  return img.commitState
end
-- changeable refuses to edit or delete a photo that is, or may be, in the
-- record: its Media is written and ALEX offers no delete.
local function changeable(img)
  local st = state(img)
  if st == 'in_record' then return fail('IN_RECORD') end
  if st == 'sending' or st == 'unknown' then return fail('MAYBE_IN_RECORD') end
  return nil
end
local function inRecord(s)
  local n = 0
  for _, im in ipairs(s.images) do
    if state(im) == 'in_record' then n = n + 1 end
  end
  return n
end
-- photo reads the photo id of a head()ed session, or nil.
local function photo(s, id)
  if s.images then
    local _, im = find(s, id)
    return im
  end
  if not stored[id] then return nil end
  local raw = redis.call('HGET', key.session, 'image:' .. id)
  if not raw then return nil end
  return cjson.decode(raw)
end
-- inRecordWith is inRecord(s) for a head()ed session whose photo im
-- (read by photo()) changed and is not saved yet. The other photos are
-- counted from their stored JSON by a plain find, not decoded: enc()
-- writes the key and value as below, and a quote inside a string is
-- escaped, so only a photo's own commitState matches.
local function inRecordWith(s, im)
  if s.images then return inRecord(s) end
  local n = 0
  if state(im) == 'in_record' then n = 1 end
  if #s.imageIds == 0 then return n end
  local fields = {}
  for i, id in ipairs(s.imageIds) do fields[i] = 'image:' .. id end
  local raws = redis.call('HMGET', key.session, unpack(fields))
  for i, id in ipairs(s.imageIds) do
    if id ~= im.id and raws[i] and string.find(raws[i], '"commitState":"in_record"', 1, true) then n = n + 1 end
  end
  return n
end
`

// sessionKeys and sessionArgs come first in every session script's tables.
var (
	sessionKeys = []string{"session", "outbox"}
	sessionArgs = []string{"now", "ttl", "event", "subject"}
)

// luaScript is a Lua script whose keys and arguments have names, declared
// in order in keys and args: the Lua reads key.<name> and arg.<name> (a
// header the constructor writes binds them to KEYS and ARGV), and the Go
// side builds KEYS and ARGV from names with bind.
type luaScript struct {
	name       string
	keys, args []string
	session    bool   // runs on a session, after the prelude
	body       string // the script's own Lua, as written here
	script     *redis.Script
}

// keyNames are a script's keys by name.
type keyNames map[string]string

// args are a script's arguments by name.
type args map[string]any

// scripts are every luaScript of the package, for the tests.
var scripts []*luaScript

var luaName = regexp.MustCompile(`^[a-z][A-Za-z0-9]*$`)

func newLuaScript(name string, keys, argNames []string, session bool, body string) *luaScript {
	l := &luaScript{name: name, keys: keys, args: argNames, session: session, body: body}
	src := header(name, "key", "KEYS", keys) + header(name, "arg", "ARGV", argNames)
	if session {
		src += prelude
	}
	l.script = redis.NewScript(src + body)
	scripts = append(scripts, l)
	return l
}

// header is "local arg = {now = ARGV[1], ttl = ARGV[2], ...}\n".
func header(script, table, array string, names []string) string {
	fields := make([]string, len(names))
	for i, n := range names {
		if !luaName.MatchString(n) || slices.Index(names, n) != i {
			panic(fmt.Sprintf("session: script %s: %s name %q is not a Lua name or is given twice", script, table, n))
		}
		fields[i] = fmt.Sprintf("%s = %s[%d]", n, array, i+1)
	}
	return "local " + table + " = {" + strings.Join(fields, ", ") + "}\n"
}

// sessionScript is a script on one session: it runs after the prelude and
// takes sessionKeys and sessionArgs before its own keys and args.
func sessionScript(name string, keys, argNames []string, body string) *luaScript {
	return newLuaScript(name, append(slices.Clone(sessionKeys), keys...), append(slices.Clone(sessionArgs), argNames...), true, body)
}

// plainScript is a script on other keys than a session's, without the prelude.
func plainScript(name string, keys, argNames []string, body string) *luaScript {
	return newLuaScript(name, keys, argNames, false, body)
}

// bind is KEYS and ARGV for k and a, in the order the script declares;
// it fails unless k and a name exactly the script's keys and arguments.
func (l *luaScript) bind(k keyNames, a args) ([]string, []any, error) {
	if err := sameNames(l.keys, k); err != nil {
		return nil, nil, fmt.Errorf("script %s: keys: %w", l.name, err)
	}
	if err := sameNames(l.args, a); err != nil {
		return nil, nil, fmt.Errorf("script %s: arguments: %w", l.name, err)
	}
	keys := make([]string, len(l.keys))
	for i, n := range l.keys {
		keys[i] = k[n]
	}
	argv := make([]any, len(l.args))
	for i, n := range l.args {
		argv[i] = a[n]
	}
	return keys, argv, nil
}

func sameNames[V any](want []string, got map[string]V) error {
	for _, n := range want {
		if _, ok := got[n]; !ok {
			return fmt.Errorf("%q not given", n)
		}
	}
	if len(got) != len(want) {
		for n := range got {
			if !slices.Contains(want, n) {
				return fmt.Errorf("%q is not one of %v", n, want)
			}
		}
	}
	return nil
}

// run runs a script that is not on a session with keys k and arguments a.
func (l *luaScript) run(ctx context.Context, rdb redis.Scripter, k keyNames, a args) *redis.Cmd {
	keys, argv, err := l.bind(k, a)
	if err != nil {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	return l.script.Run(ctx, rdb, keys, argv...)
}

// start opens a session or continues the same patient and encounter's,
// and stores its QR token as the user's one live token (a new one revokes
// the earlier). Returns {session, discarded images, "new"|"reuse"}.
var startScript = sessionScript("start", []string{
	"token", // session-token:{t}
	"qr",    // qr:{userId}, the user's live QR token
}, []string{
	"newSession",  // the session to start (JSON)
	"tokenRecord", // the QR token's record (JSON)
	"tokenTtl",    // its TTL, seconds
	"discard",     // "1" to discard uncommitted photos
}, `
local cur = load(key.session)
local new = cjson.decode(arg.newSession)
local tok = cjson.decode(arg.tokenRecord)
local discard = arg.discard == '1'
local discarded = {}
local mode = 'new'
if cur then
  if cur.commitStatus == 'in_progress' then return fail('COMMIT_IN_PROGRESS') end
  local pending = 0
  if cur.commitStatus ~= 'committed' then pending = #cur.images end
  if not discard and cur.commitStatus == 'none' and cur.patientId == new.patientId and cur.encounterId == new.encounterId then
    mode = 'reuse'
  elseif pending > 0 and not discard then
    return fail('UNCOMMITTED', tostring(pending))
  elseif pending > 0 then
    discarded = cur.images
  end
end
local s = new
if mode == 'reuse' then
  s = cur
  s.lastActivity = arg.now
  save(s, arg.ttl)
else
  local extra = {patientId = new.patientId, encounterId = new.encounterId}
  if cur then
    new.version = (cur.version or 0)
    extra.previousSessionId = cur.sessionId
    -- the tombstones were the ended session's: the new one starts without
    if not whole then
      local dead = {}
      for _, f in ipairs(redis.call('HKEYS', key.session)) do
        if string.sub(f, 1, 8) == 'deleted:' then table.insert(dead, f) end
      end
      if #dead > 0 then redis.call('HDEL', key.session, unpack(dead)) end
    end
  end
  bump(new)
  save(new, arg.ttl)
  emit(new, extra)
end
tok.sessionId = s.sessionId
redis.call('SET', key.token, cjson.encode(tok), 'EX', arg.tokenTtl)
redis.call('SET', key.qr, key.token, 'EX', arg.tokenTtl)
return reply(s, mode, enc({images = discarded}))
`)

// pair uses a QR token once and pairs the phone. Returns the token record.
var pairScript = sessionScript("pair", []string{
	"token", // session-token:{t}
	"phone", // phone:{hash}, the credential
	"qr",    // qr:{userId}
}, []string{
	"userAgent",     // the phone's
	"credentialTtl", // seconds
	"phoneId",       // PhoneID of the credential
	"maxPhones",     // most phones per session
}, `
local raw = redis.call('GET', key.token)
if not raw then return fail('TOKEN_NOT_FOUND') end
local tok = cjson.decode(raw)
if tok.used then return fail('TOKEN_USED') end
if redis.call('GET', key.qr) ~= key.token then return fail('TOKEN_REVOKED') end
local s = load(key.session)
if not s or s.sessionId ~= tok.sessionId then return fail('SESSION_CHANGED') end
if #s.phones >= tonumber(arg.maxPhones) then return fail('PHONE_LIMIT', arg.maxPhones) end
tok.used = true
redis.call('SET', key.token, cjson.encode(tok), 'KEEPTTL')
redis.call('SET', key.phone, cjson.encode({userId = tok.userId, sessionId = tok.sessionId, phoneId = arg.phoneId}), 'EX', arg.credentialTtl)
table.insert(s.phones, {id = arg.phoneId, pairedAt = arg.now, userAgent = arg.userAgent})
s.phone = {id = arg.phoneId, pairedAt = arg.now, userAgent = arg.userAgent}
bump(s)
save(s, arg.ttl)
emit(s, {patientId = s.patientId, encounterId = s.encounterId, phoneId = arg.phoneId})
return reply(s, '', cjson.encode(tok))
`)

// unpair removes a phone: its credential stops resolving at once (it is
// checked against the session's phones).
var unpairScript = sessionScript("unpair", nil, []string{
	"phoneId",
	"sessionId", // "" for any
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local at = nil
for i, p in ipairs(s.phones) do
  if p.id == arg.phoneId then at = i end
end
if not at then return fail('PHONE_NOT_FOUND') end
table.remove(s.phones, at)
if type(s.pending) == 'table' then
  s.pending[arg.phoneId] = nil
  if next(s.pending) == nil then s.pending = nil end
end
s.phone = nil
local last = s.phones[#s.phones]
if last then s.phone = {id = last.id, pairedAt = last.pairedAt, userAgent = last.userAgent} end
bump(s)
save(s, arg.ttl)
emit(s, {patientId = s.patientId, encounterId = s.encounterId, phoneId = arg.phoneId})
return reply(s, '')
`)

// add records a photo. A session whose openPatientId names another patient
// takes nothing, and a photo deleted from this session (its tombstone
// "deleted:<id>", see remove) is never recorded again: IMAGE_DELETED for
// its own object, IMAGE_ID_CONFLICT for another. Returns {session,
// "added"|"duplicate"}.
var addScript = sessionScript("add", []string{
	"uploads", // the outstanding uploads of session sessionId (unused when it is "")
}, []string{
	"image",     // the photo (JSON)
	"sessionId", // the session the caller is bound to, "" for any
	"cap",       // most photos
	"patientId", // the patient the desktop has open, "" for any
	"phoneId",   // the phone the caller is, "" for the desktop; it must still be paired
}, `
-- the photo is in the session: its upload is no longer outstanding
local function recorded(img)
  if arg.sessionId ~= '' then redis.call('ZREM', key.uploads, img.s3Key) end
end
local s = head(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
if arg.phoneId ~= '' then
  local paired = false
  for _, p in ipairs(s.phones) do paired = paired or p.id == arg.phoneId end
  if not paired then return fail('PHONE_REMOVED') end
end
local img = cjson.decode(arg.image)
local old = nil
if s.images then
  local _, o = find(s, img.id)
  old = o
else
  -- the photo and its tombstone in one read: a deleted id never comes back
  local raws = redis.call('HMGET', key.session, 'image:' .. img.id, 'deleted:' .. img.id)
  if raws[1] then old = cjson.decode(raws[1]) end
  if raws[2] then
    if raws[2] ~= img.s3Key then return fail('IMAGE_ID_CONFLICT') end
    return fail('IMAGE_DELETED')
  end
end
if old then
  if old.s3Key ~= img.s3Key then return fail('IMAGE_ID_CONFLICT') end
  recorded(img)
  return replyHead(s, 'duplicate') or reply(s, 'duplicate')
end
if arg.patientId ~= '' and s.patientId ~= arg.patientId then return fail('PATIENT_MISMATCH') end
if s.openPatientId and s.openPatientId ~= '' and s.openPatientId ~= s.patientId then return fail('PATIENT_MISMATCH') end
local bad = editable(s)
if bad then return bad end
if count(s) >= tonumber(arg.cap) then return fail('CAP', arg.cap) end
bump(s)
img.version = s.version
if s.images then table.insert(s.images, img) else table.insert(s.imageIds, img.id) end
save(s, arg.ttl, {img})
emit(s, {image = img})
recorded(img)
return replyHead(s, 'added') or reply(s, 'added')
`)

// update changes one photo's metadata.
var updateScript = sessionScript("update", nil, []string{
	"imageId",
	"patch",     // the metadata patch (JSON)
	"sessionId", // "" for any
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
local _, img = find(s, arg.imageId)
if not img then return fail('IMAGE_NOT_FOUND') end
bad = changeable(img)
if bad then return bad end
if type(img.metadata) ~= 'table' then img.metadata = {} end
-- fields names what changed (never its value), for the audit trail
local fields = {}
for k, v in pairs(cjson.decode(arg.patch)) do
  local was = img.metadata[k]
  if v == '' and k ~= 'bodySite' then img.metadata[k] = nil else img.metadata[k] = v end
  if (was or '') ~= (img.metadata[k] or '') then table.insert(fields, k) end
end
table.sort(fields)
bump(s)
img.version = s.version
save(s, arg.ttl)
emit(s, {image = img, fields = fields})
return reply(s, '')
`)

// remove deletes one photo. Returns {session, image}. It leaves a
// tombstone, field "deleted:<id>" holding the photo's s3Key, which lives
// and dies with the session: a phone whose record answer was lost retries
// the same id, and add refuses it rather than bring the photo back.
var removeScript = sessionScript("remove", nil, []string{
	"imageId",
	"sessionId", // "" for any
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
local i, img = find(s, arg.imageId)
if not img then return fail('IMAGE_NOT_FOUND') end
bad = changeable(img)
if bad then return bad end
table.remove(s.images, i)
bump(s)
save(s, arg.ttl)
redis.call('HSET', key.session, 'deleted:' .. img.id, img.s3Key or '')
emit(s, {imageId = img.id})
return reply(s, '', cjson.encode(img))
`)

// processed records the thumbnailer's result. Only a photo still
// "processing" changes, so a redelivered event changes nothing. Returns
// {session, "changed"|"unchanged"}.
var processedScript = sessionScript("processed", nil, []string{
	"imageId",
	"fields", // to set: status, keys, dimensions, reason (JSON)
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
local _, img = find(s, arg.imageId)
if not img then return fail('IMAGE_NOT_FOUND') end
if img.status ~= 'processing' then return reply(s, 'unchanged') end
for k, v in pairs(cjson.decode(arg.fields)) do img[k] = v end
bump(s)
img.version = s.version
save(s, 'keep')
emit(s, {image = img})
return reply(s, 'changed')
`)

// begin starts a commit. What is in the record stays there; refused photos
// are tried again; a write left "sending" by a crash is unknown until
// looked up.
var beginScript = sessionScript("begin", []string{
	"running", // the running commits, which the committer's sweep reads
}, []string{
	"commitId",
	"sessionId",       // "" for any
	"resend",          // {imageId: new identifier} of photos the GP asks to send again (needs_checking or conflict)
	"consentRequired", // "1" when a consent record is required
	"nowMs",           // now, Unix ms, the score in key.running
	"userId",          // the member of key.running
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
if #s.images == 0 then return fail('NOTHING_TO_COMMIT') end
local rejected = 0
for _, im in ipairs(s.images) do
  if im.status == 'rejected' then rejected = rejected + 1 end
end
if rejected > 0 then return fail('REJECTED_IMAGES', tostring(rejected)) end
if arg.consentRequired == '1' and type(s.consent) ~= 'table' then return fail('CONSENT_REQUIRED') end
local resend = cjson.decode(arg.resend)
for id, _ in pairs(resend) do
  local _, im = find(s, id)
  if not im then return fail('IMAGE_NOT_FOUND') end
  local st = state(im)
  if st ~= 'needs_checking' and st ~= 'conflict' then return fail('NOT_RESENDABLE', id) end
end
for _, im in ipairs(s.images) do
  local st = state(im)
  if resend[im.id] then
    im.mediaIdentifier = resend[im.id]
    im.sentHashes = {}
    im.tries = 0
    im.sentAt = nil
    st = 'pending'
  elseif st == 'sending' then
    st = 'unknown'
  elseif st == 'refused' then
    st = 'pending'
  end
  im.commitState = st
  if st == 'in_record' then
    if im.status ~= 'processing' then im.status = 'committed' end
  else
    im.mediaId = nil
    if st == 'pending' then im.error = nil end
    if im.status == 'failed' or im.status == 'committed' then
      if im.cleanKey then im.status = 'ready' else im.status = 'processing' end
    end
  end
end
local done = inRecord(s)
s.commitStatus = 'in_progress'
s.commitId = arg.commitId
s.commit = {commitId = arg.commitId, requestedAt = arg.now, done = done, total = #s.images, success = false, mediaResourceIds = {}}
bump(s)
save(s, arg.ttl)
redis.call('ZADD', key.running, arg.nowMs, arg.userId) -- running commits, for the sweep
emit(s, {commitId = arg.commitId, done = done, total = #s.images})
return reply(s, '')
`)

// finish ends a commit with every photo in the record. arg.ttl is the
// short TTL a committed session is kept for.
var finishScript = sessionScript("finish", []string{
	"running", // the running commits
}, []string{
	"commitId",
	"userId", // the member of key.running
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= arg.commitId then return fail('STALE') end
if s.commitStatus == 'committed' then return reply(s, 'unchanged') end
if s.commitStatus ~= 'in_progress' then return fail('STALE') end
local ids = {}
for _, im in ipairs(s.images) do
  if state(im) ~= 'in_record' or not im.mediaId then return fail('NOT_IN_RECORD', im.id) end
  im.status = 'committed'
  table.insert(ids, im.mediaId)
end
s.commitStatus = 'committed'
s.commit.success = true
s.commit.done = #s.images
s.commit.total = #s.images
s.commit.waiting = nil
s.commit.finishedAt = arg.now
s.commit.mediaResourceIds = ids
s.commit.message = #ids .. ' images committed successfully'
bump(s)
save(s, arg.ttl)
redis.call('ZREM', key.running, arg.userId)
emit(s, {commitId = arg.commitId, success = true, done = #ids, total = #ids, mediaResourceIds = ids, message = s.commit.message})
return reply(s, 'changed')
`)

// fail ends a commit without every photo in the record; every photo keeps
// its state (those in the record stay in it) and the session is editable
// again. The event's errors are the photos the GP must act on.
var failScript = sessionScript("fail", []string{
	"running", // the running commits
}, []string{
	"commitId",
	"message",
	"orphans", // Media ids written for photos no longer in the session (JSON)
	"userId",  // the member of key.running
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= arg.commitId then return fail('STALE') end
if s.commitStatus ~= 'in_progress' then return reply(s, 'unchanged') end
local errs = {}
for _, im in ipairs(s.images) do
  local st = state(im)
  if st == 'sending' then im.commitState = 'unknown' end
  if st == 'refused' or st == 'conflict' or st == 'needs_checking' then
    table.insert(errs, {imageId = im.id, error = im.error or st})
  end
end
local done = inRecord(s)
s.commitStatus = 'none'
s.commit.success = false
s.commit.done = done
s.commit.waiting = nil
s.commit.finishedAt = arg.now
s.commit.message = arg.message
s.commit.orphans = cjson.decode(arg.orphans)
s.commit.mediaResourceIds = {}
bump(s)
save(s, arg.ttl)
redis.call('ZREM', key.running, arg.userId)
emit(s, {commitId = arg.commitId, success = false, message = arg.message, errors = errs, orphans = s.commit.orphans, done = done, total = #s.images, mediaResourceIds = {}})
return reply(s, 'changed')
`)

// pending records how many photos a phone still holds. The phone must
// still be paired (a report racing its removal would leave a count nothing
// clears). A phone's count is information, not a change of the photos: it
// is kept whatever the commit status. Returns {session,
// "changed"|"unchanged"}.
var pendingScript = sessionScript("pending", nil, []string{
	"sessionId", // "" for any
	"phoneId",
	"count",
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local paired = false
for _, p in ipairs(s.phones) do paired = paired or p.id == arg.phoneId end
if not paired then return fail('PHONE_REMOVED') end
local n = tonumber(arg.count)
local cur = type(s.pending) == 'table' and s.pending[arg.phoneId] or nil
if (cur and cur.count == n) or (not cur and n == 0) then return reply(s, 'unchanged') end
if type(s.pending) ~= 'table' then s.pending = {} end
if n == 0 then
  s.pending[arg.phoneId] = nil
else
  s.pending[arg.phoneId] = {count = n, updatedAt = arg.now}
end
local total = 0
for _, p in pairs(s.pending) do total = total + p.count end
-- an empty table encodes as {} on Redis and [] on miniredis: drop it
if total == 0 then s.pending = nil end
bump(s)
save(s, arg.ttl)
emit(s, {pending = s.pending, pendingPhotos = total})
return reply(s, 'changed')
`)

// photo changes one photo's commit state. in_record is a fact and always
// lands (a second, different Media for one photo fails DUPLICATE). sending
// needs the commit to be current and starts a new try; every other state
// lands only from the tries the caller saw, so an answer that arrives late
// never undoes a newer write. It reads and writes that photo alone (the
// others are only counted) and answers {"changed"|"unchanged", "", the
// session's own fields, that photo}: the committer writes every photo
// twice or more, and reading, rewriting and answering all of them each
// time made a commit's cost grow with the square of its photos.
var photoScript = sessionScript("photo", nil, []string{
	"commitId",
	"imageId",
	"identifier", // its media identifier
	"state",      // the new state
	"tries",      // the tries the caller saw
	"mediaId",    // in_record: the Media's id
	"hash",       // SHA-1 being sent (sending) or of the bytes in the record (in_record, "" if unknown)
	"error",
}, `
local s = head(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
local img = photo(s, arg.imageId)
if not img or img.mediaIdentifier ~= arg.identifier then return fail('IMAGE_NOT_FOUND') end
local want = arg.state
local cur = state(img)
local tries = img.tries or 0
if want == 'in_record' then
  if cur == 'in_record' then
    if img.mediaId == arg.mediaId then return replyPhoto(s, 'unchanged', img) end
    return fail('DUPLICATE', img.mediaId)
  end
  img.mediaId = arg.mediaId
  -- A photo still being processed keeps that status so its previews land.
  if img.status ~= 'processing' then img.status = 'committed' end
  img.error = nil
elseif want == 'sending' then
  if s.commitId ~= arg.commitId or s.commitStatus ~= 'in_progress' then return fail('STALE') end
  if cur == 'in_record' or cur == 'refused' or cur == 'conflict' or tonumber(arg.tries) ~= tries then return fail('STALE') end
  img.tries = tries + 1
  img.commitState = 'sending'
  img.sentAt = arg.now
  if type(img.sentHashes) ~= 'table' then img.sentHashes = {} end
  local known = false
  for _, h in ipairs(img.sentHashes) do known = known or h == arg.hash end
  if not known then table.insert(img.sentHashes, arg.hash) end
  -- Not shown on the screens: saved without a new version or event.
  save(s, 'keep', {img})
  return replyPhoto(s, 'changed', img)
else
  if cur == 'in_record' or tonumber(arg.tries) ~= tries then return fail('STALE') end
  if cur == want and (img.error or '') == arg.error then return replyPhoto(s, 'unchanged', img) end
  if arg.error == '' then img.error = nil else img.error = arg.error end
  if want == 'refused' or want == 'conflict' or want == 'needs_checking' then img.status = 'failed' end
end
img.commitState = want
local done = inRecordWith(s, img)
if s.commit and s.commitId == arg.commitId and s.commitStatus == 'in_progress' then s.commit.done = done end
bump(s)
img.version = s.version
save(s, arg.ttl, {img})
local hash = nil
if want == 'in_record' and arg.hash ~= '' then hash = arg.hash end
emit(s, {commitId = s.commitId, done = done, total = count(s), imageId = img.id, mediaId = img.mediaId, state = want, error = img.error, hash = hash})
return replyPhoto(s, 'changed', img)
`)

// attempt records a commit attempt beginning or waiting. Emits
// commit.progress so both screens follow a stuck commit.
var attemptScript = sessionScript("attempt", nil, []string{
	"commitId",
	"attempt", // its number
	"wait",    // {reason, message, attempt, nextTryAt, giveUpAt}, or "" while an attempt runs
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= arg.commitId or s.commitStatus ~= 'in_progress' then return fail('STALE') end
local n = tonumber(arg.attempt)
local waiting = nil
if arg.wait ~= '' then waiting = cjson.decode(arg.wait) end
if (s.commit.attempt or 0) == n and waiting == nil and s.commit.waiting == nil then return reply(s, 'unchanged') end
s.commit.attempt = n
s.commit.waiting = waiting
local done = inRecord(s)
s.commit.done = done
bump(s)
save(s, arg.ttl)
emit(s, {commitId = arg.commitId, done = done, total = #s.images, attempt = n, waiting = waiting})
return reply(s, 'changed')
`)

// stop: the GP stops waiting for a commit. The session is editable again,
// photos in the record stay so, and a write still on its way becomes
// unknown (looked up before anything is sent again). Emits commit.failed
// with stopped.
var stopScript = sessionScript("stop", []string{
	"running", // the running commits
}, []string{
	"sessionId", // "" for any
	"userId",    // the member of key.running
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
if s.commitStatus == 'committed' then return fail('COMMITTED') end
if s.commitStatus ~= 'in_progress' then return fail('NO_COMMIT') end
for _, im in ipairs(s.images) do
  if state(im) == 'sending' then
    im.commitState = 'unknown'
    im.error = 'ALEX had not answered when the commit was stopped; the photo is looked up before it is sent again'
  end
end
local done = inRecord(s)
local word = 'photos are'
if #s.images == 1 then word = 'photo is' end
s.commitStatus = 'none'
s.commit.success = false
s.commit.stopped = true
s.commit.waiting = nil
s.commit.done = done
s.commit.finishedAt = arg.now
if done == 0 then
  local kept = 'the photo is'
  if #s.images ~= 1 then kept = 'all ' .. #s.images .. ' photos are' end
  s.commit.message = string.format('Stopped waiting for ALEX. No photo reached the patient record; %s kept here to commit later.', kept)
else
  s.commit.message = string.format('Stopped waiting for ALEX. %d of %d %s in the patient record and will stay there; the rest are kept here to commit later.', done, #s.images, word)
end
bump(s)
save(s, arg.ttl)
redis.call('ZREM', key.running, arg.userId)
emit(s, {commitId = s.commitId, success = false, stopped = true, done = done, total = #s.images, message = s.commit.message, errors = {}, mediaResourceIds = {}})
return reply(s, '')
`)

// opened records the patient the practice system has open. Another patient
// than the session's holds the session (nothing is added); the session's own
// lifts the hold. Returns {session, "changed"|"unchanged"}.
var openedScript = sessionScript("opened", nil, []string{
	"patientId",
}, `
local s = load(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
local open = arg.patientId
if open == s.patientId then open = nil end
if (s.openPatientId or nil) == open or (s.openPatientId == '' and open == nil) then return reply(s, 'unchanged') end
s.openPatientId = open
s.held = open ~= nil or nil
bump(s)
save(s, arg.ttl)
emit(s, {held = open ~= nil})
return reply(s, 'changed')
`)

// consent records the patient's consent. Changeable until the commit:
// refused while one runs or once committed.
var consentScript = sessionScript("consent", nil, []string{
	"sessionId", // "" for any
	"consent",   // the consent record (JSON)
}, `
local s = head(key.session)
if not s then return fail('SESSION_NOT_FOUND') end
if arg.sessionId ~= '' and s.sessionId ~= arg.sessionId then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
s.consent = cjson.decode(arg.consent)
bump(s)
save(s, arg.ttl)
emit(s, {consent = s.consent})
return reply(s, '')
`)

// claimStuck returns the users whose commit has run since before the
// cutoff, each moved to now so that no other sweeper takes it before
// another cutoff has passed.
var claimStuckScript = plainScript("claimStuck", []string{
	"running", // the running commits
}, []string{
	"cutoff", // Unix ms
	"now",    // Unix ms
	"limit",  // at most this many
}, `
local ids = redis.call('ZRANGEBYSCORE', key.running, '-inf', arg.cutoff, 'LIMIT', 0, tonumber(arg.limit))
for _, id in ipairs(ids) do redis.call('ZADD', key.running, arg.now, id) end
return ids
`)

// forgetRunning removes the user from the running commits only if no
// commit began since the sweep claimed it (a new begin moves the time).
var forgetRunningScript = plainScript("forgetRunning", []string{
	"running", // the running commits
}, []string{
	"userId",
	"at", // the time the sweep claimed it, Unix ms
}, `
local at = redis.call('ZSCORE', key.running, arg.userId)
if at and tonumber(at) == tonumber(arg.at) then return redis.call('ZREM', key.running, arg.userId) end
return 0
`)
