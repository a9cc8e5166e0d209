// earlier.js: the patient's earlier photos from the record, beside the new
// ones. The API reads them from ALEX (by the patient's NHI, with the
// practice's credentials, never from this page) and hands out previews;
// the panel lists them newest first, filtered to the body site of the photo
// in focus (or all), and Compare opens one beside a new photo at the same
// size.

import { ApiError, el } from './api.js';

const $ = (id) => document.getElementById(id);

// STALE_MS is how old an answer may grow before its preview URLs are
// fetched again: well inside VIEW_URL_EXPIRY's default of 15 minutes.
const STALE_MS = 10 * 60 * 1000;

/** when is a date as the list reads it: "9 May 2026". */
export function when(iso) {
  if (!iso) return 'Date unknown';
  return new Date(iso).toLocaleDateString('en-NZ', { day: 'numeric', month: 'short', year: 'numeric' });
}

/** siteText is an earlier photo's body site as it reads. */
function siteText(p) {
  return (p.bodySite && (p.bodySite.display || p.bodySite.code)) || 'Body site not coded';
}

/**
 * filterBySite keeps the earlier photos of body site code (all when code is
 * empty or all is true), in the order given (newest first).
 */
export function filterBySite(photos, code, all) {
  if (all || !code) return photos;
  return photos.filter((p) => p.bodySite && p.bodySite.code === code);
}

/**
 * EarlierPanel fills the #earlier section. ui gives: api, focus() -> the new
 * photo in focus {id, n, site, siteDisplay, src} or null, photos() -> every
 * new photo with a picture ({id, n, src, what}).
 */
export class EarlierPanel {
  constructor(ui) {
    this.ui = ui;
    this.sessionId = '';
    this.answer = null; // the API's answer for sessionId
    this.error = null;
    this.loading = false;
    this.showAll = false;
    this.loadedAt = 0; // when the answer came: its preview URLs are presigned for VIEW_URL_EXPIRY (15 min)
    this.loads = 0;
    this.root = $('earlier');
    $('earlier-all').addEventListener('click', () => { this.showAll = !this.showAll; this.render(); });
    $('earlier-retry').addEventListener('click', () => this.load(true));
    $('compare-close').addEventListener('click', () => $('compare').close());
    $('compare-new').addEventListener('change', () => this.showNew($('compare-new').value));
  }

  /** update loads the session's earlier photos once, then renders. */
  update(sessionId, visible) {
    this.root.hidden = !visible;
    if (!visible) return;
    if (sessionId !== this.sessionId) {
      this.sessionId = sessionId;
      this.answer = null;
      this.error = null;
      this.load();
    } else if (this.stale()) {
      this.load(); // fresh preview URLs; the API answers from its cache, ALEX is not asked
    }
    this.render();
  }

  /** stale is true when the previews' URLs may be about to expire. */
  stale() {
    return !!this.answer && !this.loading && Date.now() - this.loadedAt > STALE_MS;
  }

  async load(again = false) {
    if (this.loading && !again) return;
    const sid = this.sessionId;
    this.loading = true;
    this.error = null;
    this.render();
    try {
      const a = await this.ui.api.request('GET', this.ui.api.user('/earlier-photos'));
      if (sid === this.sessionId) {
        this.answer = a;
        this.loadedAt = Date.now();
        this.loads++;
      }
    } catch (e) {
      if (sid === this.sessionId) this.error = e instanceof ApiError ? e : new ApiError(0, 'network', String(e));
    } finally {
      this.loading = false;
      this.render();
    }
  }

  render() {
    if (this.root.hidden) return;
    const stateP = $('earlier-state');
    const list = $('earlier-list');
    const filter = $('earlier-filter');
    const all = $('earlier-all');
    $('earlier-retry').hidden = !this.error;
    stateP.classList.toggle('error', !!this.error);
    if (this.loading && !this.answer) {
      this.show(stateP, 'Looking up earlier photos in the record…', 'loading');
      list.replaceChildren();
      filter.hidden = true;
      return;
    }
    if (this.error) {
      // only this panel is affected: the rest of the widget works on
      const why = this.error.code === 'alex_unavailable' ? 'the practice record did not answer' : this.error.message;
      this.show(stateP, `Earlier photos are unavailable right now (${why}).`, 'unavailable');
      list.replaceChildren();
      filter.hidden = true;
      return;
    }
    const a = this.answer;
    if (!a) return;
    const photos = a.photos || [];
    if (a.state !== 'ok' || !photos.length) {
      this.show(stateP, a.message || 'No earlier photos of this patient in the record.', a.state || 'none');
      list.replaceChildren();
      filter.hidden = true;
      return;
    }
    const focus = this.ui.focus();
    const code = focus && focus.site;
    const shown = filterBySite(photos, code, this.showAll);
    filter.hidden = false;
    all.hidden = !code;
    all.textContent = this.showAll ? `Only ${focus.siteDisplay || 'this body site'}` : `Show all ${photos.length}`;
    all.setAttribute('aria-pressed', String(this.showAll));
    const scope = !code ? 'all body sites'
      : this.showAll ? `all body sites (photo ${focus.n} is ${focus.siteDisplay || code})`
        : `${focus.siteDisplay || code}, as photo ${focus.n}`;
    $('earlier-scope').textContent = `${shown.length} of ${photos.length} · ${scope}`;
    if (!shown.length) {
      this.show(stateP, `No earlier photos of ${focus.siteDisplay || 'this body site'}.`, 'none-here');
    } else {
      stateP.hidden = true;
      stateP.dataset.state = 'ok';
    }
    const key = `${this.loads}:${shown.map((p) => p.id).join(',')}${focus ? `|${focus.id}` : ''}`;
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(...shown.map((p) => this.row(p)));
  }

  show(p, text, state) {
    p.hidden = false;
    p.textContent = text;
    p.dataset.state = state;
  }

  row(p) {
    const date = when(p.taken);
    const site = siteText(p);
    const extra = [p.view].filter(Boolean).join(' · ');
    const compare = el('button', { type: 'button', class: 'btn small', 'data-test': 'earlier-compare', 'aria-label': `Compare the photo of ${date}, ${site}, with a new photo` }, 'Compare');
    compare.addEventListener('click', () => this.compare(p));
    const thumb = p.previewUrl
      ? el('img', { src: p.previewUrl, alt: `Earlier photo, ${date}, ${site}`, loading: 'lazy', 'data-test': 'earlier-preview' })
      : el('span', { class: 'placeholder' }, 'No preview');
    return el('li', { class: 'earlier-item', dataset: { id: p.id, site: (p.bodySite && p.bodySite.code) || '', test: 'earlier-item' } },
      el('div', { class: 'earlier-thumb' }, thumb),
      el('div', { class: 'earlier-text' },
        el('p', { class: 'earlier-head' }, el('time', { datetime: p.taken || '', 'data-test': 'earlier-date' }, date), ' · ',
          el('span', { 'data-test': 'earlier-site' }, site)),
        extra ? el('p', { class: 'muted small' }, extra) : '',
        p.note ? el('p', { class: 'earlier-note', 'data-test': 'earlier-note' }, p.note) : '',
        el('p', { class: 'row' }, compare)));
  }

  /** compare opens earlier photo p beside a new photo, both the same size. */
  async compare(p) {
    if (this.stale()) {
      await this.load();
      p = ((this.answer && this.answer.photos) || []).find((x) => x.id === p.id) || p;
    }
    const left = $('compare-earlier');
    left.src = p.previewUrl || '';
    left.alt = `Earlier photo, ${when(p.taken)}, ${siteText(p)}`;
    left.hidden = !p.previewUrl;
    $('compare-earlier-caption').textContent = `Earlier · ${when(p.taken)} · ${siteText(p)}${p.note ? ` · ${p.note}` : ''}`;
    const news = this.ui.photos();
    const sel = $('compare-new');
    sel.replaceChildren(...news.map((x) => el('option', { value: x.id }, `Photo ${x.n}${x.what ? ` · ${x.what}` : ''}`)));
    sel.hidden = news.length < 2;
    const focus = this.ui.focus();
    const pick = news.find((x) => focus && x.id === focus.id) || news[news.length - 1];
    if (pick) sel.value = pick.id;
    this.showNew(pick ? pick.id : '');
    $('compare').showModal();
  }

  showNew(id) {
    const x = this.ui.photos().find((y) => y.id === id);
    const img = $('compare-new-img');
    img.hidden = !x;
    $('compare-new-empty').hidden = !!x;
    if (x) {
      img.src = x.src;
      img.alt = `New photo ${x.n}${x.what ? `, ${x.what}` : ''}`;
    }
    $('compare-new-caption').textContent = x ? `New · photo ${x.n}${x.what ? ` · ${x.what}` : ''}` : 'New';
  }
}
