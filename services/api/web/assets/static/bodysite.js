// bodysite.js: the body-site picker, an ARIA combobox over the API's ranked
// search (GET /api/body-sites?q=): type any word or synonym ("forearm",
// "groin", "big toe") or a SNOMED code, pick with the mouse or the arrow
// keys and Enter. Leaving the field with text that names exactly one site
// (its code, its name, or the only match) picks that site; anything else is
// marked and nothing is saved.
//
// What the GP typed is theirs until it is picked or given up: the page
// re-renders on every live event (a photo arriving, a token renewal), and
// set() must not put the stored site back over text still being looked up
// after the field was left, or over text that named no site.

import { el } from './api.js';

let seq = 0;

/**
 * bodySitePicker builds the field. onPick(code, display) is called with the
 * site chosen ('' and '' to clear). Returns {root, input, set(code, display),
 * disable(on)}.
 */
export function bodySitePicker(api, { label, onPick, onInvalid }) {
  const id = `bs${++seq}`;
  const input = el('input', {
    id, class: 'site', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'Type a body site or word',
    role: 'combobox', 'aria-expanded': 'false', 'aria-controls': `${id}-list`, 'aria-autocomplete': 'list',
    'aria-describedby': `${id}-code`, 'data-test': 'body-site',
  });
  const list = el('ul', { id: `${id}-list`, class: 'site-list', role: 'listbox', 'aria-label': `${label} suggestions`, hidden: true });
  const code = el('p', { id: `${id}-code`, class: 'site-code', 'data-test': 'body-site-code' });
  const root = el('div', { class: 'site-picker' }, el('label', { for: id }, label), input, list, code);
  let current = { code: '', display: '' };
  let stored = { code: '', display: '' }; // the site the page last said is stored
  let edited = false; // the field holds typed text that is not a picked site yet
  let results = [];
  let active = -1;
  let timer;
  let asked = 0;

  const show = (sites) => {
    results = sites.slice(0, 8);
    active = results.length ? 0 : -1;
    list.replaceChildren(...results.map((s, i) => el('li', {
      id: `${id}-o${i}`, role: 'option', class: 'site-opt', 'aria-selected': String(i === active), 'data-code': s.code,
      onmousedown: (e) => { e.preventDefault(); choose(s); },
    }, s.display, el('span', { class: 'muted' }, ` ${s.code}`))));
    const open = results.length > 0 && document.activeElement === input;
    list.hidden = !open;
    input.setAttribute('aria-expanded', String(open));
    mark();
  };
  const mark = () => {
    [...list.children].forEach((li, i) => li.setAttribute('aria-selected', String(i === active)));
    if (active >= 0) input.setAttribute('aria-activedescendant', `${id}-o${active}`);
    else input.removeAttribute('aria-activedescendant');
  };
  const close = () => {
    list.hidden = true;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
  };
  const search = async (q) => {
    const n = ++asked;
    try {
      const sites = await api.bodySites(q);
      if (n === asked) show(Array.isArray(sites) ? sites : []);
      return sites;
    } catch {
      return [];
    }
  };
  const text = (s) => s.display || s.code;
  const choose = (s) => {
    current = { code: s.code, display: s.display };
    input.value = text(s);
    code.textContent = s.code ? `SNOMED CT ${s.code}` : '';
    input.removeAttribute('aria-invalid');
    edited = false;
    close();
    onPick(s.code, s.display);
  };
  // resolve turns what was typed into one site, or null.
  const resolve = async (typed) => {
    const t = typed.trim();
    if (!t) return { code: '', display: '' };
    if (current.code && t === text(current)) return current;
    const inParens = /\(([0-9]{6,18})\)\s*$/.exec(t);
    const q = inParens ? inParens[1] : t;
    const sites = await search(q);
    if (!Array.isArray(sites) || sites.length === 0) return null;
    const lower = q.toLowerCase();
    const exact = sites.find((s) => s.code === q || s.display.toLowerCase() === lower
      || (s.synonyms || []).includes(lower));
    return exact || (sites.length === 1 ? sites[0] : null);
  };

  input.addEventListener('input', () => {
    edited = true;
    clearTimeout(timer);
    timer = setTimeout(() => search(input.value.trim()), 120);
  });
  input.addEventListener('focus', () => { if (!input.disabled) search(input.value === text(current) ? '' : input.value.trim()); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      if (list.hidden) { search(input.value.trim()); return; }
      const n = results.length;
      if (n) active = (active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      mark();
    } else if (e.key === 'Enter' && !list.hidden && active >= 0) {
      e.preventDefault();
      choose(results[active]);
    } else if (e.key === 'Escape' && !list.hidden) {
      e.preventDefault();
      close();
    }
  });
  input.addEventListener('blur', async () => {
    close();
    const typed = input.value;
    if (current.code && typed === text(current)) {
      edited = false;
      return;
    }
    const s = await resolve(typed);
    if (input.value !== typed) return; // typed on meanwhile, or locked and reset
    if (s) {
      if (s.code !== current.code) choose(s);
      else {
        input.value = text(s);
        edited = false;
      }
      return;
    }
    input.setAttribute('aria-invalid', 'true');
    onInvalid('Pick a body site from the list');
  });

  return {
    root,
    input,
    /**
     * set shows the stored site, unless the GP is typing in the field or
     * left it with text not yet picked (being looked up, or naming no site).
     */
    set(c, display) {
      stored = { code: c || '', display: display || '' };
      if (document.activeElement === input || edited) return;
      current = stored;
      input.value = c ? text(current) : '';
      input.title = c ? `${text(current)} (SNOMED CT ${c})` : '';
      code.textContent = c ? `SNOMED CT ${c}` : '';
      input.removeAttribute('aria-invalid');
    },
    /** disable locks the field; a locked field shows the stored site, whatever was typed. */
    disable(on) {
      input.disabled = on;
      if (!on) return;
      close();
      if (edited) {
        edited = false;
        this.set(stored.code, stored.display);
      }
    },
  };
}
