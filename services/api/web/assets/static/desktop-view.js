// desktop-view.js: the photo cards of the desktop widget. Cards are kept by
// key and updated in place, so a field being typed in keeps its focus and an
// image is not reloaded when its presigned URL is signed again.

import { el } from './api.js';
import { bodySitePicker } from './bodysite.js';
import { label } from './words.js';

const $ = (id) => document.getElementById(id);

const STATUS_TEXT = {
  compressing: 'Preparing', waiting: 'Waiting', uploading: 'Uploading', recording: 'Uploading',
  retrying: 'Waiting', blocked: 'Not added', removed: 'Deleted',
  processing: 'Processing', ready: 'Ready', rejected: 'Rejected', committed: 'In the record',
  failedcommit: 'Not committed', checking: 'Checking', needscheck: 'Check the record', conflict: 'Conflict',
};

// chipState is what a photo's chip says: where it stands in reaching the
// record (the committer's commitState) when that says more than its status.
function chipState(im) {
  switch (im.commitState) {
    case 'in_record': return 'committed';
    case 'sending': case 'unknown': return 'checking';
    case 'needs_checking': return 'needscheck';
    case 'conflict': return 'conflict';
  }
  return im.status === 'failed' ? 'failedcommit' : im.status;
}
const SOURCE_TEXT = { mobile: 'Phone', desktop: 'Desktop' };

/**
 * renderGrid shows the uploads this page still holds, then the session's
 * photos. ui carries: model, uploads, vocab, localThumbs, readOnly, and the
 * actions patch(id, fields, card), remove(id), view(id), retry(localId),
 * discard(localId), reconcile().
 */
export function renderGrid(ui) {
  const grid = $('grid');
  const want = [];
  for (const it of ui.uploads.items.values()) {
    if (it.state !== 'done') want.push(`u:${it.localId}`);
  }
  for (const im of ui.model.images) want.push(`i:${im.id}`);
  const have = new Map([...grid.children].map((c) => [c.dataset.key, c]));
  for (const [k, c] of have) if (!want.includes(k)) c.remove();
  let prev = null;
  let n = 0;
  for (const k of want) {
    let card = have.get(k);
    if (k.startsWith('u:')) {
      if (!card) card = uploadCard(k);
      updateUploadCard(card, ui.uploads.items.get(k.slice(2)), ui);
    } else {
      const im = ui.model.images.find((x) => x.id === k.slice(2));
      if (!card) card = imageCard(im.id, ui);
      updateImageCard(card, im, ++n, ui);
    }
    if (prev ? prev.nextSibling !== card : grid.firstChild !== card) {
      if (prev) prev.after(card); else grid.prepend(card);
    }
    prev = card;
  }
}

function uploadCard(key) {
  return el('li', { class: 'card uploading', dataset: { key, test: 'upload-card' } },
    el('div', { class: 'thumb' }, el('img', { alt: 'Photo being added' }), el('span', { class: 'chip' })),
    el('div', { class: 'fields' },
      el('div', { class: 'bar-track' }, el('span')),
      el('p', { class: 'note' }),
      el('p', { class: 'row' },
        el('button', { type: 'button', class: 'btn small retry', hidden: true }, 'Retry now'),
        el('button', { type: 'button', class: 'btn small discard', hidden: true }, 'Remove'))));
}

function updateUploadCard(card, it, ui) {
  const img = card.querySelector('img');
  if (it.thumb && img.getAttribute('src') !== it.thumb) img.src = it.thumb;
  const chip = card.querySelector('.chip');
  chip.textContent = STATUS_TEXT[it.state] || it.state;
  chip.className = `chip st-${it.state}`;
  card.dataset.state = it.state;
  card.querySelector('.bar-track span').style.width = `${Math.round((it.progress || 0) * 100)}%`;
  card.querySelector('.note').textContent = it.error || '';
  card.querySelector('.note').classList.toggle('error', it.state === 'blocked');
  const retry = card.querySelector('.retry');
  retry.hidden = it.state !== 'retrying' || ui.readOnly;
  retry.onclick = () => ui.retry(it.localId);
  const discard = card.querySelector('.discard');
  discard.hidden = it.state !== 'blocked' && it.state !== 'retrying' && it.state !== 'removed';
  discard.onclick = () => ui.discard(it.localId);
}

function imageCard(id, ui) {
  const uid = `f-${id.slice(0, 8)}`;
  const card = el('li', { class: 'card', dataset: { key: `i:${id}`, id, test: 'image-card' } });
  const site = bodySitePicker(ui.api, {
    label: 'Body site',
    onPick: (code, display) => ui.patch(id, { bodySite: code, bodySiteDisplay: display }, card),
    onInvalid: (msg) => setCardNote(card, msg, true),
  });
  card.site = site;
  const lat = el('select', { id: `${uid}-lat`, class: 'lat', 'data-test': 'laterality' });
  const view = el('select', { id: `${uid}-view`, class: 'view', 'data-test': 'view' });
  const notes = el('textarea', { id: `${uid}-notes`, class: 'notes', rows: 2, 'data-test': 'notes' });
  const del = el('button', { type: 'button', class: 'btn small danger', 'data-test': 'delete' }, 'Delete');
  const trail = el('button', { type: 'button', class: 'btn small trail-open', 'data-test': 'trail-open', onclick: () => ui.trail(id) }, 'Trail');
  const zoom = el('button', { type: 'button', class: 'zoom', 'data-test': 'zoom', onclick: () => ui.view(id) },
    el('img', { alt: '', 'data-test': 'preview', hidden: true }));
  card.append(
    el('div', { class: 'thumb' }, zoom,
      el('span', { class: 'placeholder spin' }),
      el('span', { class: 'chip', 'data-test': 'status' }),
      el('span', { class: 'src', 'data-test': 'source' })),
    el('div', { class: 'fields' },
      el('p', { class: 'num', 'data-test': 'photo-number' }),
      site.root,
      el('div', { class: 'row two' },
        el('span', {}, el('label', { for: lat.id }, 'Side'), lat),
        el('span', {}, el('label', { for: view.id }, 'View'), view)),
      el('label', { for: notes.id }, 'Notes'), notes,
      el('p', { class: 'row' }, el('span', { class: 'note', 'aria-live': 'polite', 'data-test': 'card-note' }), trail, del)));

  lat.addEventListener('change', () => ui.patch(id, { laterality: lat.value }, card));
  view.addEventListener('change', () => ui.patch(id, { viewType: view.value }, card));
  let t;
  const flush = () => {
    if (!card.dataset.notesDirty) return;
    clearTimeout(t);
    delete card.dataset.notesDirty;
    ui.patch(id, { notes: notes.value }, card);
  };
  notes.addEventListener('input', () => {
    card.dataset.notesDirty = '1';
    clearTimeout(t);
    t = setTimeout(flush, 800);
  });
  notes.addEventListener('blur', flush);
  del.addEventListener('click', () => ui.remove(id));
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
      ui.reconcile();
    }
  });
  return card;
}

// options fills a select with '' and the vocabulary's terms, once they are known.
function options(select, terms) {
  if (select.options.length === terms.length + 1) return;
  const v = select.value;
  select.replaceChildren(el('option', { value: '' }, '—'), ...terms.map((t) => el('option', { value: t.code }, t.display)));
  select.value = v;
}

function updateImageCard(card, im, n, ui) {
  const img = card.querySelector('img');
  // the same preview object keeps the URL it loaded with (a fresh signature is
  // the same picture); a new object, or a broken URL, takes the new one
  let src = im.previewUrl || ui.localThumbs.get(im.id) || '';
  const loaded = img.getAttribute('src') || '';
  if (src && loaded && card.dataset.previewKey === (im.previewKey || '') && loaded !== card.dataset.broken && !loaded.startsWith('blob:')) src = loaded;
  if (src && src === card.dataset.broken) src = '';
  if (src && loaded !== src) img.src = src;
  card.dataset.previewKey = im.previewKey || '';
  img.hidden = !src;
  const m = im.metadata || {};
  img.alt = `Photo ${n}${m.bodySiteDisplay ? `, ${m.bodySiteDisplay}` : ''}`;
  const ph = card.querySelector('.placeholder');
  ph.hidden = !!src;
  const waiting = im.status === 'processing' || im.status === 'ready';
  ph.classList.toggle('spin', waiting);
  ph.textContent = waiting ? '' : im.commitState === 'in_record' ? 'In the patient record' : 'No preview';
  const st = chipState(im);
  const chip = card.querySelector('.chip');
  chip.textContent = STATUS_TEXT[st] || im.status;
  chip.className = `chip st-${st}`;
  card.dataset.status = im.status;
  card.dataset.commitState = im.commitState || '';
  card.querySelector('.src').textContent = SOURCE_TEXT[im.source] || im.source || '';
  card.querySelector('.num').textContent = `Photo ${n}`;
  card.setAttribute('aria-label', `Photo ${n}`);

  // every control names its photo, so a screen reader's list of them is usable
  const zoom = card.querySelector('.zoom');
  zoom.setAttribute('aria-label', `View photo ${n} larger`);
  card.querySelector('[data-test=delete]').setAttribute('aria-label', `Delete photo ${n}`);
  const lat = card.querySelector('.lat');
  const view = card.querySelector('.view');
  const notes = card.querySelector('.notes');
  card.site.input.setAttribute('aria-label', `Body site of photo ${n}`);
  lat.setAttribute('aria-label', `Side of photo ${n}`);
  view.setAttribute('aria-label', `View of photo ${n}`);
  notes.setAttribute('aria-label', `Notes on photo ${n}`);
  notes.maxLength = ui.vocab.limits.maxNotes;
  options(lat, ui.vocab.lateralities);
  options(view, ui.vocab.views);

  const saving = Number(card.dataset.saving || 0) > 0;
  if (!saving) card.site.set(m.bodySite || '', m.bodySiteDisplay || label([], m.bodySite));
  if (document.activeElement !== lat && !saving) lat.value = m.laterality || '';
  if (document.activeElement !== view && !saving) view.value = m.viewType || '';
  if (document.activeElement !== notes && !card.dataset.notesDirty && !saving) notes.value = m.notes || '';
  // ALEX has no undo: a photo in the record (or that may be) stays as sent
  const locked = ui.readOnly || im.status === 'committed' || ['in_record', 'sending', 'unknown'].includes(im.commitState);
  card.site.disable(locked);
  for (const f of card.querySelectorAll('select, textarea, button:not(.zoom):not(.trail-open)')) f.disabled = locked;
  card.classList.toggle('locked', locked);
  zoom.disabled = !src;
  const note = card.querySelector('.note');
  if (im.status === 'rejected') setCardNote(card, im.rejectReason || 'Not an acceptable photo', true);
  else if (im.commitState === 'in_record' && im.mediaId) setCardNote(card, `In the patient record (Media ${im.mediaId})`);
  else if (im.error) setCardNote(card, im.error, true);
  else if (note.classList.contains('error') && !saving && !card.site.input.getAttribute('aria-invalid')) setCardNote(card, '');
}

/** setCardNote writes the small status line of a card. */
export function setCardNote(card, text, error = false) {
  const n = card.querySelector('.note');
  if (!n) return;
  n.textContent = text;
  n.classList.toggle('error', error);
}

/** openViewer shows one photo as large as the screen allows. */
export function openViewer(src, caption) {
  $('viewer-img').src = src;
  $('viewer-img').alt = caption;
  $('viewer-caption').textContent = caption;
  $('viewer').showModal();
}

// TRAIL_WORDS is what each audit step reads as on a photo's trail.
const TRAIL_WORDS = {
  session_started: 'Session started', phone_paired: 'Phone paired', phone_removed: 'Phone removed',
  consent_recorded: 'Consent recorded', captured: 'Captured', uploaded: 'Uploaded', verified: 'Verified',
  cleaned: 'Cleaned (metadata removed)', rejected: 'Rejected', coded: 'Coding changed', deleted: 'Deleted',
  commit_requested: 'Commit requested', commit_attempt: 'Commit attempt', commit_photo: 'Commit',
  commit_succeeded: 'Commit succeeded', commit_failed: 'Commit failed',
};

const OUTCOME_WORDS = {
  in_record: 'in the record', refused: 'refused by ALEX', unknown: 'answer unclear, looked up before sending again',
  pending: 'not stored, will be sent again', needs_checking: 'needs checking', conflict: 'conflict',
  waiting: 'waiting to try again', started: 'started', stopped: 'stopped by the GP', failed: 'failed', committed: 'committed',
};

/** trailLine is one audit record as a line of a photo's trail: when, what, who, and the evidence. */
export function trailLine(r) {
  const when = new Date(r.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const bits = [];
  if (r.by) bits.push(`by ${r.by}`);
  if (r.device) bits.push(r.device);
  if (r.bytes) bits.push(`${r.bytes.toLocaleString()} bytes`);
  if (r.fields && r.fields.length) bits.push(r.fields.join(', '));
  if (r.attempt) bits.push(`attempt ${r.attempt}`);
  if (r.outcome && r.step !== 'commit_succeeded' && r.outcome !== 'failed') bits.push(OUTCOME_WORDS[r.outcome] || r.outcome);
  if (r.mediaId) bits.push(`Media ${r.mediaId}`);
  if (r.detail) bits.push(r.detail);
  const hashes = [];
  if (r.sha256) hashes.push(el('code', { title: r.sha256, 'data-test': 'trail-sha256' }, `SHA-256 ${r.sha256.slice(0, 16)}…`));
  if (r.sha1) hashes.push(el('code', { title: r.sha1, 'data-test': 'trail-sha1' }, `SHA-1 ${r.sha1}`));
  return el('li', { dataset: { step: r.step, test: 'trail-step' } },
    el('time', { datetime: r.at }, when), ' ',
    el('strong', {}, TRAIL_WORDS[r.step] || r.step),
    bits.length ? ` · ${bits.join(' · ')}` : '',
    ...hashes.flatMap((h) => [' ', h]));
}

/** openTrail shows one photo's chain of custody: its own records and the commits'. */
export function openTrail(title, records, onExport) {
  const list = document.getElementById('trail-list');
  list.replaceChildren(...(records.length ? records.map(trailLine)
    : [el('li', { class: 'muted', 'data-test': 'trail-empty' }, 'Nothing recorded yet: the trail follows within seconds.')]));
  document.getElementById('trail-title').textContent = title;
  document.getElementById('trail-csv').onclick = onExport;
  document.getElementById('trail').showModal();
}
