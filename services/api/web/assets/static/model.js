// model.js: the session as both pages know it, and nothing else: no DOM, no
// network, no clock. A page feeds it snapshots (GET session) and realtime
// events; every change to a session carries the session's version after it,
// so each photo and the commit remember the version they reflect and an older,
// repeated or out-of-order message changes nothing. A version that skips
// ahead means something was missed: the result asks for a snapshot.
//
// Functions return a new model and never change the one given.

/** empty is the model before anything is known. */
export function empty() {
  return {
    known: false,       // a snapshot (or a 404) has been applied
    ended: false,       // GET session answered that there is none
    sessionId: '', userId: '', patientId: '', encounterId: '',
    version: 0,         // highest version applied
    images: [],         // in session order, each with _v: the version it reflects
    removed: {},        // image id -> version it was removed at
    commitStatus: 'none',
    commitId: '',
    commit: null,       // the session's commit record (CommitResult and what the committer adds)
    commitV: 0,         // version the commit fields reflect
    phone: null,
    phones: [],         // every phone paired and not removed: {id, pairedAt, userAgent}
    pending: {},        // phone id -> {count, updatedAt}
    pendingV: 0,
    consent: null,      // the patient's consent record, once made
    consentV: 0,
    session: null,      // the other fields of the last snapshot, as sent
  };
}

const isCommitEvent = (name) => name.startsWith('commit-') || name === 'session-committed';
const KNOWN_COMMIT = new Set(['commit-started', 'commit-progress', 'session-committed', 'commit-failed']);
const IMAGE_EVENTS = new Set(['image-uploaded', 'image-updated', 'image-processed', 'image-rejected']);
// Presigned URLs never travel in events (the relay strips them): an image an
// event updates keeps the URLs it had while its preview is the same object.
const URL_FIELDS = ['s3Url', 'previewUrl', 'viewerUrl'];

/** noSession is the model once GET session answered 404: nothing to show. */
export function noSession() {
  return { ...empty(), known: true, ended: true };
}

/**
 * applySnapshot takes a session as GET session returns it. A snapshot of the
 * same session older than what events already showed is ignored; one of
 * another session replaces everything.
 */
export function applySnapshot(m, s) {
  if (!s || !s.sessionId) return m;
  const same = m.sessionId === s.sessionId;
  const v = Number(s.version || 0);
  if (same && v < m.version) return m;
  const images = (s.images || []).map((im) => ({ ...im, _v: v }));
  const { images: _i, ...rest } = s;
  return {
    ...empty(),
    known: true,
    sessionId: s.sessionId, userId: s.userId || '', patientId: s.patientId || '', encounterId: s.encounterId || '',
    version: v,
    images,
    removed: {},
    commitStatus: s.commitStatus || 'none',
    commitId: s.commitId || '',
    commit: s.commit || null,
    commitV: v,
    phone: s.phone || null,
    phones: s.phones || [],
    pending: s.pending || {},
    pendingV: v,
    consent: s.consent || null,
    consentV: v,
    session: rest,
  };
}

/**
 * applyEvent applies one realtime event. It returns {model, reconcile}:
 * reconcile is true when the page should GET the session (a gap in versions,
 * another session, a change an event does not describe whole).
 */
export function applyEvent(m, name, d) {
  d = d || {};
  const v = Number(d.version || 0);
  if (!m.sessionId || (d.sessionId && d.sessionId !== m.sessionId)) return { model: m, reconcile: true };
  let reconcile = v > m.version + 1; // something between was missed
  let next = m;
  if (IMAGE_EVENTS.has(name)) {
    const r = applyImage(m, d.image, v);
    next = r.model;
    reconcile = reconcile || r.reconcile;
  } else if (name === 'image-removed') {
    const known = m.images.find((im) => im.id === d.imageId);
    const seen = known ? known._v : (m.removed[d.imageId] || 0);
    if (d.imageId && v > seen) {
      next = { ...m, images: m.images.filter((im) => im.id !== d.imageId), removed: { ...m.removed, [d.imageId]: v } };
    }
  } else if (name === 'consent-recorded') {
    if (v > m.consentV && d.consent) next = { ...m, consent: d.consent, consentV: v };
  } else if (name === 'phone-pending') {
    if (v > m.pendingV) next = { ...m, pending: d.pending || {}, pendingV: v };
  } else if (isCommitEvent(name)) {
    if (v > m.commitV) next = applyCommit(m, name, d, v);
    if (d.image) next = applyImage(next, d.image, v).model;
    // a commit event this page does not know in full: the session says the rest
    reconcile = reconcile || !KNOWN_COMMIT.has(name);
  } else {
    // session-started, phone-paired, and whatever comes later: the snapshot says it whole
    reconcile = true;
  }
  if (v > next.version) next = { ...next, version: v };
  return { model: next, reconcile };
}

function applyImage(m, im, v) {
  if (!im || !im.id) return { model: m, reconcile: false };
  const i = m.images.findIndex((x) => x.id === im.id);
  const known = i >= 0 ? m.images[i] : null;
  const seen = known ? known._v : (m.removed[im.id] || 0);
  if (v && v <= seen) return { model: m, reconcile: false }; // a repeat, or older than what is shown
  const next = { ...im, _v: v || seen + 1 };
  if (known && known.previewKey === im.previewKey) {
    for (const f of URL_FIELDS) if (!next[f] && known[f]) next[f] = known[f];
  }
  const images = m.images.slice();
  if (i >= 0) images[i] = next;
  else images.push(next);
  // a finished preview's URL is signed only in a snapshot
  const reconcile = next.status === 'ready' && !!next.previewKey && !next.previewUrl;
  return { model: { ...m, images }, reconcile };
}

function applyCommit(m, name, d, v) {
  const c = { ...(m.commit || {}) };
  let status = m.commitStatus;
  // the commit-level fields of the event; imageId, mediaId, state and error are one photo's
  for (const [k, val] of Object.entries(d)) {
    if (!['sessionId', 'version', 'imageCount', 'image', 'imageId', 'mediaId', 'state', 'error', 'success'].includes(k)) c[k] = val;
  }
  let images = m.images;
  if (d.imageId) {
    images = m.images.map((im) => {
      if (im.id !== d.imageId) return im;
      const next = { ...im };
      if (d.mediaId) next.mediaId = d.mediaId;
      if (d.state) next.commitState = d.state;
      if (d.state || d.error !== undefined) next.error = d.error || '';
      return next;
    });
  }
  switch (name) {
    case 'commit-started':
      status = 'in_progress';
      for (const k of ['message', 'errors', 'orphans', 'waiting', 'stopped', 'finishedAt']) if (d[k] === undefined) delete c[k];
      c.success = false;
      if (c.total === undefined) c.total = d.imageCount || m.images.length;
      images = images.map((im) => (im.error ? { ...im, error: '' } : im));
      break;
    case 'commit-progress':
      status = 'in_progress';
      if (d.waiting === undefined) delete c.waiting; // an attempt runs: no longer waiting
      break;
    case 'session-committed':
      status = 'committed';
      c.success = true;
      c.finishedAt = c.finishedAt || d.finishedAt || 'now';
      delete c.waiting;
      images = images.map((im) => ({ ...im, status: 'committed' }));
      break;
    case 'commit-failed': {
      status = 'none';
      c.success = false;
      c.finishedAt = c.finishedAt || d.finishedAt || 'now';
      delete c.waiting;
      const byId = new Map((d.errors || []).map((e) => [e.imageId, e.error]));
      images = images.map((im) => (byId.has(im.id) ? { ...im, status: 'failed', error: byId.get(im.id) } : im));
      break;
    }
    default: // a commit event this page does not know: its fields, and the status as it was
  }
  return { ...m, commitStatus: status, commitId: c.commitId || m.commitId, commit: c, commitV: v, images };
}

/**
 * commitPhase is where the commit stands, from the session's own fields so a
 * reload or a missed event shows the same:
 * idle | running | stuck (running, and the committer waits to try again:
 * commit.waiting) | done | failed (stopped too when the GP stopped waiting).
 * It carries done, total, message, errors and, when stuck, reason (what the
 * GP reads), attempt, nextTryAt and giveUpAt.
 */
export function commitPhase(m) {
  const c = m.commit || {};
  const base = { done: Number(c.done || 0), total: Number(c.total || m.images.length), message: c.message || '', errors: [] };
  if (m.commitStatus === 'in_progress') {
    const w = c.waiting;
    if (w) {
      return {
        ...base, phase: 'stuck', reason: w.message || w.reason || '', attempt: Number(w.attempt || c.attempt || 0),
        nextTryAt: w.nextTryAt || '', giveUpAt: w.giveUpAt || '',
      };
    }
    return { ...base, phase: 'running' };
  }
  if (m.commitStatus === 'committed') {
    const total = Number(c.total || m.images.length);
    return { ...base, phase: 'done', done: total, total };
  }
  if (c.finishedAt && !c.success) {
    const errors = m.images.filter((im) => im.error).map((im) => ({ imageId: im.id, error: im.error }));
    for (const e of c.errors || []) if (!errors.some((x) => x.imageId === e.imageId)) errors.push(e);
    return { ...base, phase: 'failed', errors, stopped: !!c.stopped };
  }
  return { ...base, phase: 'idle' };
}

/** pendingPhotos is how many photos the phones say they still hold. */
export function pendingPhotos(m) {
  let n = 0;
  for (const p of Object.values(m.pending || {})) n += Number(p.count || 0);
  return n;
}

/** counts tallies the photos by status. */
export function counts(m) {
  const c = { total: m.images.length, processing: 0, ready: 0, rejected: 0, failed: 0, committed: 0 };
  for (const im of m.images) if (c[im.status] !== undefined) c[im.status]++;
  return c;
}

/** photoNumber is the 1-based number a photo is shown under, or 0. */
export function photoNumber(m, id) {
  return m.images.findIndex((im) => im.id === id) + 1;
}

/** image finds a photo by id. */
export function image(m, id) {
  return m.images.find((im) => im.id === id) || null;
}

/**
 * codingClosed says why photo id can no longer be coded, or '' while it
 * can: 'deleted' (no longer in the session), 'committed' (in the record),
 * 'committing' (a commit runs: the session is locked) or 'held' (the
 * practice system has another patient open). A page closes an open editor
 * for any of these and says why; anything else (a new status, coding from
 * another screen, a fresh snapshot) leaves the editor and what is typed in it.
 */
export function codingClosed(m, id) {
  const im = image(m, id);
  if (!im) return 'deleted';
  if (im.status === 'committed' || m.commitStatus === 'committed') return 'committed';
  if (m.commitStatus !== 'none') return 'committing';
  if (m.session && m.session.held) return 'held';
  return '';
}

/**
 * otherPatient is true while the session holds another patient's photos than
 * the one the practice system has open: then nothing may be added or edited.
 */
export function otherPatient(m, openPatientId) {
  return !!(m.sessionId && openPatientId && m.patientId !== openPatientId && m.commitStatus !== 'committed');
}

/**
 * consentMissing is true while a commit would be refused for want of a
 * consent record (the API's CONSENT_REQUIRED, as the vocabulary says).
 */
export function consentMissing(m, vocab) {
  const required = !vocab || !vocab.consent || vocab.consent.required !== false;
  return required && !!m.sessionId && !m.consent;
}
