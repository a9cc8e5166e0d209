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
// returns the new session. cjson writes an empty table as {}, so enc()
// restores [] for the fields that are arrays: a plain find (a memchr scan)
// guards each substitution, which runs only when that field is empty, so
// the cost does not grow with the photos. save() keeps what it wrote and
// encoded() hands it back, so a session is encoded once per change.
const prelude = `
local arrays = {'images', 'mediaResourceIds', 'orphans', 'errors', 'sentHashes', 'phones'}
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
local saved = nil
local function encoded(s)
  return saved or enc(s)
end
local function load(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local s = cjson.decode(raw)
  if type(s.images) ~= 'table' then s.images = {} end
  if type(s.phones) ~= 'table' then s.phones = {} end
  return s
end
local function fail(code, detail)
  if detail then return redis.error_reply('CI_' .. code .. ' ' .. detail) end
  return redis.error_reply('CI_' .. code)
end
local function save(s, ttl)
  saved = enc(s)
  if ttl == 'keep' then
    redis.call('SET', KEYS[1], saved, 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], saved, 'EX', ttl)
  end
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
  ev.data.imageCount = #s.images
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
  end
  bump(new)
  save(new, ARGV[2])
  emit(new, extra)
end
tok.sessionId = s.sessionId
redis.call('SET', KEYS[3], cjson.encode(tok), 'EX', ARGV[7])
redis.call('SET', KEYS[4], KEYS[3], 'EX', ARGV[7])
return {encoded(s), enc({images = discarded}), mode}
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
return cjson.encode(tok)
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
return encoded(s)
`)

// add: ARGV[5] image, ARGV[6] session id the caller is bound to ("" for
// any), ARGV[7] cap, ARGV[8] patient the desktop has open ("" for any),
// ARGV[9] the phone the caller is ("" for the desktop), which must still be
// paired. A session whose openPatientId names another patient takes
// nothing either. Returns {session, "added"|"duplicate"}.
var addScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[6] ~= '' and s.sessionId ~= ARGV[6] then return fail('SESSION_CHANGED') end
if ARGV[9] ~= '' then
  local paired = false
  for _, p in ipairs(s.phones) do paired = paired or p.id == ARGV[9] end
  if not paired then return fail('PHONE_REMOVED') end
end
local img = cjson.decode(ARGV[5])
local _, old = find(s, img.id)
if old then
  if old.s3Key ~= img.s3Key then return fail('IMAGE_ID_CONFLICT') end
  return {encoded(s), 'duplicate'}
end
if ARGV[8] ~= '' and s.patientId ~= ARGV[8] then return fail('PATIENT_MISMATCH') end
if s.openPatientId and s.openPatientId ~= '' and s.openPatientId ~= s.patientId then return fail('PATIENT_MISMATCH') end
local bad = editable(s)
if bad then return bad end
if #s.images >= tonumber(ARGV[7]) then return fail('CAP', ARGV[7]) end
bump(s)
img.version = s.version
table.insert(s.images, img)
save(s, ARGV[2])
emit(s, {image = img})
return {encoded(s), 'added'}
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
for k, v in pairs(cjson.decode(ARGV[6])) do
  if v == '' and k ~= 'bodySite' then img.metadata[k] = nil else img.metadata[k] = v end
end
bump(s)
img.version = s.version
save(s, ARGV[2])
emit(s, {image = img})
return encoded(s)
`)

// remove: ARGV[5] image id, ARGV[6] session id. Returns {session, image}.
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
emit(s, {imageId = img.id})
return {encoded(s), cjson.encode(img)}
`)

// processed: ARGV[5] image id, ARGV[6] fields to set (status, keys,
// dimensions, reason). Only a photo still "processing" changes, so a
// redelivered event changes nothing. Returns {session, "changed"|"unchanged"}.
var processedScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
local _, img = find(s, ARGV[5])
if not img then return fail('IMAGE_NOT_FOUND') end
if img.status ~= 'processing' then return {encoded(s), 'unchanged'} end
for k, v in pairs(cjson.decode(ARGV[6])) do img[k] = v end
bump(s)
img.version = s.version
save(s, 'keep')
emit(s, {image = img})
return {encoded(s), 'changed'}
`)

// begin: ARGV[5] commit id, ARGV[6] session id, ARGV[7] {imageId: new
// identifier} of photos the GP asks to send again (needs_checking or
// conflict). What is in the record stays there; refused photos are tried
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
emit(s, {commitId = ARGV[5], done = done, total = #s.images})
return encoded(s)
`)

// finish: ARGV[5] commit id. Every photo must be in the record. ARGV[2] is
// the short TTL a committed session is kept for.
var finishScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= ARGV[5] then return fail('STALE') end
if s.commitStatus == 'committed' then return {encoded(s), 'unchanged'} end
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
emit(s, {commitId = ARGV[5], success = true, done = #ids, total = #ids, mediaResourceIds = ids, message = s.commit.message})
return {encoded(s), 'changed'}
`)

// fail: ARGV[5] commit id, ARGV[6] message, ARGV[7] orphan Media ids. The
// commit ends without every photo in the record; every photo keeps its
// state (those in the record stay in it) and the session is editable again.
// The event's errors are the photos the GP must act on.
var failScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if s.commitId ~= ARGV[5] then return fail('STALE') end
if s.commitStatus ~= 'in_progress' then return {encoded(s), 'unchanged'} end
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
emit(s, {commitId = ARGV[5], success = false, message = ARGV[6], errors = errs, orphans = s.commit.orphans, done = done, total = #s.images, mediaResourceIds = {}})
return {encoded(s), 'changed'}
`)

// pending: ARGV[5] session id, ARGV[6] phone id, ARGV[7] count. A phone's
// count is information, not a change of the photos: it is kept whatever the
// commit status. Returns {session, "changed"|"unchanged"}.
var pendingScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
if ARGV[5] ~= '' and s.sessionId ~= ARGV[5] then return fail('SESSION_CHANGED') end
local n = tonumber(ARGV[7])
local cur = type(s.pending) == 'table' and s.pending[ARGV[6]] or nil
if (cur and cur.count == n) or (not cur and n == 0) then return {encoded(s), 'unchanged'} end
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
return {encoded(s), 'changed'}
`)

// photo: ARGV[5] commit id, ARGV[6] image id, ARGV[7] its media
// identifier, ARGV[8] new state, ARGV[9] tries the caller saw, ARGV[10]
// media id (in_record), ARGV[11] SHA-1 being sent (sending), ARGV[12] error.
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
    if img.mediaId == ARGV[10] then return {encoded(s), 'unchanged'} end
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
  if type(img.sentHashes) ~= 'table' then img.sentHashes = {} end
  local known = false
  for _, h in ipairs(img.sentHashes) do known = known or h == ARGV[11] end
  if not known then table.insert(img.sentHashes, ARGV[11]) end
  -- Not shown on the screens: saved without a new version or event.
  save(s, 'keep')
  return {encoded(s), 'changed'}
else
  if cur == 'in_record' or tonumber(ARGV[9]) ~= tries then return fail('STALE') end
  if cur == want and (img.error or '') == ARGV[12] then return {encoded(s), 'unchanged'} end
  if ARGV[12] == '' then img.error = nil else img.error = ARGV[12] end
  if want == 'refused' or want == 'conflict' or want == 'needs_checking' then img.status = 'failed' end
end
img.commitState = want
local done = inRecord(s)
if s.commit and s.commitId == ARGV[5] and s.commitStatus == 'in_progress' then s.commit.done = done end
bump(s)
img.version = s.version
save(s, ARGV[2])
emit(s, {commitId = s.commitId, done = done, total = #s.images, imageId = img.id, mediaId = img.mediaId, state = want, error = img.error})
return {encoded(s), 'changed'}
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
if (s.commit.attempt or 0) == n and waiting == nil and s.commit.waiting == nil then return {encoded(s), 'unchanged'} end
s.commit.attempt = n
s.commit.waiting = waiting
local done = inRecord(s)
s.commit.done = done
bump(s)
save(s, ARGV[2])
emit(s, {commitId = ARGV[5], done = done, total = #s.images, attempt = n, waiting = waiting})
return {encoded(s), 'changed'}
`)

// stop: ARGV[5] session id. The GP stops waiting: the session is editable
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
emit(s, {commitId = s.commitId, success = false, stopped = true, done = done, total = #s.images, message = s.commit.message, errors = {}, mediaResourceIds = {}})
return encoded(s)
`)

// opened: ARGV[5] the patient the practice system has open. Another patient
// than the session's holds the session (nothing is added); the session's own
// lifts the hold. Returns {session, "changed"|"unchanged"}.
var openedScript = script(`
local s = load(KEYS[1])
if not s then return fail('SESSION_NOT_FOUND') end
local open = ARGV[5]
if open == s.patientId then open = nil end
if (s.openPatientId or nil) == open or (s.openPatientId == '' and open == nil) then return {encoded(s), 'unchanged'} end
s.openPatientId = open
s.held = open ~= nil or nil
bump(s)
save(s, ARGV[2])
emit(s, {held = open ~= nil})
return {encoded(s), 'changed'}
`)
