// store.js: photos waiting to upload, kept in IndexedDB so a reload resumes
// them. A record is deleted as soon as the server confirms its photo; nothing
// here ever reaches the phone's gallery.

const DB = 'clinimg-phone';
const STORE = 'pending';

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** PendingStore is the IndexedDB object store of photos not yet confirmed. */
export class PendingStore {
  static async open() {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE, { keyPath: 'localId' });
    const s = new PendingStore();
    s.db = await req(open);
    return s;
  }
  tx(mode) { return this.db.transaction(STORE, mode).objectStore(STORE); }
  /** put stores or replaces one record {localId, sessionId, blob, ...}. */
  put(rec) { return req(this.tx('readwrite').put(rec)); }
  /** delete removes one record. */
  delete(localId) { return req(this.tx('readwrite').delete(localId)); }
  /** all lists every record, oldest first. */
  async all() {
    const recs = await req(this.tx('readonly').getAll());
    return recs.sort((a, b) => a.createdAt - b.createdAt);
  }
}
