// api.js: the HTTP API client both pages share. Every error the API answers
// is {"error","code"}; it becomes an ApiError carrying status, code and body.

/** ApiError is an answer of the API other than 2xx, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
    this.body = body || {};
  }
  /** network is true when the request never got an answer. */
  get network() { return this.status === 0; }
}

/**
 * Api calls /api/... on this origin with a bearer token.
 * tokenSource is an async function returning the current token; onUnauthorized
 * (optional) is called once on a 401 and may return a fresh token to retry with.
 */
export class Api {
  constructor(tokenSource, onUnauthorized) {
    this.tokenSource = tokenSource;
    this.onUnauthorized = onUnauthorized;
    this.userId = '';
    this.reachable = true;
    this.onBack = null; // called when the API answers again after a network failure
  }

  reached(ok) {
    const was = this.reachable;
    this.reachable = ok;
    if (ok && !was && this.onBack) this.onBack();
  }

  async request(method, path, body, extraHeaders = {}, retried = false) {
    const headers = { Accept: 'application/json', ...extraHeaders };
    const token = this.tokenSource ? await this.tokenSource() : '';
    if (token) headers.Authorization = `Bearer ${token}`;
    let init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      this.reached(false);
      throw new ApiError(0, 'network', 'No connection to the server');
    }
    this.reached(true);
    let data = {};
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: text }; }
    }
    if (res.status === 401 && !retried && this.onUnauthorized) {
      const fresh = await this.onUnauthorized();
      if (fresh) return this.request(method, path, body, extraHeaders, true);
    }
    if (!res.ok && res.status !== 202) {
      throw new ApiError(res.status, data.code, data.error || data.message, data);
    }
    data.__status = res.status;
    return data;
  }

  user(path) { return `/api/users/${encodeURIComponent(this.userId)}${path}`; }

  session() { return this.request('GET', this.user('/session')); }
  presign(contentType, contentLength, fileName) {
    return this.request('POST', this.user('/presigned-url'), { contentType, contentLength, fileName });
  }
  /** addImage records an uploaded photo; extra may name the open patient and the session shown ({patientId, sessionId}). */
  addImage(imageId, s3Key, source, extra) {
    return this.request('POST', this.user('/images'), { imageId, s3Key, source, ...(extra || {}) });
  }
  /** setOpenPatient tells the session which patient the practice system has open (desktop). */
  setOpenPatient(patientId) { return this.request('PUT', this.user('/open-patient'), { patientId }); }
  /** setPending tells the session how many photos this phone still holds. */
  setConsent(body) { return this.request('PUT', this.user('/consent'), body); }

  setPending(count) { return this.request('PUT', this.user('/pending'), { count }); }
  patchImage(imageId, fields) {
    return this.request('PATCH', this.user(`/images/${encodeURIComponent(imageId)}`), fields);
  }
  /** removePhone ends a paired phone's access at once: its credential and token renewal (desktop); sessionId as for stopCommit. */
  removePhone(phoneId, sessionId = '') {
    const q = sessionId ? `?sessionId=${encodeURIComponent(sessionId)}` : '';
    return this.request('DELETE', this.user(`/phones/${encodeURIComponent(phoneId)}${q}`));
  }
  deleteImage(imageId) {
    return this.request('DELETE', this.user(`/images/${encodeURIComponent(imageId)}`));
  }
  /** commit begins the commit; sessionId (the desktop's) refuses it once another desktop replaced that session. */
  commit(async = false, sessionId = '') {
    return this.request('POST', this.user('/commit'), sessionId ? { sessionId } : undefined, async ? { Prefer: 'respond-async' } : {});
  }
  commitStatus() { return this.request('GET', this.user('/commit')); }
  /** stopCommit stops waiting for ALEX; sessionId (the desktop's) never stops a session that replaced it. */
  stopCommit(sessionId = '') { return this.request('POST', this.user('/commit/stop'), sessionId ? { sessionId } : undefined); }
  realtimeToken() { return this.request('GET', this.user('/realtime-token')); }
  bodySites(q = '') { return this.request('GET', `/api/body-sites${q ? `?q=${encodeURIComponent(q)}` : ''}`); }
  vocabulary() { return this.request('GET', '/api/vocabulary'); }
  startSession(patientId, encounterId, discard) {
    const body = { patientId, encounterId };
    if (discard) body.discard = true;
    return this.request('POST', '/api/session-tokens', body);
  }
  exchange(token) {
    return this.request('GET', `/api/session-tokens/${encodeURIComponent(token)}`);
  }
}

/** el builds a DOM element: el('div', {class: 'x', onclick: f}, child, 'text'). */
export function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') n.addEventListener(k.slice(2), v);
    else if (k === 'class') n.className = v;
    else if (k === 'dataset') Object.assign(n.dataset, v);
    else if (v === true) n.setAttribute(k, '');
    else n.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

/**
 * confirmDialog shows a modal <dialog> and resolves true when the GP confirms.
 * body is a paragraph, or a list of them; safeFirst focuses Cancel.
 */
export function confirmDialog({ title, body, ok = 'OK', cancel = 'Cancel', danger = false, safeFirst = false }) {
  return new Promise((resolve) => {
    const okBtn = el('button', { type: 'button', class: danger ? 'btn danger' : 'btn primary', 'data-test': 'confirm-ok' }, ok);
    const cancelBtn = el('button', { type: 'button', class: 'btn', 'data-test': 'confirm-cancel' }, cancel);
    const d = el('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      el('h2', { id: 'confirm-title' }, title),
      [].concat(body).map((p) => el('p', {}, p)),
      el('div', { class: 'actions' }, cancelBtn, okBtn));
    let answered = false;
    const done = (v) => {
      if (answered) return;
      answered = true;
      d.close();
      d.remove();
      resolve(v);
    };
    okBtn.addEventListener('click', () => done(true));
    cancelBtn.addEventListener('click', () => done(false));
    d.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(d);
    d.showModal();
    (safeFirst ? cancelBtn : okBtn).focus(); // when waiting is the wiser answer, Enter waits
  });
}

/** sleep resolves after ms milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
