// upload.js: the one upload pipeline both pages use. A photo is compressed in
// the browser (orientation applied, longest side <= 1920 px, JPEG < 1 MB, no
// metadata left since the canvas re-encodes only pixels), then presigned, PUT
// to S3 with progress, and recorded in the session. A photo never gives up on
// its own: network failures retry with a backoff capped at two minutes, at
// once when the browser comes back online or the API answers again, and at a
// tap. Only the server refusing it for good (the cap, another patient, a
// committed session) stops it, and then the GP decides; a photo the GP
// deleted on the desktop (410 image_deleted) is dropped at once.

import { ApiError } from './api.js';

export const MAX_SIDE = 1920;
export const MAX_BYTES = 1000 * 1000;

/** compress turns a camera file into a JPEG Blob within MAX_SIDE and MAX_BYTES. */
export async function compress(file, maxSide = MAX_SIDE, maxBytes = MAX_BYTES) {
  let bmp;
  try {
    bmp = await createImageBitmap(file, { imageOrientation: 'from-image' });
  } catch {
    throw new ApiError(0, 'unreadable', 'This file could not be read as a photo');
  }
  try {
    const scale = Math.min(1, maxSide / Math.max(bmp.width, bmp.height));
    let w = Math.max(1, Math.round(bmp.width * scale));
    let h = Math.max(1, Math.round(bmp.height * scale));
    for (let round = 0; round < 6; round++) {
      const canvas = document.createElement('canvas');
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#fff'; // transparent PNGs become white, not black
      ctx.fillRect(0, 0, w, h);
      ctx.drawImage(bmp, 0, 0, w, h);
      for (const q of [0.85, 0.78, 0.7, 0.6, 0.5]) {
        const blob = await new Promise((res) => canvas.toBlob(res, 'image/jpeg', q));
        if (blob && blob.size < maxBytes) return { blob, width: w, height: h };
      }
      w = Math.round(w * 0.8);
      h = Math.round(h * 0.8);
    }
  } finally {
    bmp.close();
  }
  throw new ApiError(0, 'too_large', 'This photo could not be made small enough');
}

/** putBlob PUTs blob to a presigned URL with XMLHttpRequest, reporting progress 0..1. */
export function putBlob(url, blob, headers, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', url);
    for (const [k, v] of Object.entries(headers || {})) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(new ApiError(xhr.status, 's3_put', `Upload refused (${xhr.status})`));
    };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'Upload interrupted'));
    xhr.ontimeout = () => reject(new ApiError(0, 'network', 'Upload timed out'));
    xhr.timeout = 120000;
    xhr.send(blob);
  });
}

// A photo waits and tries again on these; a session held for another
// patient (patient_mismatch) may be released, so its photos wait too.
const transient = (e) => e.network || e.code === 'object_missing' || e.code === 'patient_mismatch' || e.status >= 500 || e.status === 408 || e.status === 429;

const PERMANENT_TEXT = {
  committed: 'This session is already committed. Start a new capture from the desktop.',
  commit_in_progress: 'A commit is running. This photo was not added; send it again once the commit ends.',
  session_changed: 'This capture session has ended.',
  not_an_image: 'The server could not read this file as a photo.',
  too_large: 'This photo is too large.',
};

/** DELETED_TEXT tells the GP why a photo stopped: it was deleted on the desktop. */
export const DELETED_TEXT = 'This photo was deleted on the desktop, so it was not sent again.';

/** DELAYS are the waits between attempts (ms): doubling, then two minutes for as long as it takes. */
export const DELAYS = [1000, 2000, 4000, 8000, 15000, 30000, 60000, 120000];

/** newId is a random UUID, also where crypto.randomUUID is missing (plain http on a LAN). */
export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * UploadQueue runs uploads two at a time. Each item is
 * {localId, name, blob, thumb (object URL), state, progress, error, imageId, s3Key, putDone, nextTryAt}
 * with state one of compressing | waiting | uploading | recording | retrying |
 * blocked (refused for good, the GP decides) | removed (deleted on the desktop:
 * dropped from the store, never sent again, shown until dismissed) | done.
 * onChange(item) is called after every change; onRecorded(item, response) when the
 * server confirmed the photo. store (optional) keeps items across reloads.
 * extra() (optional) returns fields added to each record request, taken when
 * the photo is added: a retry after the desktop moved to another patient or
 * session still names the patient and session the photo was taken for.
 */
export class UploadQueue {
  constructor(api, { source, store, sessionId, onChange, onRecorded, extra, delays = DELAYS }) {
    this.api = api;
    this.source = source;
    this.store = store;
    this.sessionId = sessionId;
    this.onChange = onChange || (() => {});
    this.onRecorded = onRecorded || (() => {});
    this.extra = extra || (() => ({}));
    this.delays = delays;
    this.items = new Map();
    this.running = 0;
    this.concurrency = 2;
    this.offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    addEventListener('online', () => { this.offline = false; this.retryAll(); });
    addEventListener('offline', () => { this.offline = true; this.onChange(null); });
  }

  /** active counts photos on their way: neither confirmed nor refused. */
  get active() {
    let n = 0;
    for (const it of this.items.values()) if (it.state !== 'done' && it.state !== 'blocked' && it.state !== 'removed') n++;
    return n;
  }

  /** held counts photos this page holds that the server has not confirmed, refused ones included. */
  get held() {
    let n = 0;
    for (const it of this.items.values()) if (it.state !== 'done' && it.state !== 'removed') n++;
    return n;
  }

  /** waiting counts photos waiting for a connection (between attempts). */
  get waiting() {
    let n = 0;
    for (const it of this.items.values()) if (it.state === 'retrying' && !it.held) n++;
    return n;
  }

  /** onHold counts photos waiting because the session is held for another patient. */
  get onHold() {
    let n = 0;
    for (const it of this.items.values()) if (it.state === 'retrying' && it.held) n++;
    return n;
  }

  /** add compresses and enqueues files (File objects). */
  async add(files) {
    const list = [...files];
    const pending = list.map((f) => {
      const it = {
        localId: newId(), name: f.name || 'photo.jpg', state: 'compressing',
        progress: 0, error: '', attempts: 0, createdAt: Date.now(), extra: this.extra(),
      };
      // an instant thumbnail straight from the file, until the compressed copy exists
      try { it.thumb = URL.createObjectURL(f); } catch { /* no preview then */ }
      this.items.set(it.localId, it);
      this.onChange(it);
      return [it, f];
    });
    for (const [it, f] of pending) {
      try {
        const { blob } = await compress(f);
        it.blob = blob;
        if (it.thumb) URL.revokeObjectURL(it.thumb);
        it.thumb = URL.createObjectURL(blob);
        it.state = 'waiting';
        await this.persist(it);
      } catch (e) {
        it.state = 'blocked';
        it.error = e.message;
      }
      this.onChange(it);
      this.pump();
    }
  }

  /** resume re-enqueues items a previous page load left in the store. */
  async resume(records) {
    for (const r of records) {
      const it = { ...r, state: 'waiting', progress: 0, error: '', attempts: 0 };
      it.thumb = URL.createObjectURL(r.blob);
      this.items.set(it.localId, it);
      this.onChange(it);
    }
    this.pump();
  }

  /** retry sends one item now (the GP tapped it). */
  retry(localId) {
    const it = this.items.get(localId);
    if (!it || !it.blob) return;
    if (it.state === 'retrying') {
      it.wake();
      return;
    }
    if (it.state !== 'blocked') return;
    it.state = 'waiting';
    it.error = '';
    it.attempts = 0;
    this.onChange(it);
    this.pump();
  }

  /** retryAll cuts every wait short: the connection is back. */
  retryAll() {
    for (const it of this.items.values()) if (it.state === 'retrying' && it.wake) it.wake();
  }

  /** discard forgets an item that will not be uploaded. */
  async discard(localId) {
    const it = this.items.get(localId);
    if (!it || (it.state !== 'blocked' && it.state !== 'retrying' && it.state !== 'removed')) return;
    it.discarded = true;
    if (it.wake) it.wake();
    this.items.delete(localId);
    if (it.thumb) URL.revokeObjectURL(it.thumb);
    if (this.store) await this.store.delete(localId);
    it.state = 'discarded';
    this.onChange(it);
  }

  async persist(it) {
    if (!this.store) return;
    await this.store.put({
      localId: it.localId, sessionId: this.sessionId, name: it.name, blob: it.blob,
      createdAt: it.createdAt, imageId: it.imageId || '', s3Key: it.s3Key || '', putDone: !!it.putDone,
    });
  }

  pump() {
    for (const it of this.items.values()) {
      if (this.running >= this.concurrency) return;
      if (it.state !== 'waiting') continue;
      this.running++;
      it.state = 'uploading';
      this.onChange(it);
      this.run(it).finally(() => { this.running--; this.pump(); });
    }
  }

  async run(it) {
    for (;;) {
      try {
        await this.once(it);
        it.state = 'done';
        it.progress = 1;
        if (this.store) await this.store.delete(it.localId);
        this.onChange(it);
        return;
      } catch (e) {
        if (it.discarded) return;
        const err = e instanceof ApiError ? e : new ApiError(0, 'network', String(e && e.message));
        if (err.code === 'image_deleted') {
          // The GP deleted it on the desktop after it was recorded (this
          // page missed the answer): never send it again, under any id.
          it.state = 'removed';
          it.error = DELETED_TEXT;
          it.code = err.code;
          if (this.store) await this.store.delete(it.localId);
          this.onChange(it);
          return;
        }
        if (err.code === 'object_missing') it.putDone = false; // the bytes never landed: PUT again
        if (!transient(err)) {
          it.state = 'blocked';
          it.error = PERMANENT_TEXT[err.code] || err.message;
          it.code = err.code;
          this.onChange(it);
          return;
        }
        const delay = Math.round(this.delays[Math.min(it.attempts, this.delays.length - 1)] * (0.8 + Math.random() * 0.4));
        it.attempts++;
        it.state = 'retrying';
        it.network = err.network;
        it.nextTryAt = Date.now() + delay;
        it.held = err.code === 'patient_mismatch';
        it.error = err.network ? 'Waiting for a connection'
          : it.held ? 'On hold: another patient is open in the practice system' : `The server is busy (${err.status || err.code})`;
        this.onChange(it);
        await new Promise((res) => {
          const t = setTimeout(res, delay);
          it.wake = () => { clearTimeout(t); res(); };
        });
        it.wake = null;
        if (it.discarded) return;
        it.state = 'uploading';
        it.error = '';
        this.onChange(it);
      }
    }
  }

  // once makes one attempt at whatever is left: presign + PUT unless the bytes
  // are known to be in S3, then record. Recording is idempotent per imageId, so
  // a lost answer is retried with the same id and never makes a duplicate.
  async once(it) {
    if (!it.putDone) {
      const p = await this.api.presign('image/jpeg', it.blob.size, it.name.replace(/\.[^.]*$/, '') + '.jpg');
      it.imageId = p.imageId || newId();
      it.s3Key = p.s3Key;
      await this.persist(it);
      it.progress = 0;
      await putBlob(p.uploadUrl, it.blob, p.headers || { 'Content-Type': 'image/jpeg' }, (f) => {
        it.progress = f * 0.95;
        this.onChange(it);
      });
      it.putDone = true;
      await this.persist(it);
    }
    it.state = 'recording';
    this.onChange(it);
    const res = await this.api.addImage(it.imageId, it.s3Key, this.source, it.extra || this.extra());
    this.onRecorded(it, res);
  }
}
