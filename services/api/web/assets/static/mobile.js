// mobile.js: the phone capture page. It exchanges the QR token for a phone
// credential (kept in sessionStorage for this tab only), shows whose record
// the photos go to, and uploads each photo through the shared pipeline.
//
// No photo left behind: a photo not yet confirmed by the server waits in
// IndexedDB and keeps trying, however long the connection is gone; the page
// says honestly how many are waiting, tells the session how many it holds
// (the desktop shows them as coming), and a service worker serves the page
// itself offline so a reload shows the queue rather than a browser error.

import { Api, confirmDialog, el } from './api.js';
import { bodySitePicker } from './bodysite.js';
import { ConsentPanel } from './consent.js';
import { Live } from './live.js';
import * as M from './model.js';
import { PendingStore } from './store.js';
import { UploadQueue } from './upload.js';
import { CONSENT_MISSING, FALLBACK, RECORD_RULE, coding, committedText, limitText, plural, stuckText } from './words.js';

const $ = (id) => document.getElementById(id);
const KEY = 'clinimg.phone';
const SNAPSHOT = 'clinimg.phone.session';

const state = {
  cred: null,          // {phoneToken, userId, patientId, encounterId, sessionId, expiresAt}
  model: M.empty(),
  vocab: FALLBACK,
  requesting: false,   // a commit request is on its way
  failure: null,       // what the last commit request answered, until the session says more
  dismissed: '',       // commit id whose failure screen the GP left
  conn: '',
  ended: false,
};

const api = new Api(async () => (state.cred ? state.cred.phoneToken : ''));
let uploads;
let live;
let consent;
const localThumbs = new Map(); // imageId -> object URL of the photo this phone sent

const STATE_TEXT = {
  compressing: 'Preparing…', waiting: 'Waiting to send', uploading: 'Sending…', recording: 'Sending…',
  retrying: 'Waiting for a connection', blocked: 'Not sent', removed: 'Deleted on the desktop', done: 'Sent',
};
const SERVER_TEXT = {
  processing: 'Sent', ready: 'Sent', rejected: 'Rejected', committed: 'In the record', failed: 'Not committed',
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
  if ('serviceWorker' in navigator) {
    // the page and its scripts, for a reload without a connection
    navigator.serviceWorker.register('/static/sw.js', { scope: '/mobile' }).catch(() => { /* then a reload needs the network */ });
  }
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
      const saved = loadSaved(KEY);
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
    state.cred = loadSaved(KEY);
    if (!state.cred) {
      gone('Scan the QR code', 'Open this page by scanning the QR code shown on the desktop.');
      return;
    }
  }
  api.userId = state.cred.userId;
  // what the session looked like when last seen, until it answers again
  const last = loadSaved(SNAPSHOT);
  if (last && last.sessionId === state.cred.sessionId) state.model = M.applySnapshot(state.model, last);

  const store = await PendingStore.open().catch(() => null);
  uploads = new UploadQueue(api, {
    source: 'mobile', store, sessionId: state.cred.sessionId,
    onChange: () => { render(); reportPending(); },
    onRecorded: (it, r) => {
      if (it.thumb) localThumbs.set(it.imageId, it.thumb);
      if (r.session) applySession(r.session);
    },
  });
  api.onBack = () => { uploads.retryAll(); reportPending(true); };
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
  consent = new ConsentPanel($('consent'), async (body) => {
    await api.setConsent(body);
    await live.reconcile();
  });
  $('outcome-retry').addEventListener('click', () => commit(true));
  $('outcome-back').addEventListener('click', () => {
    state.dismissed = (state.model.commit && state.model.commit.commitId) || 'request';
    state.failure = null;
    render();
  });
  api.vocabulary().then((v) => { state.vocab = v; render(); }).catch(() => { /* coding waits for a reload */ });

  live = new Live(api, {
    onEvent,
    onSession: applySession,
    onSessionError,
    onState: (s) => { state.conn = s; render(); },
  }, { pollMs: 4000 });
  show('capture');
  render();
  live.start();
  reportPending(true);
}

function loadSaved(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
}

// reportPending tells the session how many photos this phone holds that it
// has not recorded, whenever that changes (and again once the API answers
// after a gap), so the desktop can say they are coming.
let reported = -1;
let reporting = false;
async function reportPending(force = false) {
  if (!uploads || state.ended) return;
  if (force) reported = -1;
  if (reporting || uploads.active === reported) return;
  reporting = true;
  const n = uploads.active;
  try {
    await api.setPending(n);
    reported = n;
  } catch (e) {
    if (e.status === 410 || e.code === 'session_changed') ended();
  } finally {
    reporting = false;
  }
  if (uploads.active !== reported && api.reachable) reportPending();
}

function applySession(s) {
  if (s.sessionId !== state.cred.sessionId) {
    ended();
    return;
  }
  const next = M.applySnapshot(state.model, s);
  if (next === state.model) return;
  const released = held() && !(next.session && next.session.held);
  state.model = next;
  if (released) uploads.retryAll(); // the session takes photos again
  try {
    // without its signed URLs, which are no use later
    sessionStorage.setItem(SNAPSHOT, JSON.stringify({ ...s, images: s.images.map(({ s3Url, previewUrl, viewerUrl, ...im }) => im) }));
  } catch { /* storage full: the next answer will do */ }
  render();
}

// held is true while the desktop says the practice system has another
// patient open: this session takes no photo until it is this patient again.
const held = () => !!(state.model.session && state.model.session.held);

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
  sessionStorage.removeItem(SNAPSHOT);
  gone('This capture session has ended', 'A new capture was started on the desktop. Scan its QR code to add photos.');
}

function onEvent(name, d) {
  const r = M.applyEvent(state.model, name, d);
  if (r.model !== state.model) {
    state.model = r.model;
    render();
  }
  if (r.reconcile || name.startsWith('image-')) live.reconcile(); // previews come signed with a GET
}

function addFiles(files) {
  const max = state.vocab.limits.maxImages;
  const room = max - state.model.images.length - uploads.active;
  const list = [...files];
  if (list.length > room && room > 0) notice(`Only ${plural(room, 'more photo')} fit in this session; the first ${plural(room, 'photo')} will be sent.`);
  if (room > 0) uploads.add(list.slice(0, room));
}

async function commit(retry = false) {
  const n = state.model.images.length;
  if (!retry) {
    const ok = await confirmDialog({
      title: 'Commit photos?',
      body: `Commit ${plural(n, 'photo')} to the record of patient ${state.cred.patientId}?`,
      ok: `Commit ${plural(n, 'photo')}`,
    });
    if (!ok) return;
  }
  state.requesting = true;
  state.failure = null;
  state.dismissed = '';
  render();
  try {
    await api.commit(true);
  } catch (e) {
    if (e.code !== 'commit_in_progress') {
      state.failure = { phase: 'failed', message: e.message || 'The commit failed.', errors: e.body.errors || [] };
    }
  } finally {
    state.requesting = false;
  }
  await live.reconcile();
  render();
}

// patch saves fields of one photo; its row says how it went. While a save is
// on its way the row's fields are not put back to what the session said.
async function patch(id, fields, row) {
  const note = row.querySelector('.pnote');
  row.ui.saving++;
  note.textContent = 'Saving…';
  try {
    const r = await api.patchImage(id, fields);
    row.ui.saving--;
    if (r.session) applySession(r.session);
    note.textContent = 'Saved';
  } catch (e) {
    row.ui.saving--;
    note.textContent = `Not saved: ${e.message}`;
  }
}

const deleting = new Set(); // photos this phone is deleting: their editor closes without a word

async function remove(id) {
  const n = M.photoNumber(state.model, id);
  const ok = await confirmDialog({ title: `Delete photo ${n}?`, body: 'It is removed from this session and never committed.', ok: `Delete photo ${n}`, danger: true });
  if (!ok) return;
  deleting.add(id);
  try {
    await api.deleteImage(id);
  } catch (e) {
    deleting.delete(id);
    notice(`Could not delete photo ${n}: ${e.message}`);
  }
  live.reconcile();
}

// outcome is the commit screen to show, or null for the capture screen.
function outcome() {
  if (state.requesting) return { phase: 'running', done: 0, total: state.model.images.length, errors: [] };
  const c = M.commitPhase(state.model);
  const id = (state.model.commit && state.model.commit.commitId) || '';
  if (c.phase === 'failed' && state.dismissed && state.dismissed === id) return null;
  if (c.phase !== 'idle') return c;
  if (state.failure && state.dismissed !== 'request') return state.failure;
  return null;
}

function render() {
  if (!state.cred || !uploads || state.ended) return;
  const o = outcome();
  pollWhileCommitting(!!o && (o.phase === 'running' || o.phase === 'stuck'));
  if (o) {
    show('outcome');
    renderOutcome(o);
    return;
  }
  show('capture');
  const m = state.model;
  const server = m.images;
  $('count').textContent = m.known ? `${plural(server.length, 'photo')} in this session` : 'Waiting for the session…';
  $('conn').dataset.state = state.conn;
  $('conn').textContent = { live: 'Connected', reconnecting: 'No connection to the server, retrying…', connecting: 'Connecting…' }[state.conn] || '';

  // an honest count of what this phone still holds
  const sending = uploads.active - uploads.waiting;
  const parts = [];
  if (uploads.waiting) parts.push(`${uploads.waiting} waiting for a connection`);
  if (uploads.onHold) parts.push(`${uploads.onHold} on hold`);
  if (sending > 0) parts.push(`${sending} sending`);
  const q = $('queue');
  q.hidden = parts.length === 0;
  q.textContent = parts.length ? `On this phone: ${parts.join(', ')}. They are sent on their own; keep this page open.` : '';

  const total = server.length + uploads.active;
  const l = limitText(total, state.vocab.limits);
  const limit = $('limit');
  limit.className = `banner ${l.kind}`;
  limit.textContent = l.text;
  limit.hidden = !l.kind;
  if (l.kind === 'error' && $('notice').textContent.startsWith('Only ')) notice(''); // the cap banner says it
  const hold = held();
  const h = $('held');
  h.hidden = !hold;
  h.textContent = hold ? `On hold: the practice system has another patient open, not patient ${state.cred.patientId}. Photos are added again once patient ${state.cred.patientId} is open on the desktop.` : '';
  const full = total >= state.vocab.limits.maxImages;
  $('file').disabled = full || hold;
  $('camera').classList.toggle('disabled', full || hold);
  $('camera').setAttribute('aria-disabled', String(full || hold));

  if (consent) consent.update(m.consent, state.vocab, m.commitStatus === 'none' && !hold);
  renderList(server);

  const processing = M.counts(m).processing;
  const btn = $('commit');
  btn.textContent = server.length ? `Commit ${plural(server.length, 'photo')} now` : 'Commit now';
  // on hold, the desktop decides (it names both patients); the phone waits
  const noConsent = M.consentMissing(m, state.vocab);
  btn.disabled = !server.length || uploads.active > 0 || processing > 0 || m.commitStatus !== 'none' || hold || noConsent;
  $('commit-note').textContent = noConsent && server.length ? CONSENT_MISSING.replace(' above', '') : uploads.active
    ? `${plural(uploads.active, 'photo')} still on this phone: commit once ${uploads.active === 1 ? 'it has' : 'they have'} been sent.`
    : processing ? `Preparing ${plural(processing, 'photo')}…` : 'You can also commit from the desktop.';
}

// Upload rows are kept by key and rebuilt only when what they show changes,
// so their images are not reloaded.
const rows = new Map(); // key -> {el, sig}

function keyed(key, sig, build) {
  const c = rows.get(key);
  if (c && c.sig === sig) return c.el;
  const e = build();
  rows.set(key, { el: e, sig });
  return e;
}

// A photo's row is built once and updated in place, as the desktop's cards
// are. The page renders on every live event (processing finished, a coding
// made on the desktop, a photo arriving, a token renewal's reconcile); a row
// rebuilt then took its open editor with it: the body site being typed, the
// focus, and the "Saved" of a save on its way. Only the photo deleted or the
// session locked (M.codingClosed) closes an editor, and the page says why.
const photoRows = new Map(); // image id -> row element
const seen = new Set(); // photos the session has shown: a sent one no longer there was deleted

const CLOSED_TEXT = {
  committing: 'Coding closed: the photos are being committed.',
  committed: 'Coding closed: this photo is in the record.',
  held: 'Coding closed while the practice system has another patient open.',
};

function renderList(server) {
  const list = $('list');
  const out = [];
  const keep = new Set();
  server.forEach((im, i) => {
    seen.add(im.id);
    let row = photoRows.get(im.id);
    if (!row) {
      row = serverRow(im.id);
      photoRows.set(im.id, row);
    }
    updateServerRow(row, im, i + 1);
    out.push(row);
  });
  for (const [id, row] of photoRows) {
    if (M.image(state.model, id)) continue;
    photoRows.delete(id);
    if (row.ui.editor && row.ui.editor.details.open && !deleting.has(id)) {
      notice(`Photo ${row.ui.n} was deleted on another screen while you were coding it.`);
    }
    deleting.delete(id);
  }
  for (const it of uploads.items.values()) {
    if (it.state === 'done' && seen.has(it.imageId)) continue;
    const key = `u:${it.localId}`;
    keep.add(key);
    const row = keyed(key, JSON.stringify([it.state, it.error, !!it.thumb]), () => uploadRow(it));
    row.querySelector('.bar-track span').style.width = `${Math.round((it.progress || 0) * 100)}%`;
    out.push(row);
  }
  for (const k of rows.keys()) if (!keep.has(k)) rows.delete(k);
  out.reverse(); // newest first: photos still on their way on top
  // move only what moved: a row taken out and put back loses the focus in it
  const want = new Set(out);
  for (const c of [...list.children]) if (!want.has(c)) c.remove();
  let prev = null;
  for (const r of out) {
    if (prev ? prev.nextSibling !== r : list.firstChild !== r) {
      if (prev) prev.after(r);
      else list.prepend(r);
    }
    prev = r;
  }
}

function uploadRow(it) {
  const waiting = it.state === 'retrying';
  return el('li', { class: `prow ${it.state === 'blocked' ? 'failed' : ''} ${waiting ? 'waiting' : ''}`, 'data-test': 'upload-row', 'data-state': it.state },
    it.thumb ? el('img', { src: it.thumb, alt: 'Photo not sent yet' }) : el('span', { class: 'placeholder' }),
    el('div', { class: 'pinfo' },
      el('p', { class: 'pstate' }, STATE_TEXT[it.state] || it.state),
      el('div', { class: 'bar-track' }, el('span')),
      it.error && it.error !== STATE_TEXT[it.state] ? el('p', { class: it.state === 'blocked' ? 'error' : 'muted' }, it.error) : ''),
    waiting ? el('button', { type: 'button', class: 'btn', 'data-test': 'retry', onclick: () => uploads.retry(it.localId) }, 'Try now') : '',
    it.state === 'blocked' ? el('button', { type: 'button', class: 'btn', 'data-test': 'remove-upload', onclick: () => uploads.discard(it.localId) }, 'Remove') : '',
    it.state === 'removed' ? el('button', { type: 'button', class: 'btn', 'data-test': 'dismiss-upload', onclick: () => uploads.discard(it.localId) }, 'OK') : '');
}

// serverRow builds the row of one photo of the session; updateServerRow
// fills it. row.ui holds its parts and what the page keeps about it: n (its
// number), pic (the picture shown), editor (while it can be coded), saving
// (saves on their way).
function serverRow(id) {
  const ui = {
    img: el('img', { hidden: true }),
    placeholder: el('span', { class: 'placeholder' }),
    state: el('p', { class: 'pstate' }),
    coding: el('p', { class: 'muted', 'data-test': 'coding' }),
    reject: el('p', { class: 'error', hidden: true }),
    error: el('p', { class: 'error', hidden: true }),
    closed: el('p', { class: 'muted', role: 'status', 'data-test': 'edit-closed', hidden: true }),
    n: 0, pic: null, editor: null, saving: 0,
  };
  ui.info = el('div', { class: 'pinfo' }, ui.state, ui.coding, ui.reject, ui.error, ui.closed);
  const row = el('li', { class: 'prow', 'data-test': 'server-row', dataset: { id } }, ui.img, ui.placeholder, ui.info);
  row.ui = ui;
  return row;
}

function updateServerRow(row, im, n) {
  const { ui } = row;
  const m = im.metadata || {};
  ui.n = n;
  row.dataset.status = im.status;
  row.setAttribute('aria-label', `Photo ${n}`);
  const src = im.previewUrl || localThumbs.get(im.id) || '';
  // a presigned URL changes on every read; the same preview key is the same picture
  const pic = im.previewKey || src.split('?')[0];
  if (ui.pic !== pic) {
    ui.pic = pic;
    if (src) ui.img.src = src;
  }
  ui.img.alt = `Photo ${n}`;
  ui.img.hidden = !src;
  ui.placeholder.hidden = !!src;
  ui.state.textContent = `Photo ${n} · ${SERVER_TEXT[im.status] || im.status}`;
  ui.coding.textContent = coding(m, state.vocab) || 'Body site not set yet';
  ui.reject.textContent = im.rejectReason || '';
  ui.reject.hidden = !im.rejectReason;
  ui.error.textContent = im.error || '';
  ui.error.hidden = !im.error;

  const why = M.codingClosed(state.model, im.id);
  if (why && ui.editor) {
    if (ui.editor.details.open) ui.closed.textContent = CLOSED_TEXT[why] || 'Coding closed.';
    ui.editor.details.remove();
    ui.editor = null;
  } else if (!why) {
    ui.closed.textContent = '';
    if (!ui.editor) {
      ui.editor = editor(im.id, row);
      ui.info.append(ui.editor.details);
    }
    ui.editor.update(im, n);
  }
  ui.closed.hidden = !ui.closed.textContent;
}

// options fills a select with '' and the vocabulary's terms, keeping its value.
function options(select, terms) {
  const o = select.options;
  if (o.length === terms.length + 1 && terms.every((t, i) => o[i + 1].value === t.code && o[i + 1].textContent === t.display)) return;
  const v = select.value;
  select.replaceChildren(el('option', { value: '' }, '—'), ...terms.map((t) => el('option', { value: t.code }, t.display)));
  select.value = v;
}

// editor codes one photo on the phone: body site, side, view; or deletes it.
// update(im, n) shows what the session holds, except in a field the GP is
// in or has typed in (the picker keeps that), or while a save is on its way.
function editor(id, row) {
  const site = bodySitePicker(api, {
    label: 'Body site',
    onPick: (code, display) => patch(id, { bodySite: code, bodySiteDisplay: display }, row),
    onInvalid: (msg) => { row.querySelector('.pnote').textContent = msg; },
  });
  const select = (name, field) => {
    const s = el('select', { 'data-test': name.toLowerCase() });
    s.addEventListener('change', () => patch(id, { [field]: s.value }, row));
    return s;
  };
  const side = select('Side', 'laterality');
  const view = select('View', 'viewType');
  const summary = el('summary', { 'data-test': 'edit' });
  const del = el('button', { type: 'button', class: 'btn danger', 'data-test': 'delete', onclick: () => remove(id) });
  const details = el('details', { class: 'pedit' },
    summary,
    site.root,
    el('div', { class: 'row two' },
      el('label', { class: 'pfield' }, 'Side', side),
      el('label', { class: 'pfield' }, 'View', view)),
    el('p', { class: 'row' },
      el('span', { class: 'pnote note', 'aria-live': 'polite', 'data-test': 'row-note' }),
      del));
  return {
    details,
    update(im, n) {
      const m = im.metadata || {};
      summary.textContent = `Code or delete photo ${n}`;
      site.input.setAttribute('aria-label', `Body site of photo ${n}`);
      side.setAttribute('aria-label', `Side of photo ${n}`);
      view.setAttribute('aria-label', `View of photo ${n}`);
      del.textContent = `Delete photo ${n}`;
      options(side, state.vocab.lateralities);
      options(view, state.vocab.views);
      if (row.ui.saving > 0) return;
      site.set(m.bodySite || '', m.bodySiteDisplay || '');
      if (document.activeElement !== side) side.value = m.laterality || '';
      if (document.activeElement !== view) view.value = m.viewType || '';
    },
  };
}

// While a commit runs, read the session every few seconds as well: the
// outcome must show even if its event is lost.
let commitPoll;
function pollWhileCommitting(running) {
  if (running && !commitPoll) commitPoll = setInterval(() => live.reconcile(), 3000);
  if (!running && commitPoll) { clearInterval(commitPoll); commitPoll = null; }
}

function renderOutcome(o) {
  const running = o.phase === 'running' || o.phase === 'stuck';
  const prog = $('outcome-progress');
  prog.hidden = !running;
  $('outcome-retry').hidden = o.phase !== 'failed';
  $('outcome-back').hidden = o.phase !== 'failed';
  const errs = $('outcome-errors');
  errs.replaceChildren();
  const icon = $('outcome-icon');
  if (running) {
    icon.textContent = '…';
    icon.className = 'big-icon busy';
    $('outcome-title').textContent = 'Committing…';
    $('outcome-text').textContent = o.phase === 'stuck'
      ? `${o.done} of ${o.total} in the record. ${stuckText(o)}`
      : o.total ? `${o.done} of ${o.total} in the record` : '';
    prog.firstElementChild.style.width = `${o.total ? Math.max(4, Math.round((100 * o.done) / o.total)) : 4}%`;
  } else if (o.phase === 'done') {
    icon.textContent = '✓';
    icon.className = 'big-icon ok';
    $('outcome-title').textContent = committedText(o.total);
    const left = uploads.held;
    $('outcome-text').textContent = left
      ? `Saved to the record of patient ${state.cred.patientId}. ${plural(left, 'photo')} on this phone ${left === 1 ? 'was' : 'were'} not part of it.`
      : `Saved to the record of patient ${state.cred.patientId}. You can close this page.`;
  } else {
    icon.textContent = '!';
    icon.className = 'big-icon error';
    $('outcome-title').textContent = o.stopped ? 'Commit stopped' : 'Commit failed';
    $('outcome-text').textContent = `${(o.message || '').replace(/^commit failed:?\s*/i, '')}${o.done ? ` ${RECORD_RULE}` : ''}`;
    errs.replaceChildren(...(o.errors || []).map((x) => {
      const n = M.photoNumber(state.model, x.imageId);
      return el('li', {}, n ? `Photo ${n}: ${x.error}` : x.error);
    }));
  }
}

main();
