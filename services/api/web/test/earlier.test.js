// Unit tests of the earlier photos' filter (node --test test/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { filterBySite, when } from '../assets/static/earlier.js';

const photos = [
  { id: 'may', bodySite: { code: '14975008' } },
  { id: 'hand', bodySite: { code: '85562004' } },
  { id: 'march', bodySite: { code: '14975008' } },
  { id: 'uncoded' },
];

test('filterBySite keeps the body site of the photo in focus, newest first, or all', () => {
  const ids = (list) => list.map((p) => p.id);
  assert.deepEqual(ids(filterBySite(photos, '14975008', false)), ['may', 'march']);
  assert.deepEqual(ids(filterBySite(photos, '14975008', true)), ['may', 'hand', 'march', 'uncoded']);
  assert.deepEqual(ids(filterBySite(photos, '', false)), ['may', 'hand', 'march', 'uncoded']);
  assert.deepEqual(ids(filterBySite(photos, '40983000', false)), []);
});

test('when reads a date, or says it is unknown', () => {
  assert.equal(when(''), 'Date unknown');
  assert.match(when('2026-05-09T09:30:00Z'), /2026/);
});
