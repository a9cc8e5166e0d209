// words.js: the words both screens use, in one place, and the vocabulary
// (views, sides, limits) as the API defines it (GET /api/vocabulary). Pure:
// no DOM, no network.

/** plural: plural(1, 'photo') -> "1 photo", plural(3, 'photo') -> "3 photos". */
export function plural(n, word, many = `${word}s`) { return `${n} ${n === 1 ? word : many}`; }

/** isAre: "is" for one, "are" for more. */
export const isAre = (n) => (n === 1 ? 'is' : 'are');

/**
 * FALLBACK is the vocabulary a page uses until GET /api/vocabulary answers:
 * no views or sides (the pickers stay empty rather than offer a word the API
 * might refuse), the seeds' limits.
 */
export const FALLBACK = Object.freeze({
  views: [], lateralities: [],
  limits: { maxImages: 50, warnImages: 20, maxMessage: 'Maximum 50 photos reached. Please commit before adding more.', maxNotes: 2000 },
  consent: { methods: [], reasons: [], purposes: [], required: true },
});

/** label is the display of code among terms ({code, display}), or the code itself. */
export function label(terms, code) {
  if (!code) return '';
  const t = (terms || []).find((x) => x.code === code);
  return t ? t.display : code;
}

/** coding sums up a photo's coding for a line of text: "Forearm · Left · Anterior". */
export function coding(meta, vocab) {
  const m = meta || {};
  const site = (m.bodySiteDisplay || m.bodySite || '').replace(/ structure$/, '');
  return [site, label(vocab.lateralities, m.laterality), label(vocab.views, m.viewType)].filter(Boolean).join(' · ');
}

/** limitText is the banner at n photos: the cap message, a nudge, or ''. */
export function limitText(n, limits) {
  if (n >= limits.maxImages) return { kind: 'error', text: limits.maxMessage };
  if (n >= limits.warnImages) return { kind: 'warn', text: `You have ${plural(n, 'photo')}. Consider committing this batch.` };
  return { kind: '', text: '' };
}

/**
 * RECORD_RULE is what a commit can promise, ALEX having no undo: said
 * before every commit and whenever a commit stops part-way.
 */
export const RECORD_RULE = 'A photo that reaches the patient record stays there: ALEX has no undo. '
  + 'If the commit stops part-way, those photos stay marked as in the record and the next commit sends only the rest, each photo once.';

/**
 * discardText is what discarding a session's photos does to each, ALEX
 * having no undo: photos in the record stay there, photos whose write was
 * never answered may be there, and only the rest never reach it.
 */
export function discardText(images, patientId) {
  const inRecord = images.filter((im) => im.commitState === 'in_record').length;
  const maybe = images.filter((im) => ['sending', 'unknown', 'needs_checking'].includes(im.commitState)).length;
  const rest = images.length - inRecord - maybe;
  const out = [];
  if (rest) out.push(`${plural(rest, 'photo')} of patient ${patientId} ${rest === 1 ? 'has' : 'have'} not reached the record and will be deleted.`);
  if (inRecord) {
    out.push(`${plural(inRecord, 'photo')} ${isAre(inRecord)} in patient ${patientId}'s record already and ${inRecord === 1 ? 'stays' : 'stay'} there: ALEX has no undo. Only the copies here are deleted.`);
  }
  if (maybe) {
    out.push(`${plural(maybe, 'photo')} may be in patient ${patientId}'s record (ALEX did not say); once discarded, this screen cannot tell. Check the record.`);
  }
  return out;
}

/** stuckText says why a commit is waiting and when it tries again. */
export function stuckText(c) {
  const at = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '');
  const parts = [c.reason || 'Waiting for the practice system'];
  if (c.attempt) parts.push(`attempt ${c.attempt}`);
  if (c.nextTryAt) parts.push(`${c.reason && /slow/.test(c.reason) ? 'waiting until' : 'next try'} ${at(c.nextTryAt)}`);
  let s = parts.join(', ');
  if (c.giveUpAt) s += `. Gives up at ${at(c.giveUpAt)}, keeping every photo`;
  return `${s}.`;
}

/** committedText is the outcome line of a finished commit. */
export function committedText(n) { return `${plural(n, 'photo')} committed to the record`; }

/** ago says how long ago an ISO time was, roughly, from now (ms). */
export function ago(iso, now) {
  const t = Date.parse(iso);
  if (!t) return '';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/**
 * consentText is the one line both screens show about the session's
 * consent: what was recorded, by whom and when, or what is missing.
 */
export function consentText(c, vocab) {
  if (!c) return 'Consent not recorded yet: record how the patient consented before committing.';
  const v = (vocab && vocab.consent) || { methods: [], reasons: [], purposes: [] };
  let how = label(v.methods, c.method);
  if (c.method === 'not_obtainable' && c.reason) how += ` (${label(v.reasons, c.reason).toLowerCase()})`;
  const uses = (c.purposes || []).map((p) => label(v.purposes, p).toLowerCase()).join(', ');
  const at = c.recordedAt ? new Date(c.recordedAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
  const who = c.via === 'phone' ? 'on the phone' : 'on the desktop';
  return `Consent: ${how}; for ${uses}. Recorded ${who}${at ? ` at ${at}` : ''}.`;
}

/** CONSENT_MISSING is what the commit line says while consent is missing. */
export const CONSENT_MISSING = 'Record the patient\'s consent above to commit.';
