// mobile.js: the phone capture page. It exchanges the QR token for a phone
// credential (kept in sessionStorage for this tab only), shows whose record
// the photos go to, and uploads each photo through the shared pipeline. Photos
// not yet confirmed by the server wait in IndexedDB so a reload resumes them.

import { Api, MAX_IMAGES, confirmDialog, el, plural } from './api.js';
import { Live } from './live.js';
import { PendingStore } from './store.js';
import { UploadQueue } from './upload.js';

const $ = (id) => document.getElementById(id);
const KEY = 'clinimg.phone';

const state = {
  cred: null,          // {phoneToken, userId, patientId, encounterId, sessionId, expiresAt}
  session: null,
  version: 0,
  outcome: null,       // {phase: running|done|failed, message, errors, done, total}
  outcomeVersion: 0,   // session version the outcome reflects
  conn: '',
};

const api = new Api(async () => (state.cred ? state.cred.phoneToken : ''));
let uploads;
let live;
const localThumbs = new Map(); // imageId -> object URL of the photo this phone sent

const STATE_TEXT = {
  compressing: 'Preparing…', waiting: 'Waiting…', uploading: 'Uploading…', recording: 'Saving…',
  retrying: 'Retrying…', failed: 'Not sent', blocked: 'Not sent', done: 'Sent',
};
const SERVER_TEXT = {
  processing: 'Sent', ready: 'Sent', rejected: 'Rejected', committed: 'Committed', failed: 'Commit failed',
};

function show(id) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== id;
}

function gone(title, text) {
  $('gone-title').textContent = title;
  $('gone-text').textContent = text;
  show('gone');
}

async function main() {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  if (token) {
    history.replaceState(null, '', location.pathname); // the token leaves the address bar and history
    try {
      const r = await api.exchange(token);
      state.cred = {
        phoneToken: r.phoneToken, userId: r.userId, patientId: r.patientId,
        encounterId: r.encounterId, sessionId: r.sessionId, expiresAt: r.expiresAt,
      };
      sessionStorage.setItem(KEY, JSON.stringify(state.cred));
    } catch (e) {
      const saved = loadSaved();
      if (e.status === 410 && saved) {
        state.cred = saved; // this tab already used it: carry on with what it got
      } else if (e.status === 410) {
        gone('This QR code was already used', 'Each code works once. On the desktop, choose “New QR code” and scan that.');
        return;
      } else if (e.status === 404) {
        gone('This QR code has expired', 'On the desktop, choose “New QR code” and scan that.');
        return;
      } else {
        gone('No connection', 'Check the phone\'s connection, then scan the QR code again.');
        return;
      }
    }
  } else {
    state.cred = loadSaved();
    if (!state.cred) {
      gone('Scan the QR code', 'Open this page by scanning the QR code shown on the desktop.');
      return;
    }
  }
  api.userId = state.cred.userId;

  const store = await PendingStore.open().catch(() => null);
  uploads = new UploadQueue(api, {
    source: 'mobile', store, sessionId: state.cred.sessionId,
    onChange: render,
    onRecorded: (it, r) => {
      if (it.thumb) localThumbs.set(it.imageId, it.thumb);
      if (r.session) applySession(r.session);
    },
  });
  if (store) {
    const recs = await store.all();
    const mine = recs.filter((r) => r.sessionId === state.cred.sessionId);
    const others = recs.filter((r) => r.sessionId !== state.cred.sessionId);
    for (const r of others) await store.delete(r.localId); // never into another patient's record
    if (others.length) notice(`${plural(others.length, 'photo')} from an earlier session ${others.length === 1 ? 'was' : 'were'} not sent and ${others.length === 1 ? 'has' : 'have'} been removed from this phone.`);
    if (mine.length) uploads.resume(mine);
  }

  $('who').textContent = `Patient ${state.cred.patientId}`;
  $('file').addEventListener('change', (e) => {
    addFiles(e.target.files);
    e.target.value = '';
  });
  $('commit').addEventListener('click', () => commit());
  $('outcome-retry').addEventListener('click', () => commit(true));
  $('outcome-back').addEventListener('click', () => { state.outcome = null; render(); });

  live = new Live(api, {
    onEvent,
    onSession: applySession,
    onSessionError,
    onState: (s) => { state.conn = s; render(); },
  }, { pollMs: 4000 });
  show('capture');
  render();
  live.start();
}

function loadSaved() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || 'null');
  } catch {
    return null;
  }
}

function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = false;
}

function applySession(s) {
  if (s.sessionId !== state.cred.sessionId) {
    ended();
    return;
  }
  if (state.session && s.version < state.version) return;
  state.session = s;
  state.version = s.version;
  if (s.version < state.outcomeVersion) {
    render(); // the commit outcome shown came from a later event
    return;
  }
  state.outcomeVersion = s.version;
  if (s.commitStatus === 'committed') {
    const c = s.commit || {};
    state.outcome = { phase: 'done', message: c.message || `${plural(c.total || s.images.length, 'photo')} committed`, errors: [] };
  } else if (s.commitStatus === 'in_progress') {
    const c = s.commit || {};
    state.outcome = { phase: 'running', done: c.done || 0, total: c.total || s.images.length, errors: [] };
  } else if (state.outcome && state.outcome.phase !== 'failed') {
    state.outcome = null;
  }
  render();
}

function onSessionError(e) {
  if (e.status === 410 || e.code === 'session_changed' || e.status === 404) ended();
  else if (e.status === 401 || e.status === 403) {
    sessionStorage.removeItem(KEY);
    state.ended = true;
    live.stop();
    gone('This link has expired', 'Scan the QR code on the desktop again.');
  }
}

function ended() {
  state.ended = true;
  if (live) live.stop();
  sessionStorage.removeItem(KEY);
  gone('This capture session has ended', 'A new capture was started on the desktop. Scan its QR code to add photos.');
}

function onEvent(name, d) {
  if (d.sessionId && d.sessionId !== state.cred.sessionId) {
    live.reconcile();
    return;
  }
  const v = Number(d.version || 0);
  if (name.startsWith('commit-') || name === 'session-committed') {
    if (v && v <= state.outcomeVersion) return; // a duplicate, or older than what is shown
    state.outcomeVersion = Math.max(state.outcomeVersion, v);
  }
  switch (name) {
    case 'commit-started':
    case 'commit-progress':
      state.outcome = { phase: 'running', done: d.done || 0, total: d.total || d.imageCount || 0, errors: [] };
      render();
      return;
    case 'session-committed':
      state.outcome = { phase: 'done', message: d.message || `${plural(d.imageCount || 0, 'photo')} committed`, errors: [] };
      render();
      live.reconcile();
      return;
    case 'commit-failed':
      state.outcome = { phase: 'failed', message: d.message || 'The commit failed; nothing was saved.', errors: d.errors || [] };
      render();
      live.reconcile();
      return;
    default:
      if (v > state.version) live.reconcile(); // the page shows the session as the server has it
  }
}

function addFiles(files) {
  const have = (state.session ? state.session.images.length : 0) + uploads.active;
  const room = MAX_IMAGES - have;
  const list = [...files];
  if (list.length > room) notice(`Maximum 50 images reached. Please commit before adding more. ${room > 0 ? `Only ${plural(room, 'photo')} will be sent.` : ''}`);
  if (room > 0) uploads.add(list.slice(0, room));
}

async function commit(retry = false) {
  const n = state.session ? state.session.images.length : 0;
  if (!retry) {
    const ok = await confirmDialog({
      title: 'Commit photos?',
      body: `Commit ${plural(n, 'photo')} to the record of patient ${state.cred.patientId}?`,
      ok: `Commit ${plural(n, 'photo')}`,
    });
    if (!ok) return;
  }
  state.outcome = { phase: 'running', done: 0, total: n, errors: [] };
  render();
  try {
    const r = await api.commit();
    if (r.__status !== 202) {
      state.outcome = { phase: 'done', message: r.message || `${plural(r.imageCount, 'photo')} committed`, errors: [] };
    }
  } catch (e) {
    if (e.code !== 'commit_in_progress') {
      state.outcome = { phase: 'failed', message: e.message || 'The commit failed.', errors: e.body.errors || [] };
    }
  }
  render();
  live.reconcile();
}

function render() {
  if (!state.cred || !uploads || state.ended) return;
  const o = state.outcome;
  pollWhileCommitting(!!o && o.phase === 'running');
  if (o) {
    show('outcome');
    renderOutcome(o);
    return;
  }
  show('capture');
  const s = state.session;
  const server = s ? s.images : [];
  const total = server.length + uploads.active;
  $('count').textContent = s ? `${plural(server.length, 'photo')} in this session${uploads.active ? `, ${uploads.active} not sent yet` : ''}` : 'Loading the session…';
  $('conn').dataset.state = state.conn;
  $('conn').textContent = { live: 'Connected', reconnecting: 'Reconnecting…', connecting: 'Connecting…' }[state.conn] || '';

  const full = total >= MAX_IMAGES;
  const limit = $('limit');
  if (full) {
    limit.className = 'banner error';
    limit.textContent = 'Maximum 50 images reached. Please commit before adding more.';
    limit.hidden = false;
  } else if (total >= 20) {
    limit.className = 'banner warn';
    limit.textContent = `You have ${total} images. Consider committing this batch.`;
    limit.hidden = false;
  } else {
    limit.hidden = true;
  }
  $('file').disabled = full;
  $('camera').classList.toggle('disabled', full);
  $('camera').setAttribute('aria-disabled', String(full));

  renderList(server);

  const processing = server.filter((im) => im.status === 'processing').length;
  const btn = $('commit');
  btn.textContent = server.length ? `Commit ${plural(server.length, 'photo')} now` : 'Commit now';
  btn.disabled = !server.length || uploads.active > 0 || processing > 0;
  $('commit-note').textContent = uploads.active ? 'Wait for the photos to finish sending.'
    : processing ? `Preparing ${plural(processing, 'photo')}…` : 'You can also commit from the desktop.';
}

// rows are kept by key and rebuilt only when what they show changes, so
// their images are not reloaded on every progress tick
const rows = new Map(); // key -> {el, sig}

function keyed(key, sig, build) {
  const c = rows.get(key);
  if (c && c.sig === sig) return c.el;
  const e = build();
  rows.set(key, { el: e, sig });
  return e;
}

function renderList(server) {
  const list = $('list');
  const out = [];
  const keep = new Set();
  const confirmed = new Set(server.map((im) => im.id));
  server.forEach((im, i) => {
    const key = `i:${im.id}`;
    keep.add(key);
    const m = im.metadata || {};
    const src = im.previewUrl || localThumbs.get(im.id) || '';
    // a presigned URL changes on every read; the same preview key is the same picture
    const pic = im.previewKey || src.split('?')[0];
    const sig = JSON.stringify([i, im.status, pic, m.bodySiteDisplay, m.laterality, m.viewType, im.rejectReason, im.error]);
    out.push(keyed(key, sig, () => serverRow(im, i + 1)));
  });
  for (const it of uploads.items.values()) {
    if (it.state === 'done' && confirmed.has(it.imageId)) continue;
    const key = `u:${it.localId}`;
    keep.add(key);
    const row = keyed(key, JSON.stringify([it.state, it.error, !!it.thumb]), () => uploadRow(it));
    row.querySelector('.bar-track span').style.width = `${Math.round((it.progress || 0) * 100)}%`;
    out.push(row);
  }
  for (const k of rows.keys()) if (!keep.has(k)) rows.delete(k);
  out.reverse(); // newest first: photos still on their way on top
  if (out.length !== list.children.length || out.some((r, i) => list.children[i] !== r)) list.replaceChildren(...out);
}

function uploadRow(it) {
  const failed = it.state === 'failed';
  return el('li', { class: `prow ${failed ? 'failed' : ''}`, 'data-test': 'upload-row', 'data-state': it.state },
    it.thumb ? el('img', { src: it.thumb, alt: '' }) : el('span', { class: 'placeholder' }),
    el('div', { class: 'pinfo' },
      el('p', { class: 'pstate' }, STATE_TEXT[it.state] || it.state),
      el('div', { class: 'bar-track' }, el('span')),
      it.error ? el('p', { class: failed || it.state === 'blocked' ? 'error' : 'muted' }, it.error) : ''),
    failed ? el('button', { type: 'button', class: 'btn primary', 'data-test': 'retry', onclick: () => uploads.retry(it.localId) }, 'Retry') : '',
    it.state === 'blocked' ? el('button', { type: 'button', class: 'btn', onclick: () => uploads.discard(it.localId) }, 'Remove') : '');
}

function serverRow(im, n) {
  const m = im.metadata || {};
  const coded = [m.bodySiteDisplay, m.laterality, m.viewType].filter(Boolean).join(' · ');
  const src = im.previewUrl || localThumbs.get(im.id);
  return el('li', { class: 'prow', 'data-test': 'server-row', 'data-status': im.status },
    src ? el('img', { src, alt: `Photo ${n}` }) : el('span', { class: 'placeholder' }),
    el('div', { class: 'pinfo' },
      el('p', { class: 'pstate' }, `Photo ${n} · ${SERVER_TEXT[im.status] || im.status}`),
      el('p', { class: 'muted', 'data-test': 'coding' }, coded || 'Body site not set yet'),
      im.rejectReason ? el('p', { class: 'error' }, im.rejectReason) : '',
      im.error ? el('p', { class: 'error' }, im.error) : ''));
}

// While a commit runs, read the session every few seconds as well: the
// outcome must show even if its event is lost.
let commitPoll;
function pollWhileCommitting(running) {
  if (running && !commitPoll) commitPoll = setInterval(() => live.reconcile(), 3000);
  if (!running && commitPoll) { clearInterval(commitPoll); commitPoll = null; }
}

function renderOutcome(o) {
  const prog = $('outcome-progress');
  prog.hidden = o.phase !== 'running';
  $('outcome-retry').hidden = o.phase !== 'failed';
  $('outcome-back').hidden = o.phase !== 'failed';
  const errs = $('outcome-errors');
  errs.replaceChildren();
  const icon = $('outcome-icon');
  if (o.phase === 'running') {
    icon.textContent = '…';
    icon.className = 'big-icon';
    $('outcome-title').textContent = 'Committing…';
    $('outcome-text').textContent = o.total ? `${o.done} of ${o.total} saved` : '';
    prog.firstElementChild.style.width = `${o.total ? Math.max(4, Math.round((100 * o.done) / o.total)) : 4}%`;
  } else if (o.phase === 'done') {
    icon.textContent = '✓';
    icon.className = 'big-icon ok';
    $('outcome-title').textContent = o.message;
    $('outcome-text').textContent = `Saved to the record of patient ${state.cred.patientId}. You can close this page.`;
    if (uploads && uploads.store) uploads.store.all().then((rs) => rs.forEach((r) => uploads.store.delete(r.localId)));
  } else {
    icon.textContent = '!';
    icon.className = 'big-icon error';
    $('outcome-title').textContent = 'Commit failed';
    $('outcome-text').textContent = (o.message || '').replace(/^commit failed:?\s*/i, '');
    const ids = state.session ? state.session.images.map((im) => im.id) : [];
    errs.replaceChildren(...(o.errors || []).map((x) => {
      const n = ids.indexOf(x.imageId);
      return el('li', {}, n >= 0 ? `Photo ${n + 1}: ${x.error}` : x.error);
    }));
  }
}

main();
