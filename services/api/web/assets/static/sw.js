// sw.js: the phone page's service worker. It keeps the page and its scripts
// so that a reload without a connection shows the photos waiting on the phone
// (they live in IndexedDB) instead of the browser's "No internet" page. The
// network always comes first, so a new version is picked up at once; the
// copy is only for when there is no answer. The API is never cached.

const CACHE = 'clinimg-phone-v2';
const SHELL = ['/mobile', '/static/style.css', '/static/mobile.js', '/static/api.js', '/static/bodysite.js', '/static/consent.js',
  '/static/live.js', '/static/model.js', '/static/store.js', '/static/upload.js', '/static/words.js'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const page = url.pathname === '/mobile' || url.pathname === '/mobile/';
  if (!page && !SHELL.includes(url.pathname)) return;
  const key = page ? '/mobile' : url.pathname; // the page is one, whatever its query (a used QR token)
  e.respondWith((async () => {
    try {
      const res = await fetch(e.request);
      if (res.ok) {
        const copy = res.clone();
        e.waitUntil(caches.open(CACHE).then((c) => c.put(key, copy)));
      }
      return res;
    } catch (err) {
      const hit = await caches.match(key);
      if (hit) return hit;
      throw err;
    }
  })());
});
