package session

import "github.com/redis/go-redis/v9"

// Every script follows one calling convention so the Go side stays uniform:
//
//	KEYS[1] user:{id}   KEYS[2] outbox stream   (KEYS[3..] per script)
//	ARGV[1] now (RFC 3339)   ARGV[2] TTL seconds   ARGV[3] event envelope
//	ARGV[4] event subject     ARGV[5..] per script
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
// photos, with imageIds (their order); field "image:<id>" holds each photo.
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
local whole = false -- KEYS[1] holds a session stored whole, as a string
local stored = {}   -- the photo ids stored under KEYS[1] when it was read
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
local function head(key)
  local raw = redis.pcall('HGET', key, 'session')
  local s
  if type(raw) == 'table' and raw.err then
    raw = redis.call('GET', key)
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
local function load(key)
  local s = head(key)
  if not s or s.images then return s end
  s.images = {}
  if #s.imageIds > 0 then
    local fields = {}
    for i, id in ipairs(s.imageIds) do fields[i] = 'image:' .. id end
    for _, raw in ipairs(redis.call('HMGET', key, unpack(fields))) do
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
    if ttl == 'keep' then keepMs = redis.call('PTTL', KEYS[1]) end
    redis.call('DEL', KEYS[1])
    whole = false
  else
    local gone = {}
    for id in pairs(stored) do
      if not now[id] then table.insert(gone, 'image:' .. id) end
    end
    if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
  end
  redis.call('HSET', KEYS[1], 'session', hdr, unpack(fields))
  if ttl ~= 'keep' then
    redis.call('EXPIRE', KEYS[1], ttl)
  elseif keepMs and keepMs > 0 then
    redis.call('PEXPIRE', KEYS[1], keepMs)
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
    local raws = redis.call('HMGET', KEYS[1], unpack(fields))
    for i, id in ipairs(s.imageIds) do
      if written[id] then table.insert(r, written[id]) elseif raws[i] then table.insert(r, raws[i]) end
    end
  end
  return r
end
local function bump(s)
  s.version = (s.version or 0) + 1
  s.lastActivity = ARGV[1]
end
local function emit(s, extra)
  local ev = cjson.decode(ARGV[3])
  if type(ev.data) ~= 'table' then ev.data = {} end
  ev.data.sessionId = s.sessionId
  ev.data.version = s.version
  ev.data.imageCount = count(s)
  for k, v in pairs(extra or {}) do ev.data[k] = v end
  redis.call('XADD', KEYS[2], '*', 'id', ev.id, 'subject', ARGV[4], 'event', enc(ev))
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
`

func script(body string) *redis.Script { return redis.NewScript(prelude + body) }

// start: KEYS[3] session-token:{t}, KEYS[4] qr:{userId} (the user's one
// live QR token: a new one revokes the earlier). ARGV[5] new session,
// ARGV[6] token record, ARGV[7] token TTL, ARGV[8] "1" to discard
// uncommitted photos. Returns {session, discarded images, "new"|"reuse"}.
var startScript = script(`
local cur = load(KEYS[1])
local new = cjson.decode(ARGV[5])
local tok = cjson.decode(ARGV[6])
local discard = ARGV[8] == '1'
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
  s.lastActivity = ARGV[1]
  save(s, ARGV[2])
else
  local extra = {patientId = new.patientId, encounterId = new.encounterId}
  if cur then
    new.version = (cur.version or 0)
    extra.previousSessionId = cur.sessionId
    -- the tombstones were the ended session's: the new one starts without
    if not whole then
      local dead = {}
      for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
        if string.sub(f, 1, 8) == 'deleted:' then table.insert(dead, f) end
      end
      if #dead > 0 then redis.call('HDEL', KEYS[1], unpack(dead)) end
    end
  end
  bump(new)
  save(new, ARGV[2])
  emit(new, extra)
end
tok.sessionId = s.sessionId
redis.call('SET', KEYS[3], cjson.encode(tok), 'EX', ARGV[7])
redis.call('SET', KEYS[4], KEYS[3], 'EX', ARGV[7])
return reply(s, mode, enc({images = discarded}))
`)

// pair: KEYS[3] session-token:{t}, KEYS[4] phone:{hash}, KEYS[5]
// qr:{userId}. ARGV[5] user agent, ARGV[6] credential TTL, ARGV[7] phone
// id, ARGV[8] most phones per session. Returns the token record.
var pairScript = script(`
local raw = redis.call('GET', KEYS[3])
if not raw then return fail('TOKEN_NOT_FOUND') end
local tok = cjson.decode(raw)
if tok.used then return fail('TOKEN_USED') end
if redis.call('GET', KEYS[5]) ~= KEYS[3] then return fail('TOKEN_REVOKED') end
local s = load(KEYS[1])
if not s or s.sessionId ~= tok.sessionId then return fail('SESSION_CHANGED') end
if #s.phones >= tonumber(ARGV[8]) then return fail('PHONE_LIMIT', ARGV[8]) end
tok.used = true
redis.call('SET', KEYS[3], cjson.encode(tok), 'KEEPTTL')
redis.call('SET', KEYS[4], cjson.encode({userId = tok.userId, sessionId = tok.sessionId, phoneId = ARGV[7]}), 'EX', ARGV[6])
table.insert(s.phones, {id = ARGV[7], pairedAt = ARGV[1], userAgent = ARGV[5]})
s.phone = {id = ARGV[7], pairedAt = ARGV[1], userAgent = ARGV[5]}
bump(s)
save(s, ARGV[2])
emit(s, {patientId = s.patientId, encounterId = s.encounterId, phoneId = ARGV[7]})
return reply(s, '', cjson.encode(tok))
`)

// unpair: ARGV[5] phone id, ARGV[6] session id. The phone's credential
// stops resolving at once (it is checked against the session's phones).
var unpairScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[6] ~= '' and s.sessionId ~= ARGV[6] then return fail('SESSION_CHANGED') end
local at = nil
for i, p in ipairs(s.phones) do
  if p.id == ARGV[5] then at = i end
end
if not at then return fail('PHONE_NOT_FOUND') end
table.remove(s.phones, at)
if type(s.pending) == 'table' then
  s.pending[ARGV[5]] = nil
  if next(s.pending) == nil then s.pending = nil end
end
s.phone = nil
local last = s.phones[#s.phones]
if last then s.phone = {id = last.id, pairedAt = last.pairedAt, userAgent = last.userAgent} end
bump(s)
save(s, ARGV[2])
emit(s, {patientId = s.patientId, encounterId = s.encounterId, phoneId = ARGV[5]})
return reply(s, '')
`)

// add: ARGV[5] image, ARGV[6] session id the caller is bound to ("" for
// any), ARGV[7] cap, ARGV[8] patient the desktop has open ("" for any),
// ARGV[9] the phone the caller is ("" for the desktop), which must still be
// paired. A session whose openPatientId names another patient takes
// nothing either, and a photo deleted from this session (its tombstone
// "deleted:<id>", see remove) is never recorded again: IMAGE_DELETED for
// its own object, IMAGE_ID_CONFLICT for another. Returns {session,
// "added"|"duplicate"}.
var addScript = script(`
local s = head(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[6] ~= '' and s.sessionId ~= ARGV[6] then return fail('SESSION_CHANGED') end
if ARGV[9] ~= '' then
  local paired = false
  for _, p in ipairs(s.phones) do paired = paired or p.id == ARGV[9] end
  if not paired then return fail('PHONE_REMOVED') end
end
local img = cjson.decode(ARGV[5])
local old = nil
if s.images then
  local _, o = find(s, img.id)
  old = o
else
  -- the photo and its tombstone in one read: a deleted id never comes back
  local raws = redis.call('HMGET', KEYS[1], 'image:' .. img.id, 'deleted:' .. img.id)
  if raws[1] then old = cjson.decode(raws[1]) end
  if raws[2] then
    if raws[2] ~= img.s3Key then return fail('IMAGE_ID_CONFLICT') end
    return fail('IMAGE_DELETED')
  end
end
if old then
  if old.s3Key ~= img.s3Key then return fail('IMAGE_ID_CONFLICT') end
  return replyHead(s, 'duplicate') or reply(s, 'duplicate')
end
if ARGV[8] ~= '' and s.patientId ~= ARGV[8] then return fail('PATIENT_MISMATCH') end
if s.openPatientId and s.openPatientId ~= '' and s.openPatientId ~= s.patientId then return fail('PATIENT_MISMATCH') end
local bad = editable(s)
if bad then return bad end
if count(s) >= tonumber(ARGV[7]) then return fail('CAP', ARGV[7]) end
bump(s)
img.version = s.version
if s.images then table.insert(s.images, img) else table.insert(s.imageIds, img.id) end
save(s, ARGV[2], {img})
emit(s, {image = img})
return replyHead(s, 'added') or reply(s, 'added')
`)

// update: ARGV[5] image id, ARGV[6] metadata patch, ARGV[7] session id.
var updateScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[7] ~= '' and s.sessionId ~= ARGV[7] then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
local _, img = find(s, ARGV[5])
if not img then return fail('IMAGE_NOT_FOUND') end
bad = changeable(img)
if bad then return bad end
if type(img.metadata) ~= 'table' then img.metadata = {} end
-- fields names what changed (never its value), for the audit trail
local fields = {}
for k, v in pairs(cjson.decode(ARGV[6])) do
  local was = img.metadata[k]
  if v == '' and k ~= 'bodySite' then img.metadata[k] = nil else img.metadata[k] = v end
  if (was or '') ~= (img.metadata[k] or '') then table.insert(fields, k) end
end
table.sort(fields)
bump(s)
img.version = s.version
save(s, ARGV[2])
emit(s, {image = img, fields = fields})
return reply(s, '')
`)

// remove: ARGV[5] image id, ARGV[6] session id. Returns {session, image}.
// It leaves a tombstone, field "deleted:<id>" holding the photo's s3Key,
// which lives and dies with the session: a phone whose record answer was
// lost retries the same id, and add refuses it rather than bring the
// photo back.
var removeScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[6] ~= '' and s.sessionId ~= ARGV[6] then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
local i, img = find(s, ARGV[5])
if not img then return fail('IMAGE_NOT_FOUND') end
bad = changeable(img)
if bad then return bad end
table.remove(s.images, i)
bump(s)
save(s, ARGV[2])
redis.call('HSET', KEYS[1], 'deleted:' .. img.id, img.s3Key or '')
emit(s, {imageId = img.id})
return reply(s, '', cjson.encode(img))
`)

// processed: ARGV[5] image id, ARGV[6] fields to set (status, keys,
// dimensions, reason). Only a photo still "processing" changes, so a
// redelivered event changes nothing. Returns {session, "changed"|"unchanged"}.
var processedScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
local _, img = find(s, ARGV[5])
if not img then return fail('IMAGE_NOT_FOUND') end
if img.status ~= 'processing' then return reply(s, 'unchanged') end
for k, v in pairs(cjson.decode(ARGV[6])) do img[k] = v end
bump(s)
img.version = s.version
save(s, 'keep')
emit(s, {image = img})
return reply(s, 'changed')
`)

// begin: ARGV[5] commit id, ARGV[6] session id, ARGV[7] {imageId: new
// identifier} of photos the GP asks to send again (needs_checking or
// conflict), ARGV[8] "1" when a consent record is required, ARGV[9] now
// (Unix ms) and ARGV[10] user id for KEYS[3], the running commits the
// committer's sweep reads. What is in the record stays there; refused photos are tried
// again; a write left "sending" by a crash is unknown until looked up.
var beginScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[6] ~= '' and s.sessionId ~= ARGV[6] then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
if #s.images == 0 then return fail('NOTHING_TO_COMMIT') end
local rejected = 0
for _, im in ipairs(s.images) do
  if im.status == 'rejected' then rejected = rejected + 1 end
end
if rejected > 0 then return fail('REJECTED_IMAGES', tostring(rejected)) end
if ARGV[8] == '1' and type(s.consent) ~= 'table' then return fail('CONSENT_REQUIRED') end
local resend = cjson.decode(ARGV[7])
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
s.commitId = ARGV[5]
s.commit = {commitId = ARGV[5], requestedAt = ARGV[1], done = done, total = #s.images, success = false, mediaResourceIds = {}}
bump(s)
save(s, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[9], ARGV[10]) -- running commits, for the sweep
emit(s, {commitId = ARGV[5], done = done, total = #s.images})
return reply(s, '')
`)

// finish: ARGV[5] commit id, ARGV[6] user id; KEYS[3] the running
// commits. Every photo must be in the record. ARGV[2] is the short TTL a
// committed session is kept for.
var finishScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= ARGV[5] then return fail('STALE') end
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
s.commit.finishedAt = ARGV[1]
s.commit.mediaResourceIds = ids
s.commit.message = #ids .. ' images committed successfully'
bump(s)
save(s, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[6])
emit(s, {commitId = ARGV[5], success = true, done = #ids, total = #ids, mediaResourceIds = ids, message = s.commit.message})
return reply(s, 'changed')
`)

// fail: ARGV[5] commit id, ARGV[6] message, ARGV[7] orphan Media ids,
// ARGV[8] user id; KEYS[3] the running commits. The
// commit ends without every photo in the record; every photo keeps its
// state (those in the record stay in it) and the session is editable again.
// The event's errors are the photos the GP must act on.
var failScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= ARGV[5] then return fail('STALE') end
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
s.commit.finishedAt = ARGV[1]
s.commit.message = ARGV[6]
s.commit.orphans = cjson.decode(ARGV[7])
s.commit.mediaResourceIds = {}
bump(s)
save(s, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[8])
emit(s, {commitId = ARGV[5], success = false, message = ARGV[6], errors = errs, orphans = s.commit.orphans, done = done, total = #s.images, mediaResourceIds = {}})
return reply(s, 'changed')
`)

// pending: ARGV[5] session id, ARGV[6] phone id, which must still be
// paired (a report racing the phone's removal would leave a count nothing
// clears), ARGV[7] count. A phone's count is information, not a change of
// the photos: it is kept whatever the commit status. Returns {session,
// "changed"|"unchanged"}.
var pendingScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[5] ~= '' and s.sessionId ~= ARGV[5] then return fail('SESSION_CHANGED') end
local paired = false
for _, p in ipairs(s.phones) do paired = paired or p.id == ARGV[6] end
if not paired then return fail('PHONE_REMOVED') end
local n = tonumber(ARGV[7])
local cur = type(s.pending) == 'table' and s.pending[ARGV[6]] or nil
if (cur and cur.count == n) or (not cur and n == 0) then return reply(s, 'unchanged') end
if type(s.pending) ~= 'table' then s.pending = {} end
if n == 0 then
  s.pending[ARGV[6]] = nil
else
  s.pending[ARGV[6]] = {count = n, updatedAt = ARGV[1]}
end
local total = 0
for _, p in pairs(s.pending) do total = total + p.count end
-- an empty table encodes as {} on Redis and [] on miniredis: drop it
if total == 0 then s.pending = nil end
bump(s)
save(s, ARGV[2])
emit(s, {pending = s.pending, pendingPhotos = total})
return reply(s, 'changed')
`)

// photo: ARGV[5] commit id, ARGV[6] image id, ARGV[7] its media
// identifier, ARGV[8] new state, ARGV[9] tries the caller saw, ARGV[10]
// media id (in_record), ARGV[11] SHA-1 being sent (sending) or of the
// bytes in the record (in_record, "" if unknown), ARGV[12] error.
// in_record is a fact and always lands (a second, different Media for one
// photo fails DUPLICATE). sending needs the commit to be current and starts
// a new try; every other state lands only from the tries the caller saw,
// so an answer that arrives late never undoes a newer write. Returns
// {session, "changed"|"unchanged"}.
var photoScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
local _, img = find(s, ARGV[6])
if not img or img.mediaIdentifier ~= ARGV[7] then return fail('IMAGE_NOT_FOUND') end
local want = ARGV[8]
local cur = state(img)
local tries = img.tries or 0
if want == 'in_record' then
  if cur == 'in_record' then
    if img.mediaId == ARGV[10] then return reply(s, 'unchanged') end
    return fail('DUPLICATE', img.mediaId)
  end
  img.mediaId = ARGV[10]
  -- A photo still being processed keeps that status so its previews land.
  if img.status ~= 'processing' then img.status = 'committed' end
  img.error = nil
elseif want == 'sending' then
  if s.commitId ~= ARGV[5] or s.commitStatus ~= 'in_progress' then return fail('STALE') end
  if cur == 'in_record' or cur == 'refused' or cur == 'conflict' or tonumber(ARGV[9]) ~= tries then return fail('STALE') end
  img.tries = tries + 1
  img.commitState = 'sending'
  img.sentAt = ARGV[1]
  if type(img.sentHashes) ~= 'table' then img.sentHashes = {} end
  local known = false
  for _, h in ipairs(img.sentHashes) do known = known or h == ARGV[11] end
  if not known then table.insert(img.sentHashes, ARGV[11]) end
  -- Not shown on the screens: saved without a new version or event.
  save(s, 'keep')
  return reply(s, 'changed')
else
  if cur == 'in_record' or tonumber(ARGV[9]) ~= tries then return fail('STALE') end
  if cur == want and (img.error or '') == ARGV[12] then return reply(s, 'unchanged') end
  if ARGV[12] == '' then img.error = nil else img.error = ARGV[12] end
  if want == 'refused' or want == 'conflict' or want == 'needs_checking' then img.status = 'failed' end
end
img.commitState = want
local done = inRecord(s)
if s.commit and s.commitId == ARGV[5] and s.commitStatus == 'in_progress' then s.commit.done = done end
bump(s)
img.version = s.version
save(s, ARGV[2])
local hash = nil
if want == 'in_record' and ARGV[11] ~= '' then hash = ARGV[11] end
emit(s, {commitId = s.commitId, done = done, total = #s.images, imageId = img.id, mediaId = img.mediaId, state = want, error = img.error, hash = hash})
return reply(s, 'changed')
`)

// attempt: ARGV[5] commit id, ARGV[6] attempt number, ARGV[7] the wait
// ({reason, message, attempt, nextTryAt, giveUpAt}) or "" while an attempt
// runs. Emits commit.progress so both screens follow a stuck commit.
var attemptScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= ARGV[5] or s.commitStatus ~= 'in_progress' then return fail('STALE') end
local n = tonumber(ARGV[6])
local waiting = nil
if ARGV[7] ~= '' then waiting = cjson.decode(ARGV[7]) end
if (s.commit.attempt or 0) == n and waiting == nil and s.commit.waiting == nil then return reply(s, 'unchanged') end
s.commit.attempt = n
s.commit.waiting = waiting
local done = inRecord(s)
s.commit.done = done
bump(s)
save(s, ARGV[2])
emit(s, {commitId = ARGV[5], done = done, total = #s.images, attempt = n, waiting = waiting})
return reply(s, 'changed')
`)

// stop: ARGV[5] session id, ARGV[6] user id; KEYS[3] the running
// commits. The GP stops waiting: the session is editable
// again, photos in the record stay so, and a write still on its way becomes
// unknown (looked up before anything is sent again). Emits commit.failed
// with stopped.
var stopScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[5] ~= '' and s.sessionId ~= ARGV[5] then return fail('SESSION_CHANGED') end
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
s.commit.finishedAt = ARGV[1]
if done == 0 then
  local kept = 'the photo is'
  if #s.images ~= 1 then kept = 'all ' .. #s.images .. ' photos are' end
  s.commit.message = string.format('Stopped waiting for ALEX. No photo reached the patient record; %s kept here to commit later.', kept)
else
  s.commit.message = string.format('Stopped waiting for ALEX. %d of %d %s in the patient record and will stay there; the rest are kept here to commit later.', done, #s.images, word)
end
bump(s)
save(s, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[6])
emit(s, {commitId = s.commitId, success = false, stopped = true, done = done, total = #s.images, message = s.commit.message, errors = {}, mediaResourceIds = {}})
return reply(s, '')
`)

// opened: ARGV[5] the patient the practice system has open. Another patient
// than the session's holds the session (nothing is added); the session's own
// lifts the hold. Returns {session, "changed"|"unchanged"}.
var openedScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
local open = ARGV[5]
if open == s.patientId then open = nil end
if (s.openPatientId or nil) == open or (s.openPatientId == '' and open == nil) then return reply(s, 'unchanged') end
s.openPatientId = open
s.held = open ~= nil or nil
bump(s)
save(s, ARGV[2])
emit(s, {held = open ~= nil})
return reply(s, 'changed')
`)

// consent: ARGV[5] session id, ARGV[6] the consent record. Changeable until
// the commit: refused while one runs or once committed.
var consentScript = script(`
local s = head(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[5] ~= '' and s.sessionId ~= ARGV[5] then return fail('SESSION_CHANGED') end
local bad = editable(s)
if bad then return bad end
s.consent = cjson.decode(ARGV[6])
bump(s)
save(s, ARGV[2])
emit(s, {consent = s.consent})
return reply(s, '')
`)

// claimStuck: KEYS[1] the running commits, ARGV[1] cutoff (Unix ms),
// ARGV[2] now, ARGV[3] at most this many. Returns the users whose commit
// has run since before the cutoff, each moved to now so that no other
// sweeper takes it before another cutoff has passed.
var claimStuckScript = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
`)

// forgetRunning: KEYS[1] the running commits, ARGV[1] user id, ARGV[2] the
// time the sweep claimed it at. Removes the user only if no commit began
// since (a new begin moves the time).
var forgetRunningScript = redis.NewScript(`
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)
