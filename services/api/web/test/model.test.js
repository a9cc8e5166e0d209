// Unit tests of the shared session model (node --test). The property test
// delivers a session's events duplicated, reordered and with gaps, from a
// printed seed, and checks that the model never shows something older than
// it showed, never invents a photo, and after a snapshot equals the session.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as M from '../assets/static/model.js';
import { plural, limitText, coding, consentText, discardText, FALLBACK } from '../assets/static/words.js';

const img = (id, v, extra = {}) => ({ id, status: 'processing', metadata: { bodySite: '' }, version: v, ...extra });
const snap = (version, images, extra = {}) => ({
  sessionId: 's1', userId: 'u1', patientId: 'p1', encounterId: 'e1', commitStatus: 'none', version, images, ...extra,
});
const ev = (version, extra = {}) => ({ sessionId: 's1', version, ...extra });

test('a snapshot is shown whole; an older one of the same session changes nothing', () => {
  let m = M.applySnapshot(M.empty(), snap(3, [img('a', 2), img('b', 3)]));
  assert.deepEqual(m.images.map((i) => i.id), ['a', 'b']);
  assert.equal(m.version, 3);
  const older = M.applySnapshot(m, snap(2, [img('a', 2)]));
  assert.equal(older, m);
  m = M.applySnapshot(m, snap(1, [], { sessionId: 's2', patientId: 'p2' }));
  assert.equal(m.sessionId, 's2');
  assert.equal(m.images.length, 0, 'another session replaces everything');
});

test('events apply once, in version order per photo', () => {
  let m = M.applySnapshot(M.empty(), snap(1, []));
  let r = M.applyEvent(m, 'image-uploaded', ev(2, { image: img('a', 2) }));
  assert.equal(r.reconcile, false);
  m = r.model;
  r = M.applyEvent(m, 'image-updated', ev(3, { image: img('a', 3, { metadata: { bodySite: '14975008' } }) }));
  m = r.model;
  // the same upload again (a redelivery) and an older update: nothing changes
  for (const [name, d] of [['image-uploaded', ev(2, { image: img('a', 2) })], ['image-updated', ev(3, { image: img('a', 3) })]]) {
    r = M.applyEvent(m, name, d);
    assert.equal(r.model.images[0].metadata.bodySite, '14975008', `${name} v${d.version} undid a later change`);
    assert.equal(r.model.images.length, 1);
  }
});

test('a gap asks for a snapshot; a removal is not undone by a late upload', () => {
  let m = M.applySnapshot(M.empty(), snap(1, []));
  let r = M.applyEvent(m, 'image-uploaded', ev(4, { image: img('a', 4) }));
  assert.equal(r.reconcile, true, 'versions 2 and 3 were missed');
  m = M.applyEvent(r.model, 'image-removed', ev(5, { imageId: 'a' })).model;
  r = M.applyEvent(m, 'image-uploaded', ev(4, { image: img('a', 4) }));
  assert.equal(r.model.images.length, 0, 'a repeated upload brought back a removed photo');
  r = M.applyEvent(m, 'image-removed', ev(5, { imageId: 'a' }));
  assert.equal(r.model.images.length, 0);
});

test('events of another session, or before any snapshot, ask for a snapshot and change nothing', () => {
  const m = M.applySnapshot(M.empty(), snap(1, []));
  for (const [model, d] of [[m, { sessionId: 's2', version: 2, image: img('x', 2) }], [M.empty(), ev(2, { image: img('x', 2) })]]) {
    const r = M.applyEvent(model, 'image-uploaded', d);
    assert.equal(r.reconcile, true);
    assert.equal(r.model, model);
  }
});

test('an event keeps the preview URLs the snapshot signed, and asks for them when a preview is new', () => {
  let m = M.applySnapshot(M.empty(), snap(2, [img('a', 2, { status: 'ready', previewKey: 'k1', previewUrl: 'u1' })]));
  let r = M.applyEvent(m, 'image-updated', ev(3, { image: img('a', 3, { status: 'ready', previewKey: 'k1' }) }));
  assert.equal(r.model.images[0].previewUrl, 'u1');
  assert.equal(r.reconcile, false);
  m = M.applySnapshot(M.empty(), snap(2, [img('b', 2)]));
  r = M.applyEvent(m, 'image-processed', ev(3, { image: img('b', 3, { status: 'ready', previewKey: 'k2' }) }));
  assert.equal(r.reconcile, true, 'a ready photo without a signed preview URL');
});

test('the commit phase follows the session and its events, whatever arrives first', () => {
  const two = [img('a', 2, { status: 'ready' }), img('b', 3, { status: 'ready' })];
  let m = M.applySnapshot(M.empty(), snap(3, two));
  assert.equal(M.commitPhase(m).phase, 'idle');
  m = M.applyEvent(m, 'commit-started', ev(4, { commitId: 'c1', done: 0, total: 2 })).model;
  assert.deepEqual([M.commitPhase(m).phase, M.commitPhase(m).total], ['running', 2]);
  const progressed = M.applyEvent(m, 'commit-progress', ev(5, { commitId: 'c1', done: 1, total: 2, imageId: 'a', mediaId: 'm1' })).model;
  assert.equal(M.commitPhase(progressed).done, 1);
  assert.equal(M.image(progressed, 'a').mediaId, 'm1');
  const done = M.applyEvent(progressed, 'session-committed', ev(6, { commitId: 'c1', done: 2, total: 2, success: true })).model;
  assert.equal(M.commitPhase(done).phase, 'done');
  // a late progress event does not take the outcome back
  assert.equal(M.commitPhase(M.applyEvent(done, 'commit-progress', ev(5, { done: 1, total: 2 })).model).phase, 'done');
  // nor does a stale snapshot taken while it ran
  assert.equal(M.commitPhase(M.applySnapshot(done, snap(5, two, { commitStatus: 'in_progress', commit: { done: 1, total: 2 } }))).phase, 'done');
  // a reload sees the same outcome from the session alone
  const reloaded = M.applySnapshot(M.empty(), snap(6, two, { commitStatus: 'committed', commit: { done: 2, total: 2, success: true } }));
  assert.equal(M.commitPhase(reloaded).phase, 'done');
});

test('a failed commit names its photos; a stuck one says why; unknown commit events ask for the session', () => {
  let m = M.applySnapshot(M.empty(), snap(3, [img('a', 2), img('b', 3)], { commitStatus: 'in_progress', commit: { commitId: 'c1', done: 0, total: 2 } }));
  const waiting = { reason: 'alex_unavailable', message: 'ALEX is unavailable (503)', attempt: 3, nextTryAt: '2026-01-01T00:00:10Z', giveUpAt: '2026-01-01T00:10:00Z' };
  const stuck = M.applyEvent(m, 'commit-progress', ev(4, { commitId: 'c1', done: 0, total: 2, attempt: 3, waiting })).model;
  const p = M.commitPhase(stuck);
  assert.deepEqual([p.phase, p.reason, p.attempt, p.nextTryAt], ['stuck', 'ALEX is unavailable (503)', 3, waiting.nextTryAt]);
  // the next attempt runs: no longer waiting; one photo is now in the record
  const trying = M.applyEvent(stuck, 'commit-progress', ev(5, { commitId: 'c1', done: 1, total: 2, attempt: 4, imageId: 'a', state: 'in_record', mediaId: 'm1' })).model;
  assert.equal(M.commitPhase(trying).phase, 'running');
  assert.deepEqual([M.image(trying, 'a').commitState, M.image(trying, 'a').mediaId], ['in_record', 'm1']);
  // a reload while it waits shows the same, from the session alone
  const reloaded = M.applySnapshot(M.empty(), snap(4, [img('a', 2), img('b', 3)], { commitStatus: 'in_progress', commit: { commitId: 'c1', done: 0, total: 2, attempt: 3, waiting } }));
  assert.equal(M.commitPhase(reloaded).reason, 'ALEX is unavailable (503)');
  const r = M.applyEvent(m, 'commit-waiting', ev(4, { reason: 'x' }));
  assert.equal(r.reconcile, true);
  const stopped = M.commitPhase(M.applyEvent(stuck, 'commit-failed', ev(5, { commitId: 'c1', stopped: true, message: 'stopped' })).model);
  assert.deepEqual([stopped.phase, stopped.stopped], ['failed', true]);
  m = M.applyEvent(m, 'commit-failed', ev(4, { commitId: 'c1', message: 'refused', errors: [{ imageId: 'b', error: 'Body site not accepted' }] })).model;
  const f = M.commitPhase(m);
  assert.equal(f.phase, 'failed');
  assert.deepEqual(f.errors, [{ imageId: 'b', error: 'Body site not accepted' }]);
  assert.equal(M.photoNumber(m, f.errors[0].imageId), 2);
  const fromSession = M.applySnapshot(M.empty(), snap(4, [img('a', 2), img('b', 4, { status: 'failed', error: 'Body site not accepted' })],
    { commit: { commitId: 'c1', finishedAt: '2026-01-01T00:00:00Z', success: false, message: 'refused' } }));
  assert.deepEqual(M.commitPhase(fromSession).errors, f.errors);
  // retrying clears the errors
  const again = M.applyEvent(m, 'commit-started', ev(5, { commitId: 'c2', total: 2 })).model;
  assert.equal(M.commitPhase(again).phase, 'running');
  assert.equal(M.image(again, 'b').error, '');
});

test('pending photos on the phones are summed and follow their own versions', () => {
  let m = M.applySnapshot(M.empty(), snap(1, [], { pending: { aaa: { count: 2 } } }));
  assert.equal(M.pendingPhotos(m), 2);
  m = M.applyEvent(m, 'phone-pending', ev(2, { pending: { aaa: { count: 2 }, bbb: { count: 1 } } })).model;
  assert.equal(M.pendingPhotos(m), 3);
  m = M.applyEvent(m, 'phone-pending', ev(3, {})).model;
  assert.equal(M.pendingPhotos(m), 0, 'no pending field: no phone holds anything');
  m = M.applyEvent(m, 'phone-pending', ev(2, { pending: { aaa: { count: 2 } } })).model;
  assert.equal(M.pendingPhotos(m), 0, 'an older count came back');
});

test('another patient open: the session is not theirs until committed', () => {
  const m = M.applySnapshot(M.empty(), snap(1, [img('a', 1)]));
  assert.equal(M.otherPatient(m, 'p1'), false);
  assert.equal(M.otherPatient(m, 'p2'), true);
  assert.equal(M.otherPatient(M.applySnapshot(M.empty(), snap(2, [], { commitStatus: 'committed' })), 'p2'), false);
  assert.equal(M.otherPatient(M.empty(), 'p2'), false);
});

test('coding closes only when the photo is gone or the session is locked', () => {
  let m = M.applySnapshot(M.empty(), snap(2, [img('a', 2), img('b', 2)]));
  assert.equal(M.codingClosed(m, 'a'), '');
  // a new status, a coding from the desktop, a fresh snapshot: still open
  m = M.applyEvent(m, 'image-processed', ev(3, { image: img('a', 3, { status: 'ready' }) })).model;
  m = M.applyEvent(m, 'image-updated', ev(4, { image: img('a', 4, { status: 'ready', metadata: { laterality: 'left' } }) })).model;
  assert.equal(M.codingClosed(m, 'a'), '');
  assert.equal(M.codingClosed(M.applySnapshot(m, snap(4, m.images)), 'a'), '');
  const cases = [
    ['deleted', M.applyEvent(m, 'image-removed', ev(5, { imageId: 'a' })).model],
    ['committing', M.applyEvent(m, 'commit-started', ev(5, { commitId: 'c1', imageCount: 2 })).model],
    ['committed', M.applySnapshot(m, snap(5, [img('a', 5, { status: 'committed' }), img('b', 5)]))],
    ['committed', M.applyEvent(m, 'session-committed', ev(5, { commitId: 'c1' })).model],
    ['held', M.applySnapshot(m, snap(5, m.images, { held: true }))],
    ['', M.applyEvent(m, 'commit-failed', ev(5, { commitId: 'c1', errors: [] })).model],
  ];
  for (const [want, next] of cases) assert.equal(M.codingClosed(next, 'a'), want, want || 'a failed commit reopens coding');
  assert.equal(M.codingClosed(cases[0][1], 'b'), '', 'another photo deleted leaves this one open');
});

test('words', () => {
  assert.equal(plural(1, 'photo'), '1 photo');
  assert.equal(plural(0, 'photo'), '0 photos');
  assert.equal(plural(2, 'photo'), '2 photos');
  assert.deepEqual(limitText(50, FALLBACK.limits), { kind: 'error', text: 'Maximum 50 photos reached. Please commit before adding more.' });
  assert.equal(limitText(20, FALLBACK.limits).text, 'You have 20 photos. Consider committing this batch.');
  assert.equal(limitText(19, FALLBACK.limits).kind, '');
  const vocab = { views: [{ code: 'anterior', display: 'Anterior' }], lateralities: [{ code: 'bilateral', display: 'Both sides' }] };
  assert.equal(coding({ bodySiteDisplay: 'Forearm structure', laterality: 'bilateral', viewType: 'anterior' }, vocab), 'Forearm · Both sides · Anterior');
});

// Discarding a session never claims its photos never reached a record:
// ALEX has no undo, so photos in the record stay there and photos that may
// be there are named as such.
test('discard: says which photos stay in the record', () => {
  const im = (commitState) => ({ id: commitState || 'x', commitState });
  assert.deepEqual(discardText([im(), im('pending')], 'A'),
    ['2 photos of patient A have not reached the record and will be deleted.']);
  const mixed = discardText([im(), im('in_record'), im('unknown'), im('refused')], 'A');
  assert.equal(mixed[0], '2 photos of patient A have not reached the record and will be deleted.');
  assert.match(mixed[1], /^1 photo is in patient A's record already and stays there/);
  assert.match(mixed[2], /^1 photo may be in patient A's record/);
  assert.ok(!mixed.join(' ').includes('never reaching any record'));
  assert.deepEqual(discardText([im('in_record')], 'A').length, 1);
});

// A seeded random schedule: the session's true history is a list of events
// (uploads, edits, removals, commit steps); delivery repeats, reorders and
// drops them. After every delivery the model shows no photo version older
// than one it showed, and no photo the history never had; a snapshot then
// makes it equal to the session.
test('property: duplicates, reordering and gaps never show older or invented state', () => {
  const seed = Number(process.env.MODEL_SEED || Date.now() % 1e9);
  let x = seed;
  const rand = () => { x = (x * 1103515245 + 12345) % 2147483648; return x / 2147483648; };
  for (let round = 0; round < 200; round++) {
    // build a history
    const history = [];
    const live = new Map();
    let v = 1;
    for (let i = 0; i < 30; i++) {
      v++;
      const r = rand();
      const ids = [...live.keys()];
      if (r < 0.4 || ids.length === 0) {
        const id = `i${i}`;
        live.set(id, img(id, v));
        history.push(['image-uploaded', ev(v, { image: img(id, v) })]);
      } else if (r < 0.8) {
        const id = ids[Math.floor(rand() * ids.length)];
        const next = img(id, v, { metadata: { bodySite: String(v) } });
        live.set(id, next);
        history.push(['image-updated', ev(v, { image: next })]);
      } else {
        const id = ids[Math.floor(rand() * ids.length)];
        live.delete(id);
        history.push(['image-removed', ev(v, { imageId: id })]);
      }
    }
    // deliver: each event 0..2 times, shuffled locally
    const delivery = [];
    for (const e of history) {
      const times = rand() < 0.15 ? 0 : rand() < 0.2 ? 2 : 1;
      for (let k = 0; k < times; k++) delivery.push(e);
    }
    for (let i = delivery.length - 1; i > 0; i--) {
      if (rand() < 0.3) {
        const j = Math.max(0, i - 1 - Math.floor(rand() * 3));
        [delivery[i], delivery[j]] = [delivery[j], delivery[i]];
      }
    }
    let m = M.applySnapshot(M.empty(), snap(1, []));
    const shown = new Map(); // id -> highest version shown
    const everUploaded = new Set(history.filter(([n]) => n === 'image-uploaded').map(([, d]) => d.image.id));
    for (const [name, d] of delivery) {
      m = M.applyEvent(m, name, d).model;
      for (const im of m.images) {
        assert.ok(everUploaded.has(im.id), `seed ${seed} round ${round}: invented photo ${im.id}`);
        assert.ok(im._v >= (shown.get(im.id) || 0), `seed ${seed} round ${round}: photo ${im.id} went back to v${im._v}`);
        shown.set(im.id, im._v);
      }
      assert.equal(new Set(m.images.map((i) => i.id)).size, m.images.length, `seed ${seed}: a photo shown twice`);
    }
    m = M.applySnapshot(m, snap(v, [...live.values()]));
    assert.deepEqual(m.images.map((i) => i.id).sort(), [...live.keys()].sort(), `seed ${seed} round ${round}: snapshot not applied whole`);
  }
});

test('consent: from a snapshot or its event, once, and what is missing', () => {
  const vocab = { ...FALLBACK, consent: { methods: [{ code: 'verbal', display: 'Verbal consent' }], reasons: [], purposes: [{ code: 'record', display: 'Clinical record' }, { code: 'referral', display: 'Referral' }], required: true } };
  let m = M.applySnapshot(M.empty(), snap(1, [img('a', 1)]));
  assert.equal(M.consentMissing(m, vocab), true);
  assert.match(consentText(m.consent, vocab), /not recorded/);
  const c = { method: 'verbal', purposes: ['record', 'referral'], via: 'phone', recordedBy: 'phone 1', recordedAt: '2026-12-01T10:00:00Z' };
  m = M.applyEvent(m, 'consent-recorded', ev(2, { consent: c })).model;
  assert.equal(M.consentMissing(m, vocab), false);
  assert.match(consentText(m.consent, vocab), /^Consent: Verbal consent; for clinical record, referral\. Recorded on the phone/);
  // an older event does not undo it; a snapshot without consent of a later version does
  assert.equal(M.applyEvent(m, 'consent-recorded', ev(2, { consent: { ...c, method: 'written' } })).model.consent.method, 'verbal');
  assert.equal(M.applySnapshot(m, snap(3, [img('a', 1)])).consent, null);
  assert.equal(M.consentMissing(M.applySnapshot(M.empty(), snap(1, [])), { ...vocab, consent: { ...vocab.consent, required: false } }), false);
});
