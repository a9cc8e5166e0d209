// consent.js: the patient's consent for the session, on both screens. The
// GP records how consent was given (verbal, written, or not obtainable and
// why) and what the photos may be used for (the clinical record always;
// referral, teaching); it can change until the commit, and every committed
// photo carries it as a note in the record.

import { el } from './api.js';
import { consentText } from './words.js';

/**
 * ConsentPanel fills root with the consent line and its form. save(body)
 * sends PUT consent and resolves when recorded (or throws an ApiError).
 */
export class ConsentPanel {
  constructor(root, save) {
    this.root = root;
    this.save = save;
    this.state = el('p', { class: 'consent-state', 'data-test': 'consent-state', role: 'status' });
    this.form = el('form', { class: 'consent-form' });
    this.summary = el('summary', { 'data-test': 'consent-toggle' });
    this.details = el('details', { class: 'consent-edit', 'data-test': 'consent-edit' }, this.summary, this.form);
    this.note = el('p', { class: 'note', 'aria-live': 'polite', 'data-test': 'consent-note' });
    root.replaceChildren(this.state, this.details, this.note);
    this.built = '';
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
    this.form.addEventListener('change', () => this.toggleReason());
  }

  build(vocab) {
    const v = vocab.consent;
    const key = JSON.stringify(v);
    if (!v || this.built === key) return;
    this.built = key;
    const radio = (t) => el('label', { class: 'choice' },
      el('input', { type: 'radio', name: 'method', value: t.code, required: true, 'data-test': `consent-method-${t.code}` }), ` ${t.display}`);
    const reason = el('select', { name: 'reason', 'data-test': 'consent-reason', 'aria-label': 'Why consent could not be obtained' },
      el('option', { value: '' }, 'Why not obtainable…'), ...v.reasons.map((t) => el('option', { value: t.code }, t.display)));
    const purpose = (t) => el('label', { class: 'choice' },
      el('input', { type: 'checkbox', name: 'purpose', value: t.code, checked: t.code === 'record', disabled: t.code === 'record', 'data-test': `consent-purpose-${t.code}` }),
      ` ${t.display}${t.code === 'record' ? ' (always)' : ''}`);
    this.form.replaceChildren(
      el('fieldset', {}, el('legend', {}, 'How was consent given?'), ...v.methods.map(radio), el('span', { class: 'reason' }, reason)),
      el('fieldset', {}, el('legend', {}, 'The photos may be used for'), ...v.purposes.map(purpose)),
      el('button', { type: 'submit', class: 'btn small primary', 'data-test': 'consent-save' }, 'Save consent'));
    this.toggleReason();
  }

  toggleReason() {
    const f = this.form;
    const r = f.querySelector('.reason');
    if (!r) return;
    const notObtainable = (f.querySelector('input[name=method]:checked') || {}).value === 'not_obtainable';
    r.hidden = !notObtainable;
    f.reason.required = notObtainable;
  }

  /** update shows consent (or its absence) and whether it can still change. */
  update(consent, vocab, editable) {
    this.build(vocab);
    const missing = !consent;
    this.root.classList.toggle('missing', missing);
    this.root.dataset.state = missing ? 'missing' : 'recorded';
    this.state.textContent = consentText(consent, vocab);
    this.summary.textContent = missing ? 'Record consent' : 'Change consent';
    this.details.hidden = !editable;
    if (!editable) this.details.open = false;
    // open by itself while consent is missing; once it is recorded (here or
    // on the other screen) it folds away, unless it is being changed here
    if (missing && editable && !this.touched) this.details.open = true;
    if (!missing && this.wasMissing && !this.details.contains(document.activeElement)) this.details.open = false;
    this.wasMissing = missing;
    if (!this.details.open && consent) this.fill(consent);
  }

  fill(c) {
    for (const i of this.form.querySelectorAll('input[name=method]')) i.checked = i.value === c.method;
    if (this.form.reason) this.form.reason.value = c.reason || '';
    for (const i of this.form.querySelectorAll('input[name=purpose]')) i.checked = i.value === 'record' || (c.purposes || []).includes(i.value);
    this.toggleReason();
  }

  async submit() {
    const f = this.form;
    const method = (f.querySelector('input[name=method]:checked') || {}).value;
    if (!method) return;
    const body = { method, purposes: [...f.querySelectorAll('input[name=purpose]:checked')].map((i) => i.value) };
    if (method === 'not_obtainable') body.reason = f.reason.value;
    this.note.textContent = 'Saving…';
    this.note.classList.remove('error');
    try {
      await this.save(body);
      this.note.textContent = 'Consent saved';
      this.touched = true;
      this.details.open = false;
    } catch (e) {
      this.note.textContent = `Not saved: ${e.message}`;
      this.note.classList.add('error');
    }
  }
}
