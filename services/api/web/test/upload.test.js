// Unit tests of the upload queue's answer to the record request (node
// --test): a server error is retried, a refusal blocks the photo for the GP
// to decide, and a photo the GP deleted on the desktop (410 image_deleted)
// is dropped at once, never sent again, and said so plainly.
import { test } from 'node:test';
import assert from 'node:assert/strict';

// The queue listens for online/offline on the page; Node has no window.
globalThis.addEventListener ??= () => {};

const { UploadQueue, DELETED_TEXT } = await import('../assets/static/upload.js');
const { ApiError } = await import('../assets/static/api.js');

// fakeStore is the IndexedDB store of photos still on the phone.
function fakeStore() {
  const kept = new Map();
  return { kept, put: async (r) => { kept.set(r.localId, r); }, delete: async (id) => { kept.delete(id); } };
}

// queueWith runs one photo, already in S3, through a queue whose record
// request answers each of answers in turn (an ApiError is thrown), and
// resolves once the photo stops: done, blocked or removed.
async function queueWith(answers) {
  const store = fakeStore();
  let calls = 0;
  const api = {
    presign: async () => { throw new Error('the photo is in S3 already: no presign'); },
    addImage: async () => {
      const a = answers[Math.min(calls++, answers.length - 1)];
      if (a instanceof Error) throw a;
      return a;
    },
  };
  let settled;
  const stopped = new Promise((res) => { settled = res; });
  const q = new UploadQueue(api, {
    source: 'mobile', store, sessionId: 's1', delays: [0],
    onChange: (it) => { if (it && ['done', 'blocked', 'removed'].includes(it.state)) settled(it); },
  });
  const rec = { localId: 'l1', sessionId: 's1', name: 'a.jpg', blob: new Blob(['x']), createdAt: 0, imageId: 'img_1', s3Key: 'temp/u1/img_1.jpg', putDone: true };
  await store.put(rec);
  await q.resume([rec]);
  const it = await stopped;
  return { q, it, store, calls: () => calls };
}

test('the record answer decides: retry, block or drop', async (t) => {
  const deleted = new ApiError(410, 'image_deleted', 'this photo was deleted from the session on the desktop; it is not added again');
  for (const tc of [
    { name: 'deleted on the desktop', answers: [deleted], state: 'removed', calls: 1, held: 0, kept: false, error: DELETED_TEXT },
    { name: 'a server error, then recorded', answers: [new ApiError(503, 'unavailable', 'busy'), { success: true }], state: 'done', calls: 2, held: 0, kept: false },
    { name: 'a lost answer, then deleted on the desktop', answers: [new ApiError(0, 'network', 'offline'), deleted], state: 'removed', calls: 2, held: 0, kept: false, error: DELETED_TEXT },
    { name: 'refused for good', answers: [new ApiError(409, 'committed', 'committed')], state: 'blocked', calls: 1, held: 1, kept: true },
  ]) {
    await t.test(tc.name, async () => {
      const { q, it, store, calls } = await queueWith(tc.answers);
      // give a wrongly scheduled retry the chance to happen
      await new Promise((res) => setTimeout(res, 20));
      assert.equal(it.state, tc.state);
      assert.equal(calls(), tc.calls, 'record requests sent');
      assert.equal(q.active, 0, 'photos still on their way');
      assert.equal(q.held, tc.held, 'photos the phone still holds');
      assert.equal(store.kept.has('l1'), tc.kept, 'kept on the phone across reloads');
      if (tc.error) assert.equal(it.error, tc.error);
    });
  }
});

test('a photo deleted on the desktop is dismissed, and a tap does not send it', async () => {
  const { q, calls } = await queueWith([new ApiError(410, 'image_deleted', 'deleted')]);
  q.retry('l1');
  await new Promise((res) => setTimeout(res, 20));
  assert.equal(calls(), 1, 'a tap sent it again');
  await q.discard('l1');
  assert.equal(q.items.size, 0);
});
