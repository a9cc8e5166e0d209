// desktop.js: the desktop widget. It starts a capture for a patient, shows
// the QR code for the phone, shows every photo live (realtime events applied
// by version, a GET of the session after any gap), lets the GP code each photo
// and commit them, and says honestly whether it is live.

import { Api, ApiError, MAX_IMAGES, WARN_IMAGES, confirmDialog, el, plural } from './api.js';
import { Live } from './live.js';
import { UploadQueue } from './upload.js';

const $ = (id) => document.getElementById(id);

const LATERALITY = [['', '—'], ['left', 'Left'], ['right', 'Right'], ['bilateral', 'Both']];
const VIEWS = [['', '—'], ['anterior', 'Anterior'], ['posterior', 'Posterior'], ['lateral', 'Lateral'],
  ['medial', 'Medial'], ['close-up', 'Close-up'], ['other', 'Other']];
const STATUS_TEXT = {
  compressing: 'Preparing', waiting: 'Waiting', uploading: 'Uploading', recording: 'Uploading',
  retrying: 'Retrying', failed: 'Upload failed', blocked: 'Not uploaded',
  processing: 'Processing', ready: 'Ready', rejected: 'Rejected', committed: 'Committed',
  failedcommit: 'Failed',
};
const SOURCE_TEXT = { mobile: 'Phone', desktop: 'Desktop' };

// state is everything the screen shows.
const state = {
  token: '', dev: false, userId: '', patientId: '', encounterId: '',
  session: null,        // the last session (without trusting its images: see images)
  noSession: false,     // GET session answered 404
  version: 0,           // highest session version applied
  images: new Map(),    // id -> image, each with _v (version it reflects)
  removed: new Map(),   // id -> version it was removed at
  qr: null,             // {image, url, expiresAt, sessionId}
  showQr: false,
  commit: { phase: 'idle', done: 0, total: 0, message: '', errors: [], commitId: '' },
  commitVersion: 0,     // session version the commit panel reflects
  sites: [],
  conn: '',
  lastUpdate: 0,
};

const api = new Api(async () => state.token, async () => (state.dev ? refreshDevToken() : ''));
let live;
let uploads;
const localThumbs = new Map(); // imageId -> object URL of what this page uploaded

// ---------- start-up ----------

async function main() {
  const frag = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const saved = JSON.parse(localStorage.getItem('clinimg.demo') || '{}');
  state.patientId = frag.get('patientId') || query.get('patientId') || saved.patientId || '';
  state.encounterId = frag.get('encounterId') || query.get('encounterId') || saved.encounterId || '';
  state.userId = frag.get('userId') || query.get('userId') || saved.userId || '';
  if (frag.get('token')) {
    state.token = frag.get('token');
    history.replaceState(null, '', location.pathname + location.search); // the token leaves the address bar
    state.userId = state.userId || jwtSubject(state.token);
  } else {
    state.dev = true;
    state.userId = state.userId || 'user_abc';
    state.patientId = state.patientId || 'ZZZ0016';
    state.encounterId = state.encounterId || 'enc_001';
    try {
      await refreshDevToken();
    } catch {
      fatal('Open this widget from the practice system: it needs the patient context and your sign-in.');
      return;
    }
    setupDemo();
  }
  api.userId = state.userId;

  setupCapture();
  $('start-btn').addEventListener('click', () => startCapture());
  $('qr-new').addEventListener('click', () => startCapture(false, true));
  $('qr-show').addEventListener('click', () => startCapture(false, true));
  $('commit-btn').addEventListener('click', () => commit());
  $('mismatch-btn').addEventListener('click', () => startCapture());
  $('viewer-close').addEventListener('click', () => $('viewer').close());
  $('viewer').addEventListener('click', (e) => { if (e.target === $('viewer')) $('viewer').close(); });
  setInterval(renderClock, 1000);

  api.bodySites().then((sites) => {
    state.sites = Array.isArray(sites) ? sites : [];
    const dl = $('body-sites');
    dl.replaceChildren(...state.sites.map((s) => el('option', { value: siteLabel(s.display, s.code) })));
    for (const card of document.querySelectorAll('.card')) syncBodySite(card);
  }).catch(() => { /* the picker then only accepts what is already set */ });

  live = new Live(api, {
    onEvent,
    onSession: applySnapshot,
    onSessionError,
    onState: (s) => { state.conn = s; render(); },
  });
  live.start();
  render();
}

async function refreshDevToken() {
  const res = await fetch(`/dev/token?userId=${encodeURIComponent(state.userId)}`, { cache: 'no-store' });
  if (!res.ok) throw new ApiError(res.status, 'dev_token', 'No development sign-in');
  const data = await res.json();
  state.token = data.token;
  if (data.userId) state.userId = data.userId;
  return state.token;
}

function jwtSubject(token) {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(p)).sub || '';
  } catch {
    return '';
  }
}

function setupDemo() {
  const d = $('demo');
  d.hidden = false;
  const f = $('demo-form');
  f.userId.value = state.userId;
  f.patientId.value = state.patientId;
  f.encounterId.value = state.encounterId;
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    localStorage.setItem('clinimg.demo', JSON.stringify({
      userId: f.userId.value.trim(), patientId: f.patientId.value.trim(), encounterId: f.encounterId.value.trim(),
    }));
    const q = new URLSearchParams({ userId: f.userId.value.trim(), patientId: f.patientId.value.trim(), encounterId: f.encounterId.value.trim() });
    location.search = q.toString();
  });
}

function fatal(text) {
  const f = $('fatal');
  f.textContent = text;
  f.hidden = false;
}

// ---------- applying what the server says ----------

// applySnapshot takes a fresh GET of the session. A snapshot older than what
// live events already showed is ignored (the next poll or event fixes it).
function applySnapshot(s) {
  state.lastUpdate = Date.now();
  if (state.session && s.sessionId === state.session.sessionId && s.version < state.version) return;
  if (!state.session || s.sessionId !== state.session.sessionId) {
    state.removed.clear();
    state.commitVersion = 0; // versions count per session
  }
  state.noSession = false;
  state.session = s;
  state.version = s.version;
  const next = new Map();
  for (const im of s.images || []) {
    im._v = s.version;
    next.set(im.id, im);
  }
  state.images = next;
  if (s.version >= state.commitVersion) {
    state.commitVersion = s.version;
    commitFromSession(s);
  }
  render();
}

function onSessionError(e) {
  if (e.status === 404 && e.code === 'session_not_found') {
    state.session = null;
    state.noSession = true;
    state.images = new Map();
    state.lastUpdate = Date.now();
    render();
  } else if (e.status === 401 || e.status === 403) {
    fatal('Your sign-in has expired. Reopen the widget from the practice system.');
  }
}

// commitFromSession derives the commit panel from the session's own record,
// so a reload or a missed event still shows the right outcome.
function commitFromSession(s) {
  const c = s.commit;
  const cm = state.commit;
  if (s.commitStatus === 'in_progress') {
    Object.assign(cm, { phase: 'running', done: c ? c.done : 0, total: c ? c.total : s.images.length, commitId: s.commitId || '' });
  } else if (s.commitStatus === 'committed') {
    Object.assign(cm, {
      phase: 'done', done: c ? c.total : 0, total: c ? c.total : 0,
      message: (c && c.message) || `${plural(c ? c.total : s.images.length, 'image')} committed successfully`,
    });
  } else if (c && c.finishedAt && !c.success && cm.phase !== 'confirm') {
    const errors = (s.images || []).filter((im) => im.error).map((im) => ({ imageId: im.id, error: im.error }));
    Object.assign(cm, { phase: 'failed', message: c.message || 'The commit failed; nothing was saved.', errors });
  } else if (cm.phase === 'running' || cm.phase === 'done') {
    cm.phase = 'idle';
  }
}

let reconcileTimer;
function reconcileSoon(ms = 200) {
  clearTimeout(reconcileTimer);
  reconcileTimer = setTimeout(() => live.reconcile(), ms);
}

function onEvent(name, d) {
  state.lastUpdate = Date.now();
  const v = Number(d.version || 0);
  if (state.session && d.sessionId && d.sessionId !== state.session.sessionId) {
    reconcileSoon(0); // another session started for this user
    return;
  }
  if (!state.session) {
    reconcileSoon(0);
    return;
  }
  if (v && v > state.version + 1) reconcileSoon(); // we missed something
  if (name.startsWith('commit-') || name === 'session-committed') {
    if (v && v <= state.commitVersion) return; // a duplicate, or older than what is shown
    state.commitVersion = Math.max(state.commitVersion, v);
  }
  switch (name) {
    case 'image-uploaded':
    case 'image-updated':
    case 'image-processed':
    case 'image-rejected': {
      const im = d.image;
      if (!im || !im.id) break;
      const known = state.images.get(im.id);
      const seen = known ? known._v : (state.removed.get(im.id) || 0);
      if (v && v <= seen) break; // duplicate or older than what we show
      if (known && !im.previewUrl && known.previewUrl && known.previewKey === im.previewKey) {
        im.previewUrl = known.previewUrl;
        im.viewerUrl = known.viewerUrl;
      }
      im._v = v || seen + 1;
      state.images.set(im.id, im);
      if (im.status === 'ready' && !im.previewUrl) reconcileSoon(); // presigned URLs come with a GET
      break;
    }
    case 'image-removed': {
      const known = state.images.get(d.imageId);
      if (known && v && v <= known._v) break;
      state.images.delete(d.imageId);
      state.removed.set(d.imageId, v);
      break;
    }
    case 'phone-paired':
    case 'session-started':
      reconcileSoon(0);
      break;
    case 'commit-started':
      Object.assign(state.commit, { phase: 'running', done: d.done || 0, total: d.total || d.imageCount || state.images.size, commitId: d.commitId, errors: [] });
      break;
    case 'commit-progress':
      if (state.commit.phase !== 'done') {
        state.commit.phase = 'running';
        state.commit.done = Math.max(state.commit.done, d.done || 0);
        state.commit.total = d.total || state.commit.total;
      }
      if (d.imageId && d.mediaId) {
        const im = state.images.get(d.imageId);
        if (im) { im.status = 'committed'; im.mediaId = d.mediaId; }
      }
      break;
    case 'session-committed':
      Object.assign(state.commit, {
        phase: 'done', done: d.total || d.imageCount, total: d.total || d.imageCount,
        message: d.message || `${plural(d.imageCount || 0, 'image')} committed successfully`, errors: [],
      });
      reconcileSoon(0);
      break;
    case 'commit-failed':
      Object.assign(state.commit, { phase: 'failed', message: d.message || 'The commit failed; nothing was saved.', errors: d.errors || [] });
      reconcileSoon(0);
      break;
    default:
      break;
  }
  if (v > state.version) state.version = v;
  render();
}

// ---------- actions ----------

async function startCapture(discard = false, again = false) {
  const btns = [$('start-btn'), $('qr-new'), $('qr-show')];
  btns.forEach((b) => { b.disabled = true; });
  try {
    const patient = state.patientId || (state.session && state.session.patientId);
    const encounter = state.encounterId || (state.session && state.session.encounterId);
    const r = await api.startSession(patient, encounter, discard);
    state.qr = { image: r.qrCodeImage, url: r.qrCodeUrl, expiresAt: Date.parse(r.expiresAt), sessionId: r.sessionId };
    state.showQr = again; // after a phone pairs the QR folds away unless asked for again
    if (state.commit.phase === 'done' || state.commit.phase === 'failed') state.commit.phase = 'idle';
    await live.reconcile();
  } catch (e) {
    if (e.code === 'uncommitted_images') {
      const n = e.body.count || 0;
      const ok = await confirmDialog({
        title: 'Discard uncommitted photos?',
        body: `${plural(n, 'photo')} of another patient ${n === 1 ? 'has' : 'have'} not been committed. Starting a capture for patient ${state.patientId} discards ${n === 1 ? 'it' : 'them'}.`,
        ok: `Discard ${plural(n, 'photo')}`, danger: true,
      });
      if (ok) return startCapture(true, again);
    } else {
      banner('error', e.code === 'commit_in_progress' ? 'A commit is in progress; wait for it to finish.' : `Could not start: ${e.message}`);
    }
  } finally {
    btns.forEach((b) => { b.disabled = false; });
    render();
  }
}

async function commit() {
  const n = state.images.size;
  const patient = state.session ? state.session.patientId : '';
  const ok = await confirmDialog({
    title: 'Commit photos?',
    body: `Commit ${plural(n, 'photo')} to the record of patient ${patient}?`,
    ok: `Commit ${plural(n, 'photo')}`,
  });
  if (!ok) return;
  Object.assign(state.commit, { phase: 'running', done: 0, total: n, message: '', errors: [] });
  render();
  try {
    const r = await api.commit();
    if (r.__status === 202) {
      waitForCommit();
      return;
    }
    Object.assign(state.commit, {
      phase: 'done', done: r.imageCount, total: r.imageCount,
      message: r.message || `${plural(r.imageCount, 'image')} committed successfully`,
    });
  } catch (e) {
    if (e.code === 'commit_in_progress') {
      waitForCommit();
      return;
    }
    Object.assign(state.commit, {
      phase: 'failed',
      message: e.network ? 'No answer from the server; checking the outcome…' : (e.message || 'The commit failed.'),
      errors: e.body.errors || [],
    });
    if (e.network) waitForCommit();
  }
  live.reconcile();
  render();
}

// waitForCommit polls the commit until it ends, for when the answer did not
// come back in time or the stream is down.
async function waitForCommit() {
  for (let i = 0; i < 150; i++) {
    await new Promise((r) => setTimeout(r, 2000));
    try {
      const c = await api.commitStatus();
      if (c.commitStatus !== 'in_progress') break;
      if (c.commit) Object.assign(state.commit, { done: Math.max(state.commit.done, c.commit.done), total: c.commit.total });
      render();
    } catch { /* keep polling */ }
  }
  live.reconcile();
}

async function patch(id, fields, card) {
  card.dataset.saving = String(Number(card.dataset.saving || 0) + 1);
  setCardNote(card, 'Saving…');
  try {
    const r = await api.patchImage(id, fields);
    const im = r.image;
    if (im && r.session) {
      const known = state.images.get(id);
      if (!known || r.session.version > known._v) {
        if (known && !im.previewUrl) { im.previewUrl = known.previewUrl; im.viewerUrl = known.viewerUrl; }
        im._v = r.session.version;
        state.images.set(id, im);
      }
    }
    setCardNote(card, 'Saved');
  } catch (e) {
    setCardNote(card, e.code === 'invalid_metadata' ? e.message : `Not saved: ${e.message}`, true);
  } finally {
    card.dataset.saving = String(Number(card.dataset.saving) - 1);
    render();
  }
}

async function remove(id) {
  const ok = await confirmDialog({ title: 'Delete photo?', body: 'The photo is removed from this session and never committed.', ok: 'Delete', danger: true });
  if (!ok) return;
  try {
    await api.deleteImage(id);
    const known = state.images.get(id);
    state.images.delete(id);
    state.removed.set(id, known ? known._v : state.version);
  } catch (e) {
    banner('error', `Could not delete: ${e.message}`);
  }
  render();
}

// ---------- desktop upload ----------

function setupCapture() {
  uploads = new UploadQueue(api, {
    source: 'desktop',
    onChange: () => render(),
    onRecorded: (it, r) => {
      if (it.thumb) localThumbs.set(it.imageId, it.thumb);
      if (r.session) applySnapshot(r.session);
      setTimeout(() => { uploads.items.delete(it.localId); render(); }, 0);
    },
  });
  $('file').addEventListener('change', (e) => {
    addFiles(e.target.files);
    e.target.value = '';
  });
  const drop = $('drop');
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const ev of ['dragleave', 'drop']) {
    drop.addEventListener(ev, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    addFiles([...e.dataTransfer.files].filter((f) => f.type.startsWith('image/')));
  });
}

function addFiles(files) {
  const room = MAX_IMAGES - state.images.size - uploads.active;
  const list = [...files];
  if (list.length > room) {
    banner('warn', `Only ${plural(Math.max(0, room), 'more photo')} fit in this session. Maximum 50 images reached. Please commit before adding more.`);
  }
  if (room > 0) uploads.add(list.slice(0, room));
}

// ---------- rendering ----------

let bannerSeq = 0;
function banner(kind, text) {
  const id = `b${++bannerSeq}`;
  const b = el('p', { class: `banner ${kind}`, role: 'alert', id, 'data-test': `banner-${kind}` }, text,
    el('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => b.remove() }, '×'));
  $('banners').append(b);
  setTimeout(() => b.remove(), 10000);
}

function siteLabel(display, code) { return display ? `${display} (${code})` : code; }

function findSite(text) {
  const t = text.trim().toLowerCase();
  if (!t) return { code: '', display: '' };
  return state.sites.find((s) => siteLabel(s.display, s.code).toLowerCase() === t
    || s.display.toLowerCase() === t || s.code === t) || null;
}

function countImages() { return state.images.size + uploads.active; }

function render() {
  const s = state.session;
  const committed = s && s.commitStatus === 'committed';
  const active = s && !committed;

  // header
  const pid = s ? s.patientId : state.patientId;
  $('patient').textContent = pid ? `Patient ${pid}${s && s.encounterId ? ` · encounter ${s.encounterId}` : ''}` : '';
  const conn = $('conn');
  conn.dataset.state = state.conn;
  conn.textContent = {
    live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting… checking every 3 s',
  }[state.conn] || '';

  // start panel
  const start = $('start');
  start.hidden = !(state.noSession || committed) || !state.patientId;
  $('start-btn').textContent = committed ? `Start next capture for patient ${state.patientId}` : `Start capture for patient ${state.patientId}`;
  $('start-text').textContent = committed ? 'This session is committed.' : 'No capture in progress.';

  // the practice system's patient is not the session's: say so before anything is coded
  const mismatch = active && state.patientId && s.patientId !== state.patientId;
  $('mismatch').hidden = !mismatch;
  if (mismatch) {
    $('mismatch-text').textContent = `These photos are for patient ${s.patientId}, not the current patient ${state.patientId}.`;
    $('mismatch-btn').textContent = `Start capture for ${state.patientId}`;
  }

  // QR and phone
  const paired = s && s.phone;
  const qrVisible = active && state.qr && state.qr.sessionId === s.sessionId && (state.showQr || !paired);
  $('qr').hidden = !qrVisible;
  if (qrVisible) {
    const img = $('qr-img');
    if (img.getAttribute('src') !== state.qr.image) img.src = state.qr.image;
    $('qr-link').href = state.qr.url;
    $('phone-state').textContent = paired ? phoneText(s.phone) : 'Waiting for the phone…';
    $('phone-state').classList.toggle('ok', !!paired);
  }
  $('paired').hidden = !(active && !qrVisible);
  if (active && !qrVisible) {
    $('paired-state').textContent = paired ? phoneText(s.phone) : 'No phone connected yet.';
    $('paired-state').classList.toggle('ok', !!paired);
    $('qr-show').textContent = paired ? 'Pair another phone' : 'Show QR code';
  }
  renderClock();

  // capture area
  const n = countImages();
  $('capture').hidden = !s;
  const full = n >= MAX_IMAGES;
  $('drop').hidden = !active;
  $('file').disabled = full || state.commit.phase === 'running';
  $('drop').classList.toggle('disabled', full);
  renderGrid(!active || state.commit.phase === 'running');
  $('empty').hidden = n > 0;
  renderLimit(n, active);

  renderCommit();
}

function phoneText(p) {
  const t = new Date(p.pairedAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return `Phone connected${p.userAgent ? ` (${shortAgent(p.userAgent)})` : ''} at ${t}`;
}

function shortAgent(ua) {
  const os = /iPhone|iPad/.test(ua) ? 'iPhone' : /Android/.test(ua) ? 'Android' : /Mac/.test(ua) ? 'Mac' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : '';
  const br = /CriOS|Chrome|Chromium/.test(ua) ? 'Chrome' : /Firefox|FxiOS/.test(ua) ? 'Firefox' : /Safari/.test(ua) ? 'Safari' : '';
  return [os, br].filter(Boolean).join(' ') || 'browser';
}

function renderClock() {
  if (!state.qr || $('qr').hidden) return;
  const left = Math.round((state.qr.expiresAt - Date.now()) / 1000);
  const x = $('qr-expiry');
  if (left > 0) {
    x.textContent = `Expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
    x.classList.remove('error');
  } else {
    x.textContent = 'This QR code has expired. Make a new one to pair a phone.';
    x.classList.add('error');
  }
  $('qr-img').classList.toggle('expired', left <= 0);
}

function renderLimit(n, active) {
  let w = document.getElementById('limit');
  if (!w) {
    w = el('p', { id: 'limit', class: 'banner', role: 'status', 'data-test': 'limit' });
    $('capture').prepend(w);
  }
  if (active && n >= MAX_IMAGES) {
    w.className = 'banner error';
    w.textContent = 'Maximum 50 images reached. Please commit before adding more.';
    w.hidden = false;
  } else if (active && n >= WARN_IMAGES) {
    w.className = 'banner warn';
    w.textContent = `You have ${n} images. Consider committing this batch.`;
    w.hidden = false;
  } else {
    w.hidden = true;
  }
}

let commitPoll;
function renderCommit() {
  const s = state.session;
  const c = state.commit;
  // while a commit runs, read the session every few seconds as well: the
  // outcome must show even if its event is lost
  if (c.phase === 'running' && !commitPoll) commitPoll = setInterval(() => live.reconcile(), 3000);
  if (c.phase !== 'running' && commitPoll) { clearInterval(commitPoll); commitPoll = null; }
  const bar = $('commitbar');
  const btn = $('commit-btn');
  const note = $('commit-note');
  const prog = $('progress');
  const n = state.images.size;
  bar.hidden = !s || (n === 0 && c.phase === 'idle');
  bar.dataset.phase = c.phase;
  prog.hidden = c.phase !== 'running';
  if (c.phase === 'running') {
    const pct = c.total ? Math.round((100 * c.done) / c.total) : 0;
    prog.firstElementChild.style.width = `${Math.max(4, pct)}%`;
    prog.setAttribute('aria-valuemax', String(c.total));
    prog.setAttribute('aria-valuenow', String(c.done));
  }
  const processing = [...state.images.values()].filter((im) => im.status === 'processing').length;
  const rejected = [...state.images.values()].filter((im) => im.status === 'rejected').length;
  const uploading = uploads.active;
  note.className = 'muted';
  btn.hidden = false;
  switch (c.phase) {
    case 'running':
      note.textContent = `Committing… ${c.done} of ${c.total}`;
      btn.disabled = true;
      btn.textContent = 'Committing…';
      break;
    case 'done':
      note.className = 'ok';
      note.textContent = c.message;
      btn.hidden = true;
      break;
    case 'failed': {
      note.className = 'error';
      note.replaceChildren(el('strong', {}, /^commit failed/i.test(c.message) ? c.message : `Commit failed: ${c.message}`),
        c.errors.length ? el('ul', { class: 'errors' }, c.errors.map((x) => el('li', {}, `Photo ${photoIndex(x.imageId)}: ${x.error}`))) : '');
      btn.disabled = n === 0 || processing > 0;
      btn.textContent = 'Retry commit';
      break;
    }
    default: {
      btn.textContent = `Commit ${plural(n, 'photo')}`;
      btn.disabled = n === 0 || processing > 0 || rejected > 0 || uploading > 0 || state.session.commitStatus === 'committed';
      if (uploading) note.textContent = `Waiting for ${plural(uploading, 'upload')}…`;
      else if (processing) note.textContent = `Preparing ${plural(processing, 'photo')}…`;
      else if (rejected) note.textContent = `Delete ${plural(rejected, 'rejected photo')} to commit.`;
      else note.textContent = n ? `To patient ${s.patientId}` : '';
    }
  }
}

function photoIndex(id) {
  let i = 0;
  for (const k of state.images.keys()) {
    i++;
    if (k === id) return i;
  }
  return '?';
}

function renderGrid(readOnly) {
  const grid = $('grid');
  const want = [];
  for (const it of uploads.items.values()) {
    if (it.state !== 'done') want.push(`u:${it.localId}`);
  }
  for (const id of state.images.keys()) want.push(`i:${id}`);
  const have = new Map([...grid.children].map((c) => [c.dataset.key, c]));
  for (const [k, c] of have) if (!want.includes(k)) c.remove();
  let prev = null;
  let idx = 0;
  for (const k of want) {
    let card = have.get(k);
    if (!card) card = k.startsWith('u:') ? uploadCard(k) : imageCard(k);
    if (k.startsWith('u:')) updateUploadCard(card, uploads.items.get(k.slice(2)));
    else updateImageCard(card, state.images.get(k.slice(2)), readOnly, ++idx);
    if (prev ? prev.nextSibling !== card : grid.firstChild !== card) {
      if (prev) prev.after(card); else grid.prepend(card);
    }
    prev = card;
  }
}

function uploadCard(key) {
  return el('li', { class: 'card uploading', dataset: { key, test: 'upload-card' } },
    el('div', { class: 'thumb' }, el('img', { alt: 'Photo being uploaded' }),
      el('span', { class: 'chip' })),
    el('div', { class: 'fields' },
      el('div', { class: 'bar-track' }, el('span')),
      el('p', { class: 'note' }),
      el('p', { class: 'row' },
        el('button', { type: 'button', class: 'btn small retry', hidden: true }, 'Retry'),
        el('button', { type: 'button', class: 'btn small discard', hidden: true }, 'Remove'))));
}

function updateUploadCard(card, it) {
  const img = card.querySelector('img');
  if (it.thumb && img.getAttribute('src') !== it.thumb) img.src = it.thumb;
  const chip = card.querySelector('.chip');
  chip.textContent = STATUS_TEXT[it.state] || it.state;
  chip.className = `chip st-${it.state}`;
  card.querySelector('.bar-track span').style.width = `${Math.round((it.progress || 0) * 100)}%`;
  card.querySelector('.note').textContent = it.error || '';
  const retry = card.querySelector('.retry');
  retry.hidden = it.state !== 'failed';
  retry.onclick = () => uploads.retry(it.localId);
  const discard = card.querySelector('.discard');
  discard.hidden = it.state !== 'failed' && it.state !== 'blocked';
  discard.onclick = () => uploads.discard(it.localId);
}

function imageCard(key) {
  const id = key.slice(2);
  const uid = `f-${id.slice(0, 8)}`;
  const site = el('input', { id: `${uid}-site`, class: 'site', list: 'body-sites', autocomplete: 'off', placeholder: 'Search body sites', 'data-test': 'body-site' });
  const lat = el('select', { id: `${uid}-lat`, class: 'lat', 'data-test': 'laterality' }, LATERALITY.map(([v, t]) => el('option', { value: v }, t)));
  const view = el('select', { id: `${uid}-view`, class: 'view', 'data-test': 'view' }, VIEWS.map(([v, t]) => el('option', { value: v }, t)));
  const notes = el('textarea', { id: `${uid}-notes`, class: 'notes', rows: 2, maxlength: 1000, 'data-test': 'notes' });
  const del = el('button', { type: 'button', class: 'btn small danger', 'data-test': 'delete' }, 'Delete');
  const card = el('li', { class: 'card', dataset: { key, id, test: 'image-card' } },
    el('div', { class: 'thumb' },
      el('button', { type: 'button', class: 'zoom', 'aria-label': 'View larger', 'data-test': 'zoom', onclick: () => view(id) },
        el('img', { alt: '', loading: 'lazy', 'data-test': 'preview', hidden: true })),
      el('span', { class: 'placeholder spin' }),
      el('span', { class: 'chip', 'data-test': 'status' }),
      el('span', { class: 'src', 'data-test': 'source' })),
    el('div', { class: 'fields' },
      el('label', { for: site.id }, 'Body site'), site,
      el('div', { class: 'row two' },
        el('span', {}, el('label', { for: lat.id }, 'Side'), lat),
        el('span', {}, el('label', { for: view.id }, 'View'), view)),
      el('label', { for: notes.id }, 'Notes'), notes,
      el('p', { class: 'row' }, el('span', { class: 'note', 'aria-live': 'polite', 'data-test': 'card-note' }), del)));

  site.addEventListener('change', () => {
    const found = findSite(site.value);
    if (!found) {
      setCardNote(card, 'Pick a body site from the list', true);
      site.setAttribute('aria-invalid', 'true');
      return;
    }
    site.removeAttribute('aria-invalid');
    site.value = found.code ? siteLabel(found.display, found.code) : '';
    patch(id, { bodySite: found.code, bodySiteDisplay: found.display }, card);
  });
  lat.addEventListener('change', () => patch(id, { laterality: lat.value }, card));
  view.addEventListener('change', () => patch(id, { viewType: view.value }, card));
  let t;
  const flush = () => {
    if (!card.dataset.notesDirty) return;
    clearTimeout(t);
    delete card.dataset.notesDirty;
    patch(id, { notes: notes.value }, card);
  };
  notes.addEventListener('input', () => {
    card.dataset.notesDirty = '1';
    clearTimeout(t);
    t = setTimeout(flush, 800);
  });
  notes.addEventListener('blur', flush);
  del.addEventListener('click', () => remove(id));
  card.querySelector('img').addEventListener('error', (e) => {
    // a presigned URL expired, or the temporary copy is gone after a commit:
    // show the placeholder, and fetch fresh URLs at most once a minute
    const img = e.target;
    card.dataset.broken = img.getAttribute('src') || '';
    img.hidden = true;
    card.querySelector('.placeholder').hidden = false;
    const now = Date.now();
    if (now - Number(img.dataset.retried || 0) > 60000 && card.dataset.status !== 'committed') {
      img.dataset.retried = String(now);
      reconcileSoon(0);
    }
  });
  return card;
}

function updateImageCard(card, im, readOnly, idx) {
  const img = card.querySelector('img');
  let src = im.previewUrl || localThumbs.get(im.id) || '';
  if (src && src === card.dataset.broken) src = '';
  if (src && img.getAttribute('src') !== src) img.src = src;
  img.hidden = !src;
  img.alt = `Photo ${idx}${im.metadata && im.metadata.bodySiteDisplay ? `, ${im.metadata.bodySiteDisplay}` : ''}`;
  const ph = card.querySelector('.placeholder');
  ph.hidden = !!src;
  const waiting = im.status === 'processing' || im.status === 'ready';
  ph.classList.toggle('spin', waiting);
  ph.textContent = waiting ? '' : im.status === 'committed' ? 'In the patient record' : 'No preview';
  const st = im.status === 'failed' ? 'failedcommit' : im.status;
  const chip = card.querySelector('.chip');
  chip.textContent = STATUS_TEXT[st] || im.status;
  chip.className = `chip st-${st}`;
  card.dataset.status = im.status;
  const source = card.querySelector('.src');
  source.textContent = SOURCE_TEXT[im.source] || im.source || '';
  const m = im.metadata || {};
  const focused = card.contains(document.activeElement);
  const saving = Number(card.dataset.saving || 0) > 0;
  const site = card.querySelector('.site');
  if (!(focused && document.activeElement === site) && !saving) {
    card.dataset.siteCode = m.bodySite || '';
    card.dataset.siteDisplay = m.bodySiteDisplay || '';
    syncBodySite(card);
  }
  const lat = card.querySelector('.lat');
  if (document.activeElement !== lat && !saving) lat.value = m.laterality || '';
  const view = card.querySelector('.view');
  if (document.activeElement !== view && !saving) view.value = m.viewType || '';
  const notes = card.querySelector('.notes');
  if (document.activeElement !== notes && !card.dataset.notesDirty && !saving) notes.value = m.notes || '';
  const locked = readOnly || im.status === 'committed';
  for (const f of card.querySelectorAll('input, select, textarea, button:not(.zoom)')) f.disabled = locked;
  card.querySelector('.zoom').disabled = !src;
  const note = card.querySelector('.note');
  if (im.status === 'rejected') setCardNote(card, im.rejectReason || 'Not an acceptable photo', true);
  else if (im.error) setCardNote(card, im.error, true);
  else if (note.classList.contains('error') && !saving && note.textContent === (im.rejectReason || '')) setCardNote(card, '');
}

function view(id) {
  const im = state.images.get(id);
  if (!im) return;
  const src = im.viewerUrl || im.previewUrl || localThumbs.get(id);
  if (!src) return;
  $('viewer-img').src = src;
  const m = im.metadata || {};
  $('viewer-caption').textContent = [m.bodySiteDisplay, m.laterality, m.viewType].filter(Boolean).join(' · ') || `Photo ${photoIndex(id)}`;
  $('viewer').showModal();
}

function syncBodySite(card) {
  const site = card.querySelector('.site');
  const code = card.dataset.siteCode || '';
  if (!code) { site.value = ''; site.title = ''; return; }
  const known = state.sites.find((s) => s.code === code);
  site.value = siteLabel((known && known.display) || card.dataset.siteDisplay || '', code);
  site.title = site.value;
}

function setCardNote(card, text, error = false) {
  const n = card.querySelector('.note');
  if (!n) return;
  n.textContent = text;
  n.classList.toggle('error', error);
}

main();
