// desktop.js: the desktop widget. It starts a capture for the patient the
// practice system has open, shows the QR code for the phone, shows every
// photo live (the shared session model, model.js), lets the GP code each
// photo and commit them, and says honestly whether it is live.
//
// Never the wrong patient: the header shows the practice system's patient.
// While the session holds another patient's photos, nothing can be added,
// edited or paired; the two ways out each name the patient they affect:
// commit those photos to their own patient, or discard them.

import { Api, ApiError, confirmDialog, el } from './api.js';
import { ConsentPanel } from './consent.js';
import { EarlierPanel } from './earlier.js';
import { renderGrid, setCardNote, openViewer, openTrail } from './desktop-view.js';
import { Live } from './live.js';
import * as M from './model.js';
import { UploadQueue } from './upload.js';
import { CONSENT_MISSING, FALLBACK, RECORD_RULE, ago, committedText, coding, discardText, isAre, limitText, plural, stuckText } from './words.js';

const $ = (id) => document.getElementById(id);

// state is everything the screen shows besides the session model.
const state = {
  token: '', dev: false, userId: '',
  patientId: '',        // the patient the practice system has open
  encounterId: '',
  model: M.empty(),
  vocab: FALLBACK,
  qr: null,             // {image, url, expiresAt, sessionId}
  showQr: false,
  requesting: false,    // a commit request is on its way
  failure: null,        // {message, errors} the last commit request answered, until the session says more
  conn: '',
  focusId: '',          // the photo in focus: earlier photos are filtered to its body site
};

const api = new Api(async () => state.token, async () => (state.dev ? refreshDevToken() : ''));
let live;
let uploads;
let consent;
let earlier;
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
  consent = new ConsentPanel($('consent'), async (body) => {
    await api.setConsent({ ...body, sessionId: state.model.sessionId });
    await live.reconcile();
  });
  earlier = new EarlierPanel({ api, focus: focusPhoto, photos: comparable });
  // the photo in focus is the one last clicked or tabbed into
  $('grid').addEventListener('focusin', (e) => focusOn(e.target));
  $('grid').addEventListener('pointerdown', (e) => focusOn(e.target));
  $('start-btn').addEventListener('click', () => startCapture());
  $('qr-new').addEventListener('click', () => startCapture(false, true));
  $('qr-show').addEventListener('click', () => startCapture(false, true));
  $('commit-btn').addEventListener('click', () => commit());
  $('stop-btn').addEventListener('click', () => stopWaiting());
  $('mismatch-commit').addEventListener('click', () => commit());
  $('mismatch-discard').addEventListener('click', () => discardOther());
  $('viewer-close').addEventListener('click', () => $('viewer').close());
  $('trail-close').addEventListener('click', () => $('trail').close());
  $('viewer').addEventListener('click', (e) => { if (e.target === $('viewer')) $('viewer').close(); });
  setInterval(renderClock, 1000);

  api.vocabulary().then((v) => { state.vocab = v; render(); }).catch(() => { /* pickers stay empty until a reload */ });

  live = new Live(api, {
    onEvent,
    onSession: (s) => apply(M.applySnapshot(state.model, s)),
    onSessionError,
    onState: (s) => { state.conn = s; render(); },
  });
  api.onBack = () => uploads.retryAll();
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
  $('demo').hidden = false;
  const f = $('demo-form');
  f.userId.value = state.userId;
  f.patientId.value = state.patientId;
  f.encounterId.value = state.encounterId;
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    const ctx = { userId: f.userId.value.trim(), patientId: f.patientId.value.trim(), encounterId: f.encounterId.value.trim() };
    localStorage.setItem('clinimg.demo', JSON.stringify(ctx));
    location.search = new URLSearchParams(ctx).toString();
  });
}

function focusOn(target) {
  const card = target.closest && target.closest('[data-id]');
  if (!card || card.dataset.id === state.focusId) return;
  state.focusId = card.dataset.id;
  earlier.render();
}

// focusPhoto is the new photo in focus (else the newest): its number and
// body site, for the earlier photos' filter.
function focusPhoto() {
  const imgs = state.model.images;
  const im = imgs.find((x) => x.id === state.focusId) || imgs[imgs.length - 1];
  if (!im) return null;
  const md = im.metadata || {};
  return { id: im.id, n: M.photoNumber(state.model, im.id), site: md.bodySite || '', siteDisplay: md.bodySiteDisplay || '' };
}

// comparable lists the session's photos that have a picture to compare.
function comparable() {
  return state.model.images.map((im) => ({
    id: im.id, n: M.photoNumber(state.model, im.id), src: im.viewerUrl || im.previewUrl || localThumbs.get(im.id) || '',
    what: coding(im.metadata, state.vocab),
  })).filter((x) => x.src);
}

function fatal(text) {
  const f = $('fatal');
  f.textContent = text;
  f.hidden = false;
}

// ---------- applying what the server says ----------

function apply(next) {
  const changedSession = next.sessionId !== state.model.sessionId;
  state.model = next;
  if (changedSession || M.commitPhase(next).phase !== 'idle') state.failure = null;
  holdIfOther();
  render();
}

// holdIfOther tells the session which patient is open whenever that changes
// whether it is held: another patient's session then takes no photo from the
// phone either, and the session's own patient releases it.
let holding = '';
function holdIfOther() {
  const m = state.model;
  if (!m.sessionId || m.commitStatus === 'committed' || !state.patientId || !m.session) return;
  const want = other();
  const key = `${m.sessionId}:${want}`;
  if (want === !!m.session.held || holding === key) return;
  holding = key;
  api.setOpenPatient(state.patientId)
    .then(() => live.reconcile())
    .catch(() => { holding = ''; }); // the next snapshot tries again
}

function onSessionError(e) {
  if (e.status === 404 && e.code === 'session_not_found') {
    apply(M.noSession());
  } else if (e.status === 401 || e.status === 403) {
    fatal('Your sign-in has expired. Reopen the widget from the practice system.');
  }
}

let reconcileTimer;
function reconcileSoon(ms = 200) {
  clearTimeout(reconcileTimer);
  reconcileTimer = setTimeout(() => live.reconcile(), ms);
}

function onEvent(name, d) {
  const r = M.applyEvent(state.model, name, d);
  apply(r.model);
  if (r.reconcile) reconcileSoon(0);
}

// ---------- actions ----------

const other = () => M.otherPatient(state.model, state.patientId);

async function startCapture(discard = false, again = false) {
  const btns = [$('start-btn'), $('qr-new'), $('qr-show')];
  btns.forEach((b) => { b.disabled = true; });
  try {
    const r = await api.startSession(state.patientId, state.encounterId, discard);
    state.qr = { image: r.qrCodeImage, url: r.qrCodeUrl, expiresAt: Date.parse(r.expiresAt), sessionId: r.sessionId };
    state.showQr = again; // after a phone pairs the QR folds away unless asked for again
    state.failure = null;
    await live.reconcile();
  } catch (e) {
    if (e.code === 'uncommitted_images') {
      await discardOther();
    } else {
      banner('error', e.code === 'commit_in_progress' ? 'A commit is running; wait for it to finish.' : `Could not start: ${e.message}`);
    }
  } finally {
    render();
  }
}

// discardOther is the one way to start for the open patient while another
// patient's photos are uncommitted: it names both patients and asks.
async function discardOther() {
  const m = state.model;
  const n = m.images.length;
  const ok = await confirmDialog({
    title: `Discard patient ${m.patientId}'s photos?`,
    body: [...discardText(m.images, m.patientId),
      `A new capture then starts for patient ${state.patientId}, who is open in the practice system.`],
    ok: `Discard ${plural(n, 'photo')} of patient ${m.patientId}`, danger: true,
  });
  if (ok) await startCapture(true);
}

async function commit() {
  const m = state.model;
  const n = m.images.length;
  const pending = M.pendingPhotos(m);
  const body = [];
  let title = 'Commit photos?';
  if (other()) {
    title = `Commit to patient ${m.patientId}?`;
    body.push(`${n === 1 ? 'This photo was' : `These ${plural(n, 'photo')} were`} taken for patient ${m.patientId}. The practice system has patient ${state.patientId} open.`,
      `Commit ${n === 1 ? 'it' : 'them'} to the record of patient ${m.patientId}, not ${state.patientId}?`);
  } else {
    body.push(`Commit ${plural(n, 'photo')} to the record of patient ${m.patientId}?`);
  }
  const inRecord = inRecordCount(m);
  if (inRecord) body.push(`${plural(inRecord, 'photo')} of them ${isAre(inRecord)} in the record already and ${inRecord === 1 ? 'is' : 'are'} not sent again.`);
  body.push(RECORD_RULE);
  if (pending) {
    body.push(`The phone still holds ${plural(pending, 'photo')} that ${isAre(pending)} not here yet. ${pending === 1 ? 'It' : 'They'} will not be in this commit.`);
  }
  if (pending) title = `Commit without the ${plural(pending, 'photo')} still on the phone?`;
  const ok = await confirmDialog({
    title, body,
    ok: pending ? `Commit ${plural(n, 'photo')} without them` : `Commit ${plural(n, 'photo')} to patient ${m.patientId}`,
    cancel: pending ? 'Wait for them' : 'Cancel',
    safeFirst: pending > 0 || other(),
  });
  if (!ok) return;
  state.requesting = true;
  state.failure = null;
  render();
  try {
    const r = await api.commit(true, m.sessionId);
    if (r.__status !== 202) live.reconcile();
  } catch (e) {
    if (e.code !== 'commit_in_progress') {
      state.failure = {
        message: e.network ? 'No answer from the server; checking the outcome…' : (e.message || 'The commit failed.'),
        errors: e.body.errors || [],
      };
    }
  } finally {
    state.requesting = false;
  }
  await live.reconcile();
  render();
}

// inRecordCount is how many of the session's photos ALEX already holds.
function inRecordCount(m) {
  return m.images.filter((im) => im.commitState === 'in_record').length;
}

// stopWaiting ends a commit that ALEX keeps failing: the photos already in
// the record stay there, the rest can be changed and committed later.
async function stopWaiting() {
  const c = M.commitPhase(state.model);
  const ok = await confirmDialog({
    title: 'Stop waiting for ALEX?',
    body: [`${c.done} of ${plural(c.total, 'photo')} ${isAre(c.done)} in the patient record and will stay there.`,
      'The others stay here: you can change or delete them, and commit again later. A photo whose sending ALEX had not answered is checked before it is sent again.'],
    ok: 'Stop waiting', cancel: 'Keep waiting',
  });
  if (!ok) return;
  try {
    const r = await api.stopCommit(state.model.sessionId);
    if (r.session) state.model = M.applySnapshot(state.model, r.session);
  } catch (e) {
    if (e.code !== 'no_commit' && e.code !== 'committed') banner('error', `Could not stop: ${e.message}`);
  }
  await live.reconcile();
  render();
}

async function patch(id, fields, card) {
  card.dataset.saving = String(Number(card.dataset.saving || 0) + 1);
  setCardNote(card, 'Saving…');
  try {
    const r = await api.patchImage(id, fields);
    if (r.session) state.model = M.applySnapshot(state.model, r.session);
    setCardNote(card, 'Saved');
  } catch (e) {
    setCardNote(card, e.code === 'invalid_metadata' ? e.message : `Not saved: ${e.message}`, true);
  } finally {
    card.dataset.saving = String(Number(card.dataset.saving) - 1);
    render();
  }
}

async function remove(id) {
  const n = M.photoNumber(state.model, id);
  const ok = await confirmDialog({
    title: `Delete photo ${n}?`, body: 'The photo is removed from this session and never committed.', ok: `Delete photo ${n}`, danger: true,
  });
  if (!ok) return;
  try {
    await api.deleteImage(id);
  } catch (e) {
    banner('error', `Could not delete photo ${n}: ${e.message}`);
  }
  await live.reconcile();
}

function view(id) {
  const im = M.image(state.model, id);
  if (!im) return;
  const src = im.viewerUrl || im.previewUrl || localThumbs.get(id);
  if (!src) return;
  const n = M.photoNumber(state.model, id);
  const what = coding(im.metadata, state.vocab);
  openViewer(src, `Photo ${n}${what ? ` · ${what}` : ''}`);
}

// trail shows a photo's chain of custody, read from the audit trail the
// server keeps for the session: the photo's own steps and the commits'.
async function trail(id) {
  const m = state.model;
  const n = M.photoNumber(m, id);
  const path = api.user(`/sessions/${encodeURIComponent(m.sessionId)}/audit`);
  let records = [];
  try {
    records = (await api.request('GET', path)).records || [];
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) {
      banner('error', `The photo's trail could not be read: ${e.message}`);
      return;
    }
  }
  const mine = records.filter((r) => r.imageId === id || (!r.imageId && r.step.startsWith('commit_')));
  const first = mine.findIndex((r) => r.imageId === id);
  openTrail(`Photo ${n}: chain of custody`, first < 0 ? [] : mine.slice(first), () => exportTrail(path, m.sessionId));
}

// exportTrail downloads the session's whole trail as CSV (the request
// carries the desktop's token, so it cannot be a plain link).
async function exportTrail(path, sessionId) {
  try {
    const res = await fetch(`${path}?format=csv`, { headers: { Authorization: `Bearer ${state.token}` }, cache: 'no-store' });
    if (!res.ok) throw new Error(`${res.status}`);
    const url = URL.createObjectURL(await res.blob());
    const a = el('a', { href: url, download: `audit-${sessionId}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    banner('error', `The trail could not be exported (${e.message}).`);
  }
}

// ---------- desktop upload ----------

function setupCapture() {
  uploads = new UploadQueue(api, {
    source: 'desktop',
    // the photo is for the patient the practice system has open, in the
    // session shown when it was added: the API refuses it if the session
    // belongs to another patient or has since been replaced
    extra: () => ({ patientId: state.patientId, sessionId: state.model.sessionId }),
    onChange: () => render(),
    onRecorded: (it, r) => {
      if (it.thumb) localThumbs.set(it.imageId, it.thumb);
      if (r.session) state.model = M.applySnapshot(state.model, r.session);
      setTimeout(() => { uploads.items.delete(it.localId); render(); }, 0);
    },
  });
  $('file').addEventListener('change', (e) => {
    addFiles(e.target.files);
    e.target.value = '';
  });
  const drop = $('drop');
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, () => { if (canAdd()) drop.classList.add('over'); });
  }
  for (const ev of ['dragleave', 'drop']) {
    drop.addEventListener(ev, () => drop.classList.remove('over'));
  }
  // a photo dropped anywhere on the widget is taken (or refused, saying
  // why), never opened by the browser in place of the widget
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    addFiles([...e.dataTransfer.files].filter((f) => f.type.startsWith('image/')));
  });
}

function canAdd() {
  const m = state.model;
  return !!m.sessionId && m.commitStatus === 'none' && !other() && !state.requesting && count() < state.vocab.limits.maxImages;
}

function addFiles(files) {
  if (!canAdd()) {
    if (other()) banner('error', `Not added: these photos would go to patient ${state.model.patientId}, not ${state.patientId}.`);
    return;
  }
  const room = state.vocab.limits.maxImages - count();
  const list = [...files];
  if (list.length > room) banner('warn', `Only ${plural(Math.max(0, room), 'more photo')} fit in this session. ${state.vocab.limits.maxMessage}`);
  if (room > 0) uploads.add(list.slice(0, room));
}

function count() { return state.model.images.length + uploads.active; }

// ---------- rendering ----------

function banner(kind, text) {
  const b = el('p', { class: `banner ${kind}`, role: 'alert', 'data-test': `banner-${kind}` }, text,
    el('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => b.remove() }, '×'));
  $('banners').replaceChildren(b); // one message at a time, the latest
  setTimeout(() => b.remove(), 10000);
}

function render() {
  const m = state.model;
  const committed = m.commitStatus === 'committed';
  const active = !!m.sessionId && !committed;
  const mismatch = other();
  const phase = M.commitPhase(m);
  const busy = phase.phase === 'running' || phase.phase === 'stuck' || state.requesting;

  // header: always the practice system's patient
  $('patient').textContent = state.patientId
    ? `Patient ${state.patientId}${state.encounterId ? ` · encounter ${state.encounterId}` : ''}`
    : (m.patientId ? `Patient ${m.patientId}` : '');
  const conn = $('conn');
  conn.dataset.state = state.conn;
  conn.textContent = { live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting… checking every 3 s' }[state.conn] || '';

  // start panel
  $('start').hidden = !((m.ended || committed) && state.patientId);
  $('start-btn').textContent = `Start ${committed ? 'next ' : ''}capture for patient ${state.patientId}`;
  $('start-text').textContent = committed ? 'This session is committed.' : 'No capture in progress.';

  // another patient's photos: say so, and offer only the two ways out
  $('mismatch').hidden = !mismatch;
  if (mismatch) {
    const n = m.images.length;
    const these = n === 0 ? 'This session is' : n === 1 ? 'This photo is' : `These ${plural(n, 'photo')} are`;
    $('mismatch-text').textContent = `${these} for patient ${m.patientId}, not patient ${state.patientId} who is open in the practice system. Nothing can be added or changed until you commit or discard ${n === 1 ? 'it' : 'them'}.`;
    const mc = $('mismatch-commit');
    mc.textContent = `Commit ${plural(n, 'photo')} to patient ${m.patientId}`;
    mc.disabled = busy || n === 0 || m.images.some((im) => im.status === 'processing' || im.status === 'rejected');
    const md = $('mismatch-discard');
    md.textContent = `Discard patient ${m.patientId}'s ${plural(n, 'photo')}`;
    md.disabled = busy;
  }

  // QR and phone: pairing adds photos, so never for another patient's session
  const paired = m.phone;
  const qrVisible = active && !mismatch && state.qr && state.qr.sessionId === m.sessionId && (state.showQr || !paired);
  $('qr').hidden = !qrVisible;
  if (qrVisible) {
    const img = $('qr-img');
    if (img.getAttribute('src') !== state.qr.image) img.src = state.qr.image;
    $('qr-link').href = state.qr.url;
    $('phone-state').textContent = paired ? phoneText(paired) : 'Waiting for the phone…';
    $('phone-state').classList.toggle('ok', !!paired);
  }
  $('paired').hidden = !(active && !qrVisible);
  if (active && !qrVisible) {
    $('paired-state').textContent = paired ? phoneText(paired) : 'No phone connected yet.';
    $('paired-state').classList.toggle('ok', !!paired);
    $('qr-show').textContent = paired ? 'Pair another phone' : 'Show QR code';
    $('qr-show').disabled = mismatch;
  }
  renderPhones(active && !qrVisible ? m.phones : [], busy);
  $('qr-new').disabled = mismatch;
  renderClock();

  // photos still on the phone
  const pending = active ? M.pendingPhotos(m) : 0;
  const coming = $('coming');
  coming.hidden = !pending;
  if (pending) {
    const heard = Object.values(m.pending).map((p) => p.updatedAt).sort().pop();
    coming.textContent = `${plural(pending, 'more photo')} coming from the phone${heard ? ` (last heard ${ago(heard, Date.now())})` : ''}`;
  }

  // capture area
  const n = count();
  $('capture').hidden = !m.sessionId;
  $('drop').hidden = !active || mismatch;
  const full = n >= state.vocab.limits.maxImages;
  $('file').disabled = full || busy || mismatch || !active;
  $('drop').classList.toggle('disabled', full);
  renderGrid({
    api, model: m, uploads, vocab: state.vocab, localThumbs,
    readOnly: !active || busy || mismatch,
    patch, remove, view, trail,
    retry: (id) => uploads.retry(id), discard: (id) => uploads.discard(id), reconcile: () => reconcileSoon(0),
  });
  $('empty').hidden = n > 0;
  $('consent').hidden = !active || mismatch;
  if (earlier) earlier.update(m.sessionId, active && !mismatch);
  if (active && !mismatch && consent) consent.update(m.consent, state.vocab, !busy && m.commitStatus === 'none');
  renderLimit(n, active && !mismatch);
  renderCommit(phase, mismatch, pending);
}

// renderPhones lists the paired phones, each with a Remove button that ends
// its access at once (rebuilt only when the list changes).
function renderPhones(phones, busy) {
  const ul = $('phones');
  const key = phones.map((p) => p.id).join(',') + (busy ? '!' : '');
  if (ul.dataset.key === key) return;
  ul.dataset.key = key;
  ul.replaceChildren(...phones.map((p) => {
    const li = document.createElement('li');
    // One phone is named above; several are told apart here.
    if (phones.length > 1) li.textContent = phoneText(p) + ' ';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'btn small';
    b.textContent = phones.length > 1 ? 'Remove' : 'Remove phone';
    b.dataset.test = 'phone-remove';
    b.disabled = busy;
    b.addEventListener('click', () => removePhone(p));
    li.append(b);
    return li;
  }));
  ul.hidden = phones.length === 0;
}

async function removePhone(p) {
  const ok = await confirmDialog({
    title: 'Remove this phone?', body: `${phoneText(p)}. It can no longer add photos or see this session.`, ok: 'Remove phone', danger: true,
  });
  if (!ok) return;
  try {
    await api.removePhone(p.id, state.model.sessionId);
  } catch (e) {
    banner('error', `Could not remove the phone: ${e.message}`);
  }
  await live.reconcile();
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
  const l = limitText(n, state.vocab.limits);
  w.hidden = !active || !l.kind;
  w.className = `banner ${l.kind}`;
  w.textContent = l.text;
}

let commitPoll;
function renderCommit(c, mismatch, pending) {
  const m = state.model;
  const running = c.phase === 'running' || c.phase === 'stuck';
  // while a commit runs, read the session every few seconds as well: the
  // outcome must show even if its event is lost
  if (running && !commitPoll) commitPoll = setInterval(() => live.reconcile(), 3000);
  if (!running && commitPoll) { clearInterval(commitPoll); commitPoll = null; }
  const bar = $('commitbar');
  const btn = $('commit-btn');
  const note = $('commit-note');
  const prog = $('progress');
  const n = m.images.length;
  const phase = state.requesting ? 'running' : state.failure && c.phase === 'idle' ? 'failed' : c.phase;
  // another patient's photos are committed from the banner, which names them
  bar.hidden = !m.sessionId || (n === 0 && phase === 'idle') || (mismatch && phase === 'idle');
  bar.dataset.phase = phase;
  prog.hidden = !running;
  if (running) {
    const pct = c.total ? Math.round((100 * c.done) / c.total) : 0;
    prog.firstElementChild.style.width = `${Math.max(4, pct)}%`;
    prog.setAttribute('aria-valuemax', String(c.total));
    prog.setAttribute('aria-valuenow', String(c.done));
  }
  const tally = M.counts(m);
  const uploading = uploads.active;
  const inRecord = inRecordCount(m);
  note.className = 'muted';
  btn.hidden = mismatch;
  $('stop-btn').hidden = phase !== 'stuck';
  switch (phase) {
    case 'running':
      note.textContent = state.requesting ? 'Sending the commit…' : `Committing… ${c.done} of ${c.total} in the record`;
      btn.disabled = true;
      btn.textContent = 'Committing…';
      break;
    case 'stuck':
      note.className = 'warn';
      note.textContent = `Still committing, ${c.done} of ${c.total} in the record. ${stuckText(c)}`;
      btn.disabled = true;
      btn.textContent = 'Committing…';
      break;
    case 'done':
      note.className = 'ok';
      note.textContent = committedText(c.total);
      btn.hidden = true;
      break;
    case 'failed': {
      const f = state.failure && c.phase === 'idle' ? state.failure : c;
      const why = (f.message || '').replace(/^commit failed:?\s*/i, '') || 'nothing was saved.';
      note.className = f.stopped ? 'warn' : 'error';
      note.replaceChildren(el('strong', {}, f.stopped ? why : `Commit failed: ${why}`),
        f.errors.length ? el('ul', { class: 'errors' }, f.errors.map((x) => el('li', {}, `Photo ${M.photoNumber(m, x.imageId) || '?'}: ${x.error}`))) : '',
        inRecord ? el('span', { class: 'muted', 'data-test': 'record-rule' }, ` ${RECORD_RULE}`) : '');
      btn.disabled = n === 0 || tally.processing > 0 || mismatch || M.consentMissing(m, state.vocab);
      btn.textContent = inRecord && inRecord < n ? `Commit the other ${plural(n - inRecord, 'photo')}` : f.stopped ? 'Commit again' : 'Retry commit';
      break;
    }
    default: {
      btn.textContent = inRecord && inRecord < n ? `Commit the other ${plural(n - inRecord, 'photo')}` : `Commit ${plural(n, 'photo')}`;
      btn.disabled = n === 0 || tally.processing > 0 || tally.rejected > 0 || uploading > 0 || m.commitStatus === 'committed' || mismatch || M.consentMissing(m, state.vocab);
      if (n && M.consentMissing(m, state.vocab)) { note.className = 'warn'; note.textContent = CONSENT_MISSING; } else if (uploading) note.textContent = `Waiting for ${plural(uploading, 'upload')}…`;
      else if (tally.processing) note.textContent = `Preparing ${plural(tally.processing, 'photo')}…`;
      else if (tally.rejected) note.textContent = `Delete ${plural(tally.rejected, 'rejected photo')} to commit.`;
      else if (pending) note.textContent = `To patient ${m.patientId}. ${plural(pending, 'more photo')} still on the phone.`;
      else if (inRecord) note.textContent = `To patient ${m.patientId}: ${inRecord} of ${n} already in the record, not sent again.`;
      else note.textContent = n ? `To patient ${m.patientId}` : '';
    }
  }
}

main();
