// Timely Machine dashboard: plain JS, no dependencies, no network beyond this server.
// Data comes from the JSON API next to the page (relative URLs, so a mount prefix works);
// every string from the data goes through textContent, never innerHTML.
"use strict";

const POLL_MS = 4000;
const PAGE = 500;
const FILTERS = ["source", "task", "policy", "latency", "budget", "outcome"];
const OUTCOME_COLORS = {
  on_time: "#2e9e44", wrong: "#8e5cc4", late: "#d79b00",
  cut_off: "#c62828", no_answer: "#8a8f99", failed: "#5b3a29",
};
const SVG = "http://www.w3.org/2000/svg";

const state = {
  version: null,
  summary: null,
  outcomes: {},          // outcome -> label
  episodes: [],          // rows shown
  total: 0,
  selected: null,        // episode id
  detail: null,          // the shown episode's record
  zoom: "budget",        // timeline scale: the whole budget, or only the time the episode used
};

// ---- small DOM helpers -------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) el.append(c);
  return el;
}
const $ = (sel) => document.querySelector(sel);
function fmt(x, digits = 2) { return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits); }
function pct(x) { return x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`; }
function secs(x) {
  if (x === null || x === undefined) return "–";
  return x < 10 ? `${x.toFixed(2)} s` : x < 100 ? `${x.toFixed(1)} s` : `${Math.round(x)} s`;
}
function latencyShort(spec) {
  const [kind, arg = ""] = String(spec).split(":");
  const first = parseFloat(arg.split(",")[0]);
  if (Number.isNaN(first)) return spec;
  if (kind === "constant") return `${first}s`;
  if (kind === "lognormal") return `~${first}s`;
  return spec;
}
function title(el, text) { el.append(s("title", { text })); return el; }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || `${r.status} ${url}`);
  return body;
}

// ---- URL hash: filters and the chosen episode survive a reload and can be shared ---------
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const out = {};
  for (const k of [...FILTERS, "episode"]) if (p.get(k)) out[k] = p.get(k);
  return out;
}
function writeHash() {
  const p = new URLSearchParams();
  for (const k of FILTERS) { const v = $(`#filters [name=${k}]`).value; if (v) p.set(k, v); }
  if (state.selected) p.set("episode", state.selected);
  const next = p.toString();
  if (location.hash.slice(1) !== next) history.replaceState(null, "", next ? `#${next}` : location.pathname);
}

// ---- summary: sources, problems, filter values --------------------------------------------
function renderSummary(sum) {
  state.summary = sum;
  state.outcomes = Object.fromEntries(sum.facets.outcome.map((o) => [o.value, o.label]));
  const bar = $("#sources");
  bar.replaceChildren(...sum.sources.map((src) => h("span", { class: "source", title: src.path },
    h("b", { text: src.name }), ` · ${src.kind}`,
    src.episodes ? ` · ${src.episodes} episodes` : "",
    src.plots ? ` · ${src.plots} plots` : "",
    src.writing ? " · writing…" : "")));
  const probs = sum.problems || [];
  $("#problems").hidden = probs.length === 0;
  $("#problem-list").replaceChildren(...probs.map((p) => h("li", { text: p })));
  const empty = sum.sources.length === 0;
  $("#empty").hidden = !empty;
  $("#empty-dirs").textContent = sum.dirs.join(", ") || "no directory";
  $("#episodes").hidden = sum.episodes === 0;
  const wanted = { ...readHash() };
  for (const k of FILTERS) {
    const sel = $(`#filters [name=${k}]`);
    const keep = sel.dataset.ready ? sel.value : (wanted[k] || "");
    const values = sum.facets[k] || [];
    const opts = [h("option", { value: "", text: `all (${k === "outcome" ? sum.episodes : values.length})` })];
    for (const v of values) {
      const label = k === "outcome" ? v.label : k === "source" ? sourceName(v.value) : v.value;
      opts.push(h("option", { value: v.value, text: `${label} (${v.count})` }));
    }
    sel.replaceChildren(...opts);
    sel.value = values.some((v) => v.value === keep) ? keep : "";
    sel.dataset.ready = "1";
    // One source only: the filter says nothing, hide it.
    if (k === "source") sel.parentElement.hidden = values.length < 2;
  }
}
function sourceName(id) {
  const src = state.summary && state.summary.sources.find((x) => x.id === id);
  return src ? src.name : id;
}

// ---- leaderboard tables -------------------------------------------------------------------
const COLS = {
  policy: { label: "Policy", get: (r) => r.policy, cls: "policy" },
  latency: { label: "Latency", get: (r) => r.latency, show: (r) => latencyShort(r.latency) },
  budget: { label: "Budget", get: (r) => r.budget },
  score: { label: "Score [95% CI]", get: (r) => r.score, num: true, cell: scoreCell },
  score_plain: { label: "Score", get: (r) => r.score, num: true, show: (r) => fmt(r.score) },
  compliance: { label: "On time", get: (r) => r.compliance, num: true, show: (r) => pct(r.compliance) },
  raw_score: { label: "Raw score", get: (r) => r.raw_score, num: true, show: (r) => fmt(r.raw_score) },
  mean_elapsed_s: { label: "Mean s", get: (r) => r.mean_elapsed_s, num: true, show: (r) => fmt(r.mean_elapsed_s, 1) },
  p95_elapsed_s: { label: "P95 s", get: (r) => r.p95_elapsed_s, num: true, show: (r) => fmt(r.p95_elapsed_s, 1) },
  mean_budget_s: { label: "Budget s", get: (r) => r.mean_budget_s, num: true, show: (r) => fmt(r.mean_budget_s, 1) },
  tool_calls: { label: "Tool calls", get: (r) => r.tool_calls, num: true, show: (r) => fmt(r.tool_calls, 1) },
  turns: { label: "Turns", get: (r) => r.turns, num: true, show: (r) => fmt(r.turns, 1) },
  share: { label: "Gen / tool", get: (r) => r.gen_share, num: true, cell: shareCell },
  n: { label: "n", get: (r) => r.n, num: true, show: (r) => String(r.n ?? "–") },
};
function scoreCell(r) {
  const td = h("td", { class: "num score", "data-score": r.score ?? "" }, fmt(r.score));
  if (r.score_lo !== null && r.score_hi !== null && r.score_lo !== undefined) {
    td.append(h("span", { class: "ci", text: `[${fmt(r.score_lo)}, ${fmt(r.score_hi)}]` }));
    const bar = h("span", { class: "scorebar", title: "score and its 95% interval on [0, 1]" },
      h("span", { class: "range", style: `left:${100 * r.score_lo}%;width:${100 * (r.score_hi - r.score_lo)}%` }),
      h("span", { class: "mark", style: `left:calc(${100 * (r.score || 0)}% - 1px)` }));
    td.append(bar);
  }
  return td;
}
function shareCell(r) {
  if (r.gen_share === null || r.gen_share === undefined) return h("td", { class: "num", text: "–" });
  return h("td", { class: "num", title: "share of time generating (blue) vs waiting on tools (orange)" },
    `${pct(r.gen_share)} / ${pct(r.tool_share)}`,
    h("span", { class: "share" }, h("span", { class: "g", style: `width:${100 * r.gen_share}%` }),
      h("span", { class: "t", style: `width:${100 * r.tool_share}%` })));
}
function columnsOf(table) {
  if (table.level === "cells") {
    return ["policy", "latency", "budget", "mean_budget_s", "score", "compliance", "raw_score",
      "mean_elapsed_s", "p95_elapsed_s", "tool_calls", "turns", "share", "n"];
  }
  if (table.level === "computed") {
    return ["policy", "score_plain", "compliance", "raw_score", "mean_elapsed_s", "p95_elapsed_s",
      "tool_calls", "turns", "share", "n"];
  }
  return ["policy", "score", ...(table.auc_protocols || []).map((p) => `auc:${p}`),
    ...table.latencies.map((l) => `@${l}`), "compliance", "raw_score",
    "mean_elapsed_s", "p95_elapsed_s", "tool_calls", "share", "n"];
}
// The anytime AUC of one budget protocol (policy: multiples of each policy's own time; oracle:
// of the shared reference), shown only for sweeps of several budget multipliers.
function aucColumn(protocol) {
  const get = (r) => (r.auc && r.auc[protocol] ? r.auc[protocol].auc : null);
  const show = (r) => {
    const a = r.auc && r.auc[protocol];
    if (!a || a.auc === null) return "–";
    return a.auc_lo === null ? fmt(a.auc) : `${fmt(a.auc)} [${fmt(a.auc_lo)}, ${fmt(a.auc_hi)}]`;
  };
  return { label: protocol === "policy" ? "AUC" : `AUC@${protocol}`, get, num: true, show, cls: "auc",
    title: "area under the on-time score vs budget multiplier curve, normalised to [0, 1]" };
}
function column(key) {
  if (key.startsWith("auc:")) return aucColumn(key.slice(4));
  if (!key.startsWith("@")) return COLS[key];
  const lat = key.slice(1);
  const get = (r) => (r.by_latency && lat in r.by_latency ? r.by_latency[lat] : null);
  return { label: `@${latencyShort(lat)}`, get, num: true, show: (r) => fmt(get(r)), title: `score at tool latency ${lat}` };
}
function boardTable(table) {
  const keys = columnsOf(table);
  const cols = keys.map(column);
  const tbody = h("tbody");
  const fill = (rows) => tbody.replaceChildren(...rows.map((r) => h("tr", {
    class: "board-row", "data-policy": r.policy, "data-latency": r.latency ?? "", "data-budget": r.budget ?? "",
  }, cols.map((c) => (c.cell ? c.cell(r) : h("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null,
    text: c.show ? c.show(r) : String(c.get(r) ?? "–") }))))));
  let rows = table.rows.slice();
  let sortKey = null, desc = false;
  const ths = cols.map((c, i) => h("th", { class: `sortable${c.num ? " num" : ""}`, title: c.title || null,
    onclick: () => {
      desc = sortKey === i ? !desc : c.num; sortKey = i;
      rows.sort((a, b) => {
        const x = c.get(a), y = c.get(b);
        const cmp = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
        return desc ? -cmp : cmp;
      });
      ths.forEach((t, j) => t.classList.remove("sorted-asc", "sorted-desc"));
      ths[i].classList.add(desc ? "sorted-desc" : "sorted-asc");
      fill(rows);
    } }, c.label));
  fill(rows);
  return h("div", { class: "table-wrap" }, h("table", { class: "board-table", "data-level": table.level },
    h("thead", {}, h("tr", {}, ths)), tbody));
}
function renderResults(res) {
  const groups = new Map();
  for (const t of res.tables) {
    const key = `${t.source}|${t.family}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(t);
  }
  const many = new Set(res.tables.map((t) => t.source)).size > 1;
  const boards = [];
  for (const tables of groups.values()) {
    const main = tables.find((t) => t.level !== "cells") || tables[0];
    const cells = tables.find((t) => t.level === "cells" && t !== main);
    const t0 = tables[0];
    const meta = [`${t0.tasks.length} task(s)`, t0.budgets.length ? `budgets ${t0.budgets.join(", ")}` : null,
      main.level === "computed" ? "computed from the episodes (no results.json)" : null].filter(Boolean).join(" · ");
    boards.push(h("div", { class: "board", "data-source": t0.source, "data-family": t0.family },
      h("div", { class: "board-title" }, h("h3", { text: many ? `${t0.family} · ${t0.source_name} (${t0.source_kind})` : t0.family }),
        h("span", { class: "meta", title: t0.origin, text: meta })),
      boardTable(main),
      cells ? h("details", { class: "cells" }, h("summary", { text: "By latency and budget" }), boardTable(cells)) : null));
  }
  $("#boards").replaceChildren(...boards);
  $("#leaderboard").hidden = boards.length === 0;
  const figs = res.plots.map((p) => h("figure", {},
    h("a", { href: p.url, target: "_blank", title: "open full size" }, h("img", { src: `${p.url}?v=${state.version}`, alt: p.name, loading: "lazy" })),
    h("figcaption", { text: `${p.name.replace(/\.png$/, "").replace(/_/g, " ")}${many ? ` · ${sourceName(p.source)}` : ""}` })));
  $("#gallery").replaceChildren(...figs);
  $("#plots").hidden = figs.length === 0;
}

// ---- episode list -------------------------------------------------------------------------
function filterQuery() {
  const p = new URLSearchParams();
  for (const k of FILTERS) { const v = $(`#filters [name=${k}]`).value; if (v) p.set(k, v); }
  return p;
}
let episodeRequests = 0;
async function loadEpisodes(append = false) {
  // Answers may arrive out of order (a filter changed twice quickly, a poll): only the answer
  // to the latest request is drawn. Returns whether this one was.
  const seq = ++episodeRequests;
  const p = filterQuery();
  p.set("limit", PAGE);
  p.set("offset", append ? state.episodes.length : 0);
  const res = await getJSON(`api/episodes?${p}`);
  if (seq !== episodeRequests) return false;
  state.episodes = append ? state.episodes.concat(res.episodes) : res.episodes;
  state.total = res.total;
  renderChips(res.counts);
  renderEpisodes();
  renderOutcomeChart();
  return true;
}
function renderChips(counts) {
  const current = $("#filters [name=outcome]").value;
  $("#outcome-chips").replaceChildren(...Object.entries(counts).map(([k, n]) => h("span", {
    class: `chip${current === k ? " active" : ""}${n === 0 ? " zero" : ""}`, "data-outcome": k, role: "button",
    title: current === k ? "click to show every outcome" : `show only: ${state.outcomes[k]}`,
    onclick: () => { const sel = $("#filters [name=outcome]"); sel.value = current === k ? "" : k; filtersChanged(); },
  }, h("span", { class: `dot o-${k}` }), `${state.outcomes[k] || k} · ${n}`)));
}
function miniBar(e) {
  const w = 96, hgt = 10, span = Math.max(e.budget_s || 0, e.elapsed_s || 0, 1e-9);
  const x = (t) => (w * t) / span;
  const svg = s("svg", { class: "minibar", viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt },
    s("rect", { x: 0, y: 2, width: w, height: 6, fill: "#edf0f5" }),
    s("rect", { x: 0, y: 2, width: x(e.gen_s), height: 6, fill: "#4c78a8" }),
    s("rect", { x: x(e.gen_s), y: 2, width: x(e.tool_s), height: 6, fill: "#f58518" }),
    s("rect", { x: Math.min(w - 1.5, x(e.budget_s)), y: 0, width: 1.5, height: hgt, fill: "#c62828" }));
  return title(svg, `${secs(e.elapsed_s)} of a ${secs(e.budget_s)} budget (gen ${secs(e.gen_s)}, tools ${secs(e.tool_s)})`);
}
function renderEpisodes() {
  const rows = state.episodes.map((e) => h("tr", {
    class: `ep-row${e.id === state.selected ? " selected" : ""}`, "data-id": e.id, "data-outcome": e.outcome,
    onclick: () => selectEpisode(e.id),
  },
  h("td", { title: state.outcomes[e.outcome] }, h("span", { class: `dot o-${e.outcome}` })),
  h("td", { class: "task", title: `${e.task}, seed ${e.seed}${e.sample ? `, sample ${e.sample}` : ""}` },
    e.task, h("span", { class: "seed", text: ` #${e.seed}${e.sample ? `·${e.sample}` : ""}` })),
  h("td", { text: e.policy }),
  h("td", { title: `tool latency ${e.latency}, budget ${e.budget}`, text: `${latencyShort(e.latency)} · ${e.budget}` }),
  h("td", {}, miniBar(e)),
  h("td", { class: "num", text: fmt(e.score) }),
  h("td", { class: "num", text: String(e.steps) })));
  $("#episode-table tbody").replaceChildren(...rows);
  const shown = state.episodes.length;
  $("#episode-count").textContent = shown < state.total ? `${shown} of ${state.total} episodes` : `${state.total} episodes`;
  $("#more").hidden = shown >= state.total;
}
function renderOutcomeChart() {
  // Outcomes per policy under the current filters, drawn from the rows already loaded.
  const by = new Map();
  for (const e of state.episodes) {
    if (!by.has(e.policy)) by.set(e.policy, {});
    by.get(e.policy)[e.outcome] = (by.get(e.policy)[e.outcome] || 0) + 1;
  }
  const box = $("#outcome-chart");
  if (by.size === 0) { box.replaceChildren(); return; }
  const labelW = 150, w = 640, rowH = 18, hgt = by.size * rowH + 4;
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt}`, width: "100%", style: `max-width:${w}px`, role: "img", "aria-label": "outcomes by policy" });
  [...by.entries()].forEach(([policy, counts], i) => {
    const n = Object.values(counts).reduce((a, b) => a + b, 0);
    const y = 2 + i * rowH;
    svg.append(s("text", { x: labelW - 6, y: y + 12, "text-anchor": "end", text: policy, "font-size": 11.5 }));
    let x = labelW;
    for (const k of Object.keys(OUTCOME_COLORS)) {
      if (!counts[k]) continue;
      const bw = ((w - labelW - 40) * counts[k]) / n;
      svg.append(title(s("rect", { x, y: y + 2, width: bw, height: rowH - 5, fill: OUTCOME_COLORS[k] }), `${policy}: ${counts[k]} ${state.outcomes[k]}`));
      x += bw;
    }
    svg.append(s("text", { x: x + 5, y: y + 12, text: String(n), "font-size": 11, fill: "#636b7a" }));
  });
  box.replaceChildren(svg);
}
function filtersChanged() {
  writeHash();
  loadEpisodes().then((drawn) => {
    // The episode shown must be one of the list: else show the first that matches.
    const first = state.episodes[0];
    if (drawn && first && !state.episodes.some((e) => e.id === state.selected)) selectEpisode(first.id);
  }).catch(showError);
}

// ---- refresh loop -------------------------------------------------------------------------
function showError(err) {
  const live = $("#live");
  live.classList.add("stale");
  live.textContent = `cannot reach the server (${err.message}); retrying`;
}
async function refresh(force = false) {
  const sum = await getJSON("api/summary");
  const live = $("#live");
  live.classList.remove("stale");
  live.textContent = `live · ${sum.episodes} episodes · checked ${new Date().toLocaleTimeString()}`;
  if (!force && sum.version === state.version) return;
  state.version = sum.version;
  renderSummary(sum);
  const [res] = await Promise.all([getJSON("api/results"), sum.episodes ? loadEpisodes() : Promise.resolve()]);
  renderResults(res);
  document.body.dataset.version = sum.version;  // tests wait on this: the page has drawn
}
async function start() {
  $("#filters").addEventListener("change", filtersChanged);
  $("#reset-filters").addEventListener("click", () => {
    for (const k of FILTERS) $(`#filters [name=${k}]`).value = "";
    filtersChanged();
  });
  $("#more").addEventListener("click", () => loadEpisodes(true).catch(showError));
  try {
    await refresh(true);
  } catch (err) {
    showError(err);
  }
  const wanted = readHash().episode;
  if (wanted) selectEpisode(wanted);
  else if (state.episodes.length) selectEpisode(state.episodes[0].id);
  setInterval(() => { if (!document.hidden) refresh().catch(showError); }, POLL_MS);
}
start();
