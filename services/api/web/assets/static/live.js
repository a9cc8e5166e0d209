// live.js: the realtime feed of one session channel, honest about its state.
// It opens an EventSource on the URL the API hands out (Ably SSE or the local
// relay), renews the token before it expires, and whenever the stream is down
// polls the session every few seconds so the screen stays right; once the
// stream is back it reconciles from the API and applies live events again.

import { sleep } from './api.js';

/**
 * Live states: connecting | live | reconnecting | idle (no session to listen to).
 * handlers: onEvent(name, data, id), onSession(session) (a fresh GET of the
 * session), onState(state), onSessionError(err) (GET failed with an answer).
 */
export class Live {
  constructor(api, handlers, { pollMs = 3000 } = {}) {
    this.api = api;
    this.h = handlers;
    this.pollMs = pollMs;
    this.state = '';
    this.es = null;
    this.lastEventId = '';
    this.attempt = 0;
    this.stopped = false;
    this.reconciling = null;
    this.reconcileAgain = false;
    addEventListener('online', () => { if (this.state !== 'live') this.reopenSoon(0); });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.reconcile();
    });
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    if (this.h.onState) this.h.onState(s);
    if (s === 'live') this.stopPolling();
    else this.startPolling();
  }

  /** start shows the session at once and opens the stream (which reconciles again once open). */
  start() {
    this.stopped = false;
    this.setState('connecting');
    this.reconcile();
    this.open();
  }

  /** stop closes everything. */
  stop() {
    this.stopped = true;
    this.close();
    this.stopPolling();
    clearTimeout(this.reopenTimer);
  }

  close() {
    clearTimeout(this.renewTimer);
    if (this.es) this.es.close();
    this.es = null;
  }

  async open() {
    if (this.stopped || this.opening) return;
    this.opening = true;
    try {
      await this.openOnce();
    } finally {
      this.opening = false;
    }
  }

  async openOnce() {
    clearTimeout(this.reopenTimer);
    let tok;
    try {
      tok = await this.api.realtimeToken();
    } catch (e) {
      if (e.status === 404 || e.status === 410) {
        // no session yet (or it ended): nothing to listen to; the polling
        // notices when one starts and opens the stream then
        this.close();
        this.setState('idle');
        return;
      }
      this.fail();
      return;
    }
    if (this.stopped) return;
    this.close();
    const sep = tok.url.includes('?') ? '&' : '?';
    let url = `${tok.url}${sep}v=1.2&channels=${encodeURIComponent(tok.channel)}&accessToken=${encodeURIComponent(tok.token)}`;
    if (this.lastEventId) url += `&lastEvent=${encodeURIComponent(this.lastEventId)}`;
    const es = new EventSource(url);
    this.es = es;
    es.addEventListener('open', () => {
      if (this.es !== es) return;
      this.attempt = 0;
      this.setState('live');
      this.reconcile(); // whatever happened while we were away
      this.scheduleRenew(tok.expiresAt);
    });
    es.addEventListener('message', (e) => {
      if (this.es !== es) return;
      if (e.lastEventId) this.lastEventId = e.lastEventId;
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      let data = msg.data;
      if (typeof data === 'string') {
        try { data = JSON.parse(data); } catch { return; }
      }
      if (msg.id && !e.lastEventId) this.lastEventId = msg.id;
      this.h.onEvent(msg.name, data || {}, msg.id);
    });
    es.addEventListener('error', (e) => {
      if (this.es !== es) return;
      let code = 0;
      if (e.data) {
        try {
          const d = JSON.parse(e.data);
          code = Number(d.code || (d.error && d.error.code) || 0);
        } catch { /* not JSON: a plain connection error */ }
      }
      this.close();
      if (code >= 40140 && code < 40150) {
        this.open(); // token expired or revoked: fetch a new one, resume from lastEvent
        return;
      }
      this.fail();
    });
  }

  scheduleRenew(expiresAt) {
    clearTimeout(this.renewTimer);
    const at = Date.parse(expiresAt);
    if (!at) return;
    // a minute before expiry, or at three quarters of a short lifetime
    const left = at - Date.now();
    const ms = Math.max(2000, left > 240000 ? left - 60000 : left * 0.75);
    this.renewTimer = setTimeout(() => this.open(), ms);
  }

  fail() {
    if (this.stopped) return;
    this.setState('reconnecting');
    const delays = [1000, 2000, 4000, 8000, 15000];
    this.reopenSoon(delays[Math.min(this.attempt, delays.length - 1)]);
    this.attempt++;
  }

  reopenSoon(ms) {
    clearTimeout(this.reopenTimer);
    this.reopenTimer = setTimeout(() => this.open(), ms);
  }

  startPolling() {
    if (this.pollTimer || this.stopped) return;
    this.pollTimer = setInterval(() => this.reconcile(), this.pollMs);
  }

  stopPolling() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  /** reconcile GETs the session and hands it over; calls made while one runs coalesce. */
  async reconcile() {
    if (this.reconciling) {
      this.reconcileAgain = true;
      return this.reconciling;
    }
    this.reconciling = (async () => {
      do {
        this.reconcileAgain = false;
        try {
          const s = await this.api.session();
          this.h.onSession(s);
          if (this.state === 'idle' && !this.stopped) this.open();
        } catch (e) {
          if (this.h.onSessionError) this.h.onSessionError(e);
          if (e.network) await sleep(500);
        }
      } while (this.reconcileAgain && !this.stopped);
    })();
    try { await this.reconciling; } finally { this.reconciling = null; }
  }
}
