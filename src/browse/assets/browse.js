// msae feature browser (docs/browser.md). Static: every datum comes from data/*.js files that msae browse
// wrote, loaded with <script> tags (browsers refuse fetch() of local files). No network, no libraries.
'use strict';

window.MSAE = {
  index: {},
  chunks: {},
  waiting: {},
  chunk(s, c, list) {
    MSAE.chunks[s + ':' + c] = list;
    const w = MSAE.waiting[s + ':' + c];
    if (w) w(list);
  },
  start() { start().catch(err => fail(String(err && err.stack || err))); },
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function fail(msg) {
  const m = document.getElementById('main');
  m.replaceChildren(el('p', {class: 'warn', id: 'error', text: 'The browser could not load its data: ' + msg}));
}
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = src;
    s.onload = () => resolve();
    s.onerror = () => reject(new Error('cannot load ' + src));
    document.head.append(s);
  });
}
function param(name, dflt) {
  const v = new URLSearchParams(location.search).get(name);
  return v === null ? dflt : v;
}
function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return '';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}
function pct(x) { return (100 * x).toFixed(x < 0.01 ? 2 : 1) + '%'; }
function tokText(id) {
  const t = MSAE.vocab[id];
  return t === undefined ? '<' + id + '>' : t;
}
// Token text made visible: newlines and tabs as symbols.
function showText(t) { return t.replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5').replace(/\r/g, '\u240d'); }
function groupOf(sae, j) {
  const b = sae.bounds;
  let g = 0;
  while (g < b.length && j >= b[g]) g++;
  return g;
}
// The parent rule of the pages (?rule=excess, else cofire; docs/browser.md) and its index columns.
function rule() { return param('rule', 'cofire') === 'excess' ? 'excess' : 'cofire'; }
function parents(idx) {
  return rule() === 'excess' ? {id: idx.xparent, p: idx.xparent_p, cos: idx.xparent_cos}
                             : {id: idx.parent, p: idx.parent_p, cos: idx.parent_cos};
}
function ruleSwitch() {
  const link = (r, label) => {
    const q = new URLSearchParams(location.search);
    q.set('rule', r);
    return r === rule() ? el('b', {}, label) : el('a', {href: '?' + q.toString(), class: 'rule-' + r}, label);
  };
  return el('p', {class: 'small', id: 'rule'}, 'Parent rule: ', link('cofire', 'fires with it most often'), ' | ',
            link('excess', 'most above its own density'), ' (docs/browser.md)');
}
// P(parent | child) over the parent's own firing density: 1 when the child tells nothing about the parent.
function lift(idx, c) {
  const P = parents(idx), p = P.id[c];
  return p >= 0 && idx.fired[p] > 0 ? P.p[c] / (idx.fired[p] / MSAE.site.rows) : 0;
}
function latentLink(s, j, label) {
  const r = rule() === 'excess' ? '&rule=excess' : '';
  return el('a', {href: `latent.html?sae=${s}&id=${j}${r}`}, label === undefined ? '#' + j : label);
}
async function loadIndex(s) {
  if (!MSAE.index[s]) await loadScript(`data/s${s}/index.js`);
  return MSAE.index[s];
}
function loadChunk(s, c) {
  const key = s + ':' + c;
  if (MSAE.chunks[key]) return Promise.resolve(MSAE.chunks[key]);
  return new Promise((resolve, reject) => {
    MSAE.waiting[key] = resolve;
    const name = `data/s${s}/c${String(c).padStart(5, '0')}.js`;
    loadScript(name).catch(reject);
  });
}
function saeChoice(current, onchange) {
  const saes = MSAE.site.saes;
  if (saes.length < 2) return null;
  return el('div', {class: 'tabs'}, saes.map((sae, s) =>
    el('button', {class: s === current ? 'on' : '', onclick: () => onchange(s)}, sae.name + ' (' + sae.arch + ')')));
}
// A context: tokens shaded by the latent's activation (relative to scale), the value on hover.
function contextLine(ex, scale) {
  const [row, value, at, toks, vals] = ex;
  const text = el('span', {class: 'text'});
  toks.forEach((t, q) => {
    const v = vals[q];
    const a = scale > 0 ? Math.min(1, v / scale) : 0;
    const span = el('span', {class: 'tok' + (q === at ? ' peak' : ''), title: `${tokText(t)} | activation ${fmt(v, 4)} | row ${row - at + q}`},
                    showText(tokText(t)));
    if (v > 0) span.style.background = `rgba(255, 140, 30, ${(0.15 + 0.85 * a).toFixed(3)})`;
    text.append(span);
  });
  return el('div', {class: 'ctx'}, el('span', {class: 'val', title: 'activation at the outlined token'}, fmt(value, 4)), text);
}
function chips(tokens) { return tokens.map(([t, n]) => el('span', {class: 'chip', title: n + ' firings'}, showText(tokText(t)))); }
function summaryText(ctx) {
  if (!ctx || !ctx.length) return '';
  const [ids, at] = ctx;
  return ids.map((t, q) => q === at ? '[' + showText(tokText(t)) + ']' : showText(tokText(t))).join('');
}

// SVG bar chart: values (array), labels under some bars.
function barChart(values, {width = 420, height = 120, cls = 'bar', labels = [], title = ''} = {}) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height + 18);
  const max = Math.max(1e-12, ...values);
  const w = width / Math.max(1, values.length);
  values.forEach((v, i) => {
    const r = document.createElementNS(ns, 'rect');
    const h = (v / max) * (height - 4);
    r.setAttribute('x', i * w + 0.5);
    r.setAttribute('y', height - h);
    r.setAttribute('width', Math.max(1, w - 1));
    r.setAttribute('height', h);
    r.setAttribute('class', cls);
    const t = document.createElementNS(ns, 'title');
    t.textContent = (labels[i] !== undefined ? labels[i] + ': ' : '') + fmt(v, 4);
    r.append(t);
    svg.append(r);
  });
  const step = Math.max(1, Math.ceil(values.length / 8));
  labels.forEach((l, i) => {
    if (i % step) return;
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', i * w);
    t.setAttribute('y', height + 13);
    t.textContent = l;
    svg.append(t);
  });
  if (title) svg.append(Object.assign(document.createElementNS(ns, 'title'), {textContent: title}));
  return svg;
}

// ---------------------------------------------------------------- pages
async function start() {
  if (!window.MSAE.site || !window.MSAE.vocab) throw new Error('data/site.js or data/vocab.js is missing');
  const page = document.body.dataset.page;
  if (page === 'index') await indexPage();
  else if (page === 'latent') await latentPage();
  else if (page === 'tree') await treePage();
  document.body.dataset.ready = '1';
}

function aboutLine() {
  const a = MSAE.site.about || {};
  const parts = [`${MSAE.site.rows.toLocaleString()} rows of ${a.acts || 'the harvest'}`];
  if (a.hook_name) parts.push('hook ' + a.hook_name);
  if (a.model) parts.push('model ' + a.model);
  if (MSAE.site.cofire_rows < MSAE.site.rows) parts.push(`co-firing and parents from the first ${MSAE.site.cofire_rows.toLocaleString()} rows`);
  return el('p', {class: 'muted'}, parts.join(' · '));
}

async function indexPage() {
  const main = document.getElementById('main');
  const saes = MSAE.site.saes;
  main.replaceChildren(el('h1', {}, 'Latents'), aboutLine());
  // Summary of every SAE, side by side.
  const cards = el('div', {class: 'cards', id: 'summary'});
  for (const [s, sae] of saes.entries()) {
    const idx = await loadIndex(s);
    const alive = idx.fired.filter(f => f > 0).length;
    const rows = [
      ['arch', sae.arch + (sae.format !== 'msae' ? ' (' + sae.format + ')' : '')],
      ['latents', sae.d_sae.toLocaleString() + ' in ' + sae.bounds.length + ' group' + (sae.bounds.length > 1 ? 's' : '')],
      ['k', sae.k], ['L0 (measured)', fmt(sae.l0, 4)],
      ['dead (never fired here)', `${sae.dead} (${pct(sae.dead / sae.d_sae)})`],
    ];
    if (sae.final_eval) rows.push(['FVU (training hold-out)', fmt(sae.final_eval.fvu, 4)]);
    const table = el('table', {}, rows.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {class: 'num'}, String(v)))));
    const groups = el('table', {class: 'small'},
      el('tr', {}, el('th', {}, 'group'), el('th', {}, 'latents'), el('th', {class: 'num'}, 'share of L0'), el('th', {class: 'num'}, 'alive')),
      sae.bounds.map((b, g) => {
        const lo = g ? sae.bounds[g - 1] : 0;
        const al = idx.fired.slice(lo, b).filter(f => f > 0).length;
        return el('tr', {}, el('td', {}, g + 1), el('td', {}, `[${lo}, ${b})`), el('td', {class: 'num'}, pct(sae.group_share[g])),
                  el('td', {class: 'num'}, `${al}/${b - lo}`));
      }));
    // Firing density of the latents, per decade.
    const bins = new Array(8).fill(0), labels = [];
    for (let i = 0; i < 8; i++) labels.push('1e' + (i - 7));
    for (const f of idx.fired) if (f > 0) bins[Math.min(7, Math.max(0, Math.floor(Math.log10(f / MSAE.site.rows)) + 7))]++;
    cards.append(el('div', {class: 'card'}, el('h2', {}, sae.name), el('div', {class: 'muted small'}, sae.path), table,
                    el('h3', {}, 'Groups'), groups, el('h3', {}, `Firing density (alive latents: ${alive})`),
                    barChart(bins, {labels, width: 300, height: 70})));
  }
  main.append(cards);
  let current = Number(param('sae', 0)) || 0;
  const holder = el('div', {id: 'latents'});
  main.append(el('h2', {}, 'All latents'), holder);
  const render = s => { current = s; latentTable(holder, s, render); };
  render(current);
}

function latentTable(holder, s, rerender) {
  const sae = MSAE.site.saes[s], idx = MSAE.index[s], rows = MSAE.site.rows;
  const D = sae.d_sae, P = parents(idx);
  const others = MSAE.site.saes.map((o, t) => t).filter(t => t !== s);
  const state = {sort: 'density', desc: true, group: 'all', text: '', hideDead: true, shown: 100};
  const cols = [
    ['latent', 'id'], ['group', 'group'], ['density', 'density'], ['mean act', 'mean'], ['max act', 'max'],
    ['fires on', null], ['top context', null], ['parent (P, cos)', 'parent_p'],
  ];
  if (others.length) cols.push([`nearest in ${MSAE.site.saes[others[0]].name} (cos)`, 'other']);
  const body = el('tbody');
  const count = el('span', {class: 'muted'});
  const more = el('button', {onclick: () => { state.shown += 200; draw(); }}, 'show more');
  const key = {
    id: j => j, group: j => groupOf(sae, j), density: j => idx.fired[j], mean: j => idx.mean[j], max: j => idx.max[j],
    parent_p: j => P.id[j] >= 0 ? P.p[j] : -1,
    other: j => { const o = idx.other[j][others[0]]; return o ? o[1] : -2; },
  };
  const search = j => (idx.tokens[j].map(([t]) => tokText(t)).join('\u0001') + '\u0001' + summaryText(idx.context[j])).toLowerCase();
  function draw() {
    let list = [];
    const q = state.text.toLowerCase();
    for (let j = 0; j < D; j++) {
      if (state.hideDead && idx.fired[j] === 0) continue;
      if (state.group !== 'all' && groupOf(sae, j) !== Number(state.group)) continue;
      if (q && !search(j).includes(q)) continue;
      list.push(j);
    }
    const f = key[state.sort];
    list.sort((a, b) => (f(a) - f(b)) * (state.desc ? -1 : 1) || a - b);
    count.textContent = `${list.length.toLocaleString()} latents match` + (list.length > state.shown ? `, the first ${state.shown} shown` : '');
    more.style.display = list.length > state.shown ? '' : 'none';
    body.replaceChildren(...list.slice(0, state.shown).map(j => {
      const p = P.id[j];
      const o = others.length ? idx.other[j][others[0]] : null;
      return el('tr', {},
        el('td', {}, latentLink(s, j)), el('td', {class: 'num'}, groupOf(sae, j) + 1),
        el('td', {class: 'num'}, fmt(idx.fired[j] / rows)), el('td', {class: 'num'}, fmt(idx.mean[j])),
        el('td', {class: 'num'}, fmt(idx.max[j])), el('td', {}, chips(idx.tokens[j].slice(0, 3))),
        el('td', {class: 'tok'}, summaryText(idx.context[j])),
        el('td', {}, p >= 0 ? [latentLink(s, p), ` (${fmt(P.p[j], 2)}, ${fmt(P.cos[j], 2)})`] : ''),
        others.length ? el('td', {}, o ? [latentLink(others[0], o[0], `${MSAE.site.saes[others[0]].name} #${o[0]}`), ` (${fmt(o[1], 2)})`] : '') : null);
    }));
  }
  const head = el('tr', {}, cols.map(([label, k]) => {
    const th = el('th', {class: k ? 'sort' : ''}, label);
    if (k) th.addEventListener('click', () => {
      state.desc = state.sort === k ? !state.desc : k !== 'id' && k !== 'group';
      state.sort = k;
      state.shown = 100;
      draw();
    });
    return th;
  }));
  const groupSel = el('select', {onchange: e => { state.group = e.target.value; state.shown = 100; draw(); }},
    el('option', {value: 'all'}, 'all groups'), sae.bounds.map((b, g) => el('option', {value: g}, 'group ' + (g + 1))));
  const text = el('input', {type: 'text', placeholder: 'token or context text', id: 'search',
                            oninput: e => { state.text = e.target.value; state.shown = 100; draw(); }});
  const dead = el('input', {type: 'checkbox', checked: '', onchange: e => { state.hideDead = e.target.checked; draw(); }});
  holder.replaceChildren(
    saeChoice(s, rerender) || '',
    el('div', {class: 'controls'}, groupSel, el('label', {}, 'search ', text), el('label', {}, dead, ' hide latents that never fired'), count,
       el('a', {href: `tree.html?sae=${s}`}, 'Matryoshka tree of ' + sae.name)),
    el('table', {id: 'latent-table'}, el('thead', {}, head), body), more);
  draw();
}

async function latentPage() {
  const s = Number(param('sae', 0)) || 0, j = Number(param('id', 0)) || 0;
  const sae = MSAE.site.saes[s];
  if (!sae) throw new Error('no SAE ' + s);
  if (!(j >= 0 && j < sae.d_sae)) throw new Error(`latent ${j} is outside [0, ${sae.d_sae})`);
  const idx = await loadIndex(s);
  const chunk = await loadChunk(s, Math.floor(j / MSAE.site.chunk_latents));
  const L = chunk[j % MSAE.site.chunk_latents];
  const rows = MSAE.site.rows, g = groupOf(sae, j);
  document.title = `${sae.name} #${j} · msae browser`;
  const main = document.getElementById('main');
  const lo = g ? sae.bounds[g - 1] : 0;
  main.replaceChildren(
    el('h1', {}, `${sae.name} · latent ${j}`),
    el('p', {class: 'muted'}, `group ${g + 1} of ${sae.bounds.length} (latents [${lo}, ${sae.bounds[g]})) · `,
       j > 0 ? latentLink(s, j - 1, '\u2190 previous') : '', ' ', j + 1 < sae.d_sae ? latentLink(s, j + 1, 'next \u2192') : ''));
  const fired = idx.fired[j];
  const stats = el('table', {id: 'stats'},
    [['firing density', fired ? `${fmt(fired / rows, 4)} (${fired.toLocaleString()} of ${rows.toLocaleString()} rows)` : 'never fired on these rows'],
     ['mean activation (when firing)', fmt(idx.mean[j], 4)], ['max activation', fmt(idx.max[j], 4)],
     ['fires on', chips(idx.tokens[j])]].map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))));
  main.append(stats);
  // Parent and children: the Matryoshka tree around this latent, and the absorption view.
  const P = parents(idx), p = P.id[j];
  main.append(ruleSwitch());
  if (p >= 0) {
    main.append(el('p', {id: 'parent'}, 'Parent: ', latentLink(s, p),
      ` in group ${groupOf(sae, p) + 1}: fires on ${pct(P.p[j])} of its firings (lift ${fmt(lift(idx, j), 3)}); decoder cosine ${fmt(P.cos[j], 3)}; `,
      chips(idx.tokens[p].slice(0, 3))));
  }
  const kids = [];
  for (let c = 0; c < sae.d_sae; c++) if (P.id[c] === j) kids.push(c);
  if (kids.length) {
    kids.sort((a, b) => (P.p[a] - P.p[b]) || a - b);
    main.append(el('h2', {}, `Children (${kids.length}): later-group latents whose parent is this one`),
      el('p', {class: 'muted small'}, 'Sorted by how often the child fires while this latent stays silent: a child that fires without its parent on the parent\'s own tokens is the absorption pattern.'),
      el('table', {id: 'children'}, el('tr', {}, ['child', 'group', 'density', 'fires without this latent', 'lift', 'decoder cos', 'fires on'].map(h => el('th', {}, h))),
        kids.slice(0, 50).map(c => el('tr', {}, el('td', {}, latentLink(s, c)), el('td', {class: 'num'}, groupOf(sae, c) + 1),
          el('td', {class: 'num'}, fmt(idx.fired[c] / rows)), el('td', {class: 'num'}, pct(1 - P.p[c])),
          el('td', {class: 'num'}, fmt(lift(idx, c), 3)), el('td', {class: 'num'}, fmt(P.cos[c], 3)), el('td', {}, chips(idx.tokens[c].slice(0, 3)))))));
  }
  if (!fired) return;
  // Histogram of the activations (log2 bins).
  const h = L.hist, per = MSAE.site.hist.per_octave, lo2 = MSAE.site.hist.min_octave;
  const labels = h.counts.map((_, i) => fmt(Math.pow(2, (h.first + i) / per + lo2), 2));
  main.append(el('h2', {}, 'Activations (histogram over log\u2082 bins, ' + per + ' per octave)'), barChart(h.counts, {labels, width: 520, height: 110}));
  const scale = idx.max[j];
  main.append(el('h2', {}, `Top activating contexts (${L.top.length})`), el('div', {id: 'top'}, L.top.map(e => contextLine(e, scale))));
  for (const band of L.bands) {
    const a = Math.pow(2, band.octave), b = 2 * a;
    main.append(el('h3', {}, `Sampled from activations in [${fmt(a, 3)}, ${fmt(b, 3)}) (${band.seen.toLocaleString()} of them)`),
                el('div', {class: 'band'}, band.examples.map(e => contextLine(e, scale))));
  }
  const cols = el('div', {class: 'cols'});
  if (L.promoted) {
    const tokTable = (list, id) => el('table', {id}, list.map(([t, v]) => el('tr', {}, el('td', {}, el('span', {class: 'chip'}, showText(tokText(t)))), el('td', {class: 'num'}, fmt(v, 3)))));
    cols.append(el('div', {}, el('h3', {}, 'Promoted tokens (decoder row \u00b7 unembedding)'), tokTable(L.promoted, 'promoted')),
                el('div', {}, el('h3', {}, 'Suppressed tokens'), tokTable(L.suppressed, 'suppressed')));
  }
  const nbTable = (list, label, other) => el('table', {}, el('tr', {}, el('th', {}, 'latent'), el('th', {class: 'num'}, label), el('th', {}, 'fires on')),
    list.map(([i, v]) => el('tr', {}, el('td', {}, latentLink(other, i)), el('td', {class: 'num'}, fmt(v, 3)),
      el('td', {}, MSAE.index[other] ? chips(MSAE.index[other].tokens[i].slice(0, 2)) : ''))));
  cols.append(el('div', {id: 'nearest'}, el('h3', {}, 'Nearest latents (decoder cosine)'), nbTable(L.nearest, 'cos', s)));
  cols.append(el('div', {id: 'cofire'}, el('h3', {}, `Co-firing latents (P(fires | this fires), ${L.cofire_fired.toLocaleString()} firings)`), nbTable(L.cofire, 'P', s)));
  for (const [t, list] of Object.entries(L.other || {})) {
    await loadIndex(Number(t));
    cols.append(el('div', {}, el('h3', {}, `Nearest in ${MSAE.site.saes[t].name} (decoder cosine)`), nbTable(list, 'cos', Number(t))));
  }
  main.append(el('h2', {}, 'Related'), cols);
}

async function treePage() {
  let s = Number(param('sae', 0)) || 0;
  const main = document.getElementById('main');
  const draw = async () => {
    const sae = MSAE.site.saes[s], idx = await loadIndex(s), rows = MSAE.site.rows, P = parents(idx);
    const kids = Array.from({length: sae.d_sae}, () => []);
    const orphans = [];
    for (let c = 0; c < sae.d_sae; c++) {
      if (idx.fired[c] === 0) continue;
      if (P.id[c] >= 0) kids[P.id[c]].push(c);
      else if (groupOf(sae, c) > 0) orphans.push(c);
    }
    for (const k of kids) k.sort((a, b) => idx.fired[b] - idx.fired[a] || a - b);
    const label = c => {
      const bits = [latentLink(s, c), ` g${groupOf(sae, c) + 1} · density ${fmt(idx.fired[c] / rows)} · `, chips(idx.tokens[c].slice(0, 3))];
      if (P.id[c] >= 0) bits.push(el('span', {class: 'muted small'}, ` · with parent ${pct(P.p[c])}, without ${pct(1 - P.p[c])} · lift ${fmt(lift(idx, c), 2)} · cos ${fmt(P.cos[c], 2)}`));
      if (kids[c].length) bits.push(el('span', {class: 'muted small'}, ` · ${kids[c].length} children`));
      return bits;
    };
    const node = c => {
      const d = el('details', {class: kids[c].length ? 'node' : 'node leaf', 'data-latent': c}, el('summary', {}, label(c)));
      if (kids[c].length) {
        d.addEventListener('toggle', () => {
          if (d.open && d.children.length === 1) d.append(...kids[c].map(node));
        });
      }
      return d;
    };
    const roots = [];
    for (let c = 0; c < (sae.bounds[0] || 0); c++) if (idx.fired[c] > 0) roots.push(c);
    roots.sort((a, b) => kids[b].length - kids[a].length || idx.fired[b] - idx.fired[a] || a - b);
    const tree = el('div', {id: 'tree'}, roots.map(node));
    main.replaceChildren(el('h1', {}, `Matryoshka tree of ${sae.name}`), aboutLine(), saeChoice(s, t => { s = t; draw(); }) || '',
      el('p', {class: 'muted'}, sae.bounds.length < 2
        ? 'This SAE has one group, so no latent has a parent in an earlier group.'
        : `Each latent of a later group hangs under its parent: the latent of an earlier group that fires with it most often given that it fires ` +
          `(rule "fires with it most often"), or whose P(fires | child fires) is most above its own firing density (rule "most above its own density"). ` +
          `The first group's ${sae.bounds[0]} latents are the roots, those with the most children first. "without" is the share of the child's firings where the parent stays silent (absorption).`),
      ruleSwitch(),
      el('div', {class: 'controls'}, el('button', {id: 'expand', onclick: () => {
        for (const d of tree.querySelectorAll(':scope > details')) if (d.classList.contains('node') && !d.classList.contains('leaf')) d.open = true;
      }}, 'expand the first level')),
      tree);
    // The three roots with the most children start open.
    for (const d of Array.from(tree.children).slice(0, 3)) if (!d.classList.contains('leaf')) d.open = true;
    if (orphans.length) {
      orphans.sort((a, b) => idx.fired[b] - idx.fired[a] || a - b);
      main.append(el('h2', {}, `Latents of later groups without a parent under this rule (${orphans.length})`),
                  el('div', {}, orphans.slice(0, 200).map(c => el('div', {}, label(c)))));
    }
  };
  await draw();
}
