// Timely Machine dashboard: one episode's detail and its timeline (SVG). Loaded before app.js,
// whose helpers (h, s, $, secs, fmt, state, OUTCOME_COLORS) these functions use when called.
"use strict";

// ---- one episode: the timeline ------------------------------------------------------------
async function selectEpisode(id) {
  state.selected = id;
  writeHash();
  for (const tr of document.querySelectorAll("tr.ep-row")) tr.classList.toggle("selected", tr.dataset.id === id);
  const box = $("#episode-detail");
  try {
    const ep = await getJSON(`api/episodes/${encodeURIComponent(id)}`);
    if (state.selected === id) renderDetail(ep);
  } catch (err) {
    box.replaceChildren(h("p", { class: "hint", text: `Cannot show ${id}: ${err.message}` }));
  }
}
function niceStep(span, target) {
  const raw = span / target, mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}
function timeline(ep) {
  const steps = ep.timeline;
  const used = Math.max(ep.elapsed_s || 0, ...steps.map((st) => st.ended_at), 1e-6);
  const end = state.zoom === "episode" ? used * 1.02 : Math.max(ep.budget_s || 0, used);
  // Drawn at the panel's own width, so the labels keep their size on any screen.
  const W = Math.max(480, Math.min(1400, $("#episode-detail").clientWidth - 2) || 760), left = 52, right = 70, top = 34, laneH = Math.max(9, Math.min(22, 360 / Math.max(steps.length, 1)));
  const overallH = 16, gap = 10;
  const H = top + overallH + gap + steps.length * laneH + 40;
  const x = (t) => left + ((W - left - right) * t) / end;
  const svg = s("svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `timeline of ${ep.id}` });
  // time axis
  const axis = s("g", { class: "axis" });
  const step = niceStep(end, 8);
  for (let t = 0; t <= end + 1e-9; t += step) {
    axis.append(s("line", { x1: x(t), x2: x(t), y1: top - 6, y2: H - 34 }));
    axis.append(s("text", { x: x(t), y: top - 10, "text-anchor": "middle", text: `${+t.toFixed(3)}s` }));
  }
  svg.append(axis);
  // the whole episode in one lane: where the time went
  const overall = s("g", { class: "overall" });
  overall.append(s("text", { x: left - 6, y: top + overallH - 4, "text-anchor": "end", text: "all" }));
  const spans = (st) => {
    const out = [{ kind: "gen", from: st.started_at, dur: st.gen_s, tip: `step ${st.index}: generation ${secs(st.gen_s)} (${st.completion_tokens} tokens)` }];
    let t = st.started_at + st.gen_s;
    const made = st.calls.filter((c) => c.made);
    const charged = made.reduce((a, c) => a + (c.charged_s || 0), 0);
    if (made.length && charged > 0) {
      for (const c of made) {
        out.push({ kind: "tool", err: !!c.error, from: t, dur: c.charged_s || 0,
          tip: `step ${st.index}: ${c.name} ${secs(c.charged_s)}${c.error ? ` (error: ${c.error})` : ""}${c.fault ? ` [fault ${c.fault}]` : ""}` });
        t += c.charged_s || 0;
      }
    } else if (st.tool_s > 0) {
      out.push({ kind: "tool", from: t, dur: st.tool_s, tip: `step ${st.index}: tools ${secs(st.tool_s)}` });
    }
    return out;
  };
  for (const st of steps) for (const sp of spans(st)) {
    overall.append(s("rect", { class: `${sp.kind}-all${sp.err ? " err" : ""}`, x: x(sp.from), y: top,
      width: Math.max(0.5, x(sp.from + sp.dur) - x(sp.from)), height: overallH }));
  }
  svg.append(overall);
  // one lane per step
  const y0 = top + overallH + gap;
  steps.forEach((st, i) => {
    const y = y0 + i * laneH;
    const g = s("g", { class: "step", "data-index": st.index });
    g.append(s("rect", { class: "lane", x: 0, y, width: W, height: laneH }));
    if (laneH >= 11 || i % Math.ceil(11 / laneH) === 0) {
      g.append(s("text", { x: left - 6, y: y + laneH / 2 + 4, "text-anchor": "end", text: `#${st.index}` }));
    }
    for (const sp of spans(st)) {
      const r = s("rect", { class: `${sp.kind}${sp.err ? " err" : ""}`, x: x(sp.from), y: y + 1.5,
        width: Math.max(0.8, x(sp.from + sp.dur) - x(sp.from)), height: laneH - 3, rx: 1.5 });
      g.append(title(r, sp.tip));
    }
    g.addEventListener("click", () => highlightStep(st.index));
    svg.append(g);
  });
  // budget line and where the episode ended
  const bottom = y0 + steps.length * laneH + 2;
  if (ep.budget_s && ep.budget_s > end) {  // zoomed in past the budget line: say where it is
    svg.append(s("g", { class: "budget" }, s("text", { x: W - 4, y: bottom + 28, "text-anchor": "end",
      text: `budget ${secs(ep.budget_s)} →` })));
  } else if (ep.budget_s) {
    svg.append(s("g", { class: "budget" },
      s("line", { x1: x(ep.budget_s), x2: x(ep.budget_s), y1: top - 4, y2: bottom }),
      s("text", { x: x(ep.budget_s) > W - 130 ? x(ep.budget_s) - 4 : x(ep.budget_s) + 4, y: bottom + 14,
        "text-anchor": x(ep.budget_s) > W - 130 ? "end" : "start", text: `budget ${secs(ep.budget_s)}` })));
  }
  const endAt = ep.answer_at ?? ep.cut_at ?? ep.elapsed_s;
  const label = { on_time: "answer", wrong: "wrong answer", late: "late answer", cut_off: "cut off",
    no_answer: "turn limit", failed: "failed" }[ep.outcome] || ep.outcome;
  const color = OUTCOME_COLORS[ep.outcome] || "#333";
  const ex = x(Math.min(endAt, end));
  // Two labels under the lanes: the end's goes one line lower when it would overlap the budget's.
  const near = ep.budget_s && ep.budget_s <= end && Math.abs(ex - x(ep.budget_s)) < 110;
  const rightEdge = ex > W - 130;
  svg.append(s("g", { class: "end", "data-outcome": ep.outcome },
    s("line", { x1: ex, x2: ex, y1: top - 4, y2: bottom, stroke: color }),
    s("text", { x: rightEdge ? ex - 4 : ex + 4, y: near ? bottom + 28 : bottom + 14,
      "text-anchor": rightEdge ? "end" : "start", fill: color, text: `${label} ${secs(endAt)}` })));
  return svg;
}
function highlightStep(index) {
  for (const tr of document.querySelectorAll(".steps tr")) tr.classList.toggle("hl", tr.dataset.index === String(index));
  const row = document.querySelector(`.steps tr[data-index="${index}"]`);
  if (row) row.scrollIntoView({ block: "nearest" });
}
function renderDetail(ep) {
  state.detail = ep;
  const color = OUTCOME_COLORS[ep.outcome];
  const fact = (k, v) => h("div", {}, h("span", { text: k }), v);
  const calls = (st) => h("div", { class: "calls" }, st.calls.map((c) => h("div", { class: c.error ? "err" : null },
    `${c.name}(${c.arguments ?? ""})`, c.made ? ` → ${c.result ?? ""}`.slice(0, 240) : " (not made: no time left)",
    c.made ? ` [${secs(c.charged_s)}]` : "")));
  const table = h("table", { class: "steps" }, h("thead", {}, h("tr", {},
    ["#", "start", "gen", "tool", "tokens", "tool calls", "text"].map((t) => h("th", { text: t })))),
  h("tbody", {}, ep.timeline.map((st) => h("tr", { "data-index": st.index },
    h("td", { text: String(st.index) }), h("td", { class: "num", text: secs(st.started_at) }),
    h("td", { class: "num", text: secs(st.gen_s) }), h("td", { class: "num", text: secs(st.tool_s) }),
    h("td", { text: `${st.prompt_tokens}→${st.completion_tokens}${st.usage_estimated ? "~" : ""}` }),
    h("td", { class: "mono" }, calls(st)), h("td", { class: "mono", text: (st.text || "").slice(0, 300) })))));
  $("#episode-detail").replaceChildren(...[
    h("h3", {}, h("span", { class: "badge", style: `background:${color}`, text: state.outcomes[ep.outcome] || ep.outcome }),
      `${ep.task} · ${ep.policy}`),
    h("div", { class: "facts" },
      fact("elapsed / budget", `${secs(ep.elapsed_s)} / ${secs(ep.budget_s)} (${ep.budget})`),
      fact("generation / tools", `${secs(ep.gen_s)} / ${secs(ep.tool_s)}`),
      fact("latency", ep.latency), fact("score · reward", `${fmt(ep.score)} · ${fmt(ep.reward)}`),
      fact("steps · tool calls", `${ep.steps} · ${ep.tool_calls}`),
      fact("seed · clock", `${ep.seed} · ${ep.clock}`), fact("end reason", ep.end_reason),
      fact("overrun", ep.overrun), fact("source", sourceName(ep.source))),
    ep.answer !== null ? h("div", {}, h("span", { class: "hint", text: `answer${ep.target ? ` (target ${ep.target})` : ""}` }), h("div", { class: "answer", text: ep.answer })) : null,
    ep.error ? h("div", { class: "answer", style: "color:#c62828", text: ep.error }) : null,
    h("div", { class: "legend" }, h("b", { text: "Timeline" }),
      h("button", { type: "button", class: "zoom", id: "zoom",
        title: "scale the time axis to the whole budget or to the time the episode used",
        onclick: () => { state.zoom = state.zoom === "budget" ? "episode" : "budget"; renderDetail(state.detail); },
        text: state.zoom === "budget" ? "zoom to the episode" : "show the whole budget" })),
    timeline(ep),
    h("div", { class: "legend" },
      h("span", {}, h("i", { style: "background:#4c78a8" }), "generation"),
      h("span", {}, h("i", { style: "background:#f58518" }), "tool call"),
      h("span", {}, h("i", { style: "background:#fff;border:1px solid #c62828" }), "tool error"),
      h("span", {}, h("i", { style: "border-top:2px dashed #c62828;height:0" }), "budget"),
      h("span", {}, h("i", { style: `background:${color};width:3px` }), "end of episode")),
    ep.prompt ? h("details", { class: "prompt" }, h("summary", { text: "Task prompt" }), h("div", { class: "answer", text: ep.prompt })) : null,
    h("div", { class: "steps-wrap" }, table)].filter(Boolean));
}

