// bwarea view: the pages, drawn from the JSON API (viewer/app.py). Plain JS, no library, no build step.
"use strict";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const POLL_MS = 2000;        // live watch: how often the runs list and a run's episodes are re-read
const PAGE = 50;             // steps fetched per request

// ---------------------------------------------------------------------------------------------
// helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// node.replaceChildren(...) without the null / false entries that conditional children leave
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

async function api(url, options) {
  const response = await fetch(url, options);
  const data = await response.json().catch(() => ({ error: `${url}: HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `${url}: HTTP ${response.status}`);
  return data;
}

function post(url, body) {
  return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
}

function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "—";
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(digits)) : String(value);
}

function estimate(e, digits = 1) {
  if (!e) return "—";
  return `${e.mean.toFixed(digits)} ± ${e.stderr === null || e.stderr === undefined ? "n/a" : e.stderr.toFixed(digits)}`;
}

function runLink(run) {
  const page = run.kind === "training" ? "/curves" : run.kind === "play" ? "/replay" : "/run";
  const query = new URLSearchParams({ run: run.id });
  if (run.kind === "play") query.set("episode", "0");
  return `${page}?${query}`;
}

// a latent action's colour: golden-angle hues, so neighbouring ids differ clearly
function actionColour(id) {
  return `hsl(${(id * 137.508) % 360}, 70%, 82%)`;
}

// ---------------------------------------------------------------------------------------------
// runs list (live: re-read every POLL_MS)

function metricsText(run) {
  const parts = [];
  for (const [env, metrics] of Object.entries(run.metrics || {})) {
    const shown = Object.entries(metrics).filter(([name]) =>
      /normalised_score|success_rate|crafter_score|crafter_reward|bbh_accuracy/.test(name));
    parts.push(`${env}: ` + shown.map(([name, e]) => `${name} ${estimate(e)}`).join(", "));
  }
  const macro = (run.aggregates || {}).bbh_macro_accuracy;
  if (macro) parts.push(`bbh_macro_accuracy ${estimate(macro)}`);
  return parts.join("\n");
}

async function runsPage() {
  const selected = new Set();
  const family = el("select", { id: "filter-family" }, el("option", { value: "" }, "all suites"),
    ["textworld", "crafter", "bbh"].map((f) => el("option", { value: f }, f)));
  const agent = el("input", { id: "filter-agent", placeholder: "filter by agent / run" });
  const compare = el("button", { id: "compare-button", disabled: true }, "Compare the two selected");
  compare.addEventListener("click", () => {
    const [a, b] = [...selected];
    location.href = `/compare?${new URLSearchParams({ a, b })}`;
  });
  const body = el("tbody");
  const table = el("table", { id: "runs" }, el("thead", {}, el("tr", {},
    ["", "run", "kind", "agent", "backend / model", "suite", "seeds", "versions", "episodes", "metrics (mean ± s.e.)", "state"]
      .map((h) => el("th", {}, h)))), body);
  fill(main, el("h2", {}, "Runs"), el("div", { class: "toolbar" }, family, agent, compare), table);

  let rows = [];
  function draw() {
    const wanted = family.value, text = agent.value.toLowerCase();
    fill(body, ...rows.filter((run) =>
      (!wanted || (run.families || []).includes(wanted)) &&
      (!text || `${run.agent} ${run.agent_source} ${run.id}`.toLowerCase().includes(text))
    ).map((run) => {
      const box = el("input", { type: "checkbox", checked: selected.has(run.id), disabled: run.kind === "training" });
      box.addEventListener("change", () => {
        if (box.checked) selected.add(run.id); else selected.delete(run.id);
        compare.disabled = selected.size !== 2;
      });
      const versions = run.versions && run.versions.bwarea ? `bwarea ${run.versions.bwarea}, torch ${run.versions.torch}` : "";
      const state = [
        run.live ? el("span", { class: "badge live" }, "live") : null,
        run.complete === true ? el("span", { class: "badge" }, "complete") : run.complete === false ? el("span", { class: "badge" }, "incomplete") : null,
        ...(run.problems || []).map((p) => el("div", { class: "badge bad", title: p }, p)),
      ];
      return el("tr", { dataset: { run: run.id } },
        el("td", {}, box), el("td", {}, el("a", { href: runLink(run) }, run.id)), el("td", {}, run.kind),
        el("td", {}, run.agent || "", run.agent_source && run.agent_source !== run.agent ? el("div", { class: "muted" }, run.agent_source) : null),
        el("td", {}, [run.backend, run.model].filter(Boolean).join(" · ")),
        el("td", {}, (run.suite || []).join(", ")), el("td", {}, (run.seeds || []).join(", ")),
        el("td", { class: "muted" }, versions),
        el("td", { class: "num episodes" }, run.kind === "training" ? `${run.logs} log(s)` : `${fmt(run.episodes)} / ${fmt(run.planned)}`),
        el("td", { style: "white-space: pre-line" }, metricsText(run)), el("td", {}, state));
    }));
  }
  family.addEventListener("change", draw);
  agent.addEventListener("input", draw);
  async function poll() {
    try { rows = await api("/api/runs"); showError(null); draw(); } catch (error) { showError(error); }
  }
  await poll();
  setInterval(poll, POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// one evaluation run: summary and its episodes (live)

function summaryTable(summary) {
  const rows = [];
  for (const [env, entry] of Object.entries(summary.environments || {})) {
    for (const [name, e] of Object.entries(entry.metrics || {})) {
      rows.push(el("tr", {}, el("td", {}, env), el("td", {}, name), el("td", { class: "num" }, estimate(e, 2)), el("td", { class: "num" }, e.n)));
    }
  }
  return el("table", { id: "summary" }, el("thead", {}, el("tr", {}, ["environment", "metric", "mean ± s.e.", "n"].map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}

function episodeRow(run, e) {
  const outcome = e.error ? el("span", { class: "badge bad" }, "error") : e.problem ? el("span", { class: "badge bad" }, "damaged")
    : e.won || e.correct ? el("span", { class: "badge live" }, "won") : "";
  const faulted = e.faulted ? el("span", { class: "badge bad", title: "a backend request failed in this episode" }, "faulted") : null;
  return el("tr", {},
    el("td", { class: "num" }, el("a", { href: `/replay?${new URLSearchParams({ run, episode: e.index })}` }, e.index)),
    el("td", {}, e.env || "?"), el("td", { class: "num" }, fmt(e.seed)), el("td", { class: "num" }, fmt(e.episode)),
    el("td", { class: "num" }, fmt(e.env_seed)), el("td", { class: "num" }, fmt(e.steps)),
    el("td", { class: "num" }, `${fmt(e.score)} / ${fmt(e.max_score)}`), el("td", { class: "num" }, fmt(e.return)),
    el("td", {}, outcome, faulted, e.error || e.problem || ""));
}

async function runPage() {
  const run = params.get("run");
  const body = el("tbody");
  const head = el("div");
  fill(main, el("h2", {}, `Run ${run}`), head, el("h3", {}, "Episodes"),
    el("table", { id: "episodes" }, el("thead", {}, el("tr", {}, ["#", "environment", "seed", "episode", "world / game", "steps", "score", "return", "outcome"].map((h) => el("th", {}, h)))), body));
  try {
    const detail = await api(`/api/run?${new URLSearchParams({ run })}`);
    const s = detail.settings || {}, a = s.agent || {};
    fill(head,
      el("dl", { class: "facts" },
        el("dt", {}, "agent"), el("dd", {}, `${a.type || "?"} (${a.source || "?"})`),
        el("dt", {}, "backend / model"), el("dd", {}, [a.backend, a.model].filter(Boolean).join(" · ") || "—"),
        el("dt", {}, "suite"), el("dd", {}, (s.suite || []).join(", ")),
        el("dt", {}, "seeds / split"), el("dd", {}, `${(s.seeds || []).join(", ")} / ${s.split || "—"}`),
        el("dt", {}, "versions"), el("dd", {}, Object.entries(s.versions || {}).map(([k, v]) => `${k} ${v}`).join(", "))),
      ...(detail.row.problems || []).map((p) => el("div", { class: "error" }, p)),
      detail.summary ? summaryTable(detail.summary) : el("p", { class: "muted" }, "No summary.json yet (the evaluation is running or was cut off)."),
      el("div", { class: "plots" }, (detail.plots || []).map((path) => el("img", { src: `/files/${run}/${path}`, alt: path, class: "plot" }))));
  } catch (error) { showError(error); return; }
  async function poll() {
    try {
      const data = await api(`/api/episodes?${new URLSearchParams({ run })}`);
      fill(body, ...data.episodes.map((e) => episodeRow(run, e)));
    } catch (error) { showError(error); }
  }
  await poll();
  setInterval(poll, POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// episode replay: a Replay draws one episode into a container; the keyboard steps every replay on the page

class Replay {
  constructor(container, run, episode) {
    this.container = container; this.run = run; this.episode = episode;
    this.pages = new Map(); this.step = 0;
  }

  async load() {
    const query = new URLSearchParams({ run: this.run, episode: this.episode });
    this.info = await api(`/api/episode?${query}`);
    this.last = this.info.outline.rewards.length;
    const info = this.info;
    this.frame = info.frames ? el("img", { class: "frame", alt: "Crafter frame", "data-role": "frame" }) : null;
    this.label = el("span", { "data-role": "step-label" });
    this.scrubber = el("input", { type: "range", min: 0, max: this.last, value: 0, class: "scrubber", "data-role": "scrubber" });
    this.scrubber.addEventListener("input", () => this.show(Number(this.scrubber.value)));
    this.observation = el("pre", { "data-role": "observation" });
    this.facts = el("dl", { class: "facts", "data-role": "facts" });
    this.trace = el("div", { "data-role": "trace" });
    const exportLink = info.frames ? el("a", { href: `/api/export?${query}&format=gif`, "data-role": "export", download: true }, "Export GIF") : null;
    const outcome = info.error ? `error: ${info.error}` : `${info.won || info.correct ? "won" : info.lost ? "lost" : "not won"}, score ${fmt(info.score)}/${fmt(info.max_score)}, return ${fmt(info["return"])}`;
    fill(this.container,
      el("div", { class: "muted" }, `${info.env} · evaluation seed ${info.seed} · episode ${info.episode} · world/game ${info.env_seed} · ${outcome}`),
      info.task ? el("div", { class: "muted" }, `Task: ${info.task}`) : null,
      info.frames_warning ? el("div", { class: "error", "data-role": "frames-warning" }, info.frames_warning) : null,
      el("div", { class: "toolbar" }, el("button", { onclick: () => this.show(this.step - 1), "data-role": "prev" }, "◀"),
        this.scrubber, el("button", { onclick: () => this.show(this.step + 1), "data-role": "next" }, "▶"), this.label, exportLink),
      el("div", { class: info.frames ? "replay" : "replay text-only" }, this.frame,
        el("div", {}, this.observation, this.facts)),
      el("h3", {}, "Agent"), this.trace);
    await this.show(0);
    if (info.frames) this.watchCheck(query);
  }

  // the frames are re-simulated: poll the background replay's check against the record until it is done
  async watchCheck(query) {
    const check = await api(`/api/replay-check?${query}`).catch(() => null);
    if (!check) return;
    if (check.diverged_at !== null) {
      this.container.prepend(el("div", { class: "error", "data-role": "replay-diverged" },
        `The re-simulated world differs from the recorded game from step ${check.diverged_at} on (other achievements ` +
        "unlocked): frames from there on do not show what was played."));
    } else if (check.checked < check.total) {
      setTimeout(() => this.watchCheck(query), POLL_MS);
    }
  }

  async page(start) {
    if (!this.pages.has(start)) {
      const query = new URLSearchParams({ run: this.run, episode: this.episode, start, count: PAGE });
      this.pages.set(start, api(`/api/steps?${query}`).then((data) => data.steps));
    }
    return this.pages.get(start);
  }

  async show(step) {
    step = Math.max(0, Math.min(this.last, step));
    this.step = step;
    const start = Math.floor(step / PAGE) * PAGE;
    const steps = await this.page(start);
    if (this.step !== step) return;          // a newer request overtook this one
    const s = steps[step - start];
    this.scrubber.value = step;
    this.label.textContent = `step ${step} / ${this.last}`;
    this.container.dataset.step = step;
    if (this.frame) {
      const query = new URLSearchParams({ run: this.run, episode: this.episode, step });
      this.frame.src = `/api/frame?${query}`;
      if (step < this.last) { query.set("step", step + 1); new Image().src = `/api/frame?${query}`; }
    }
    if (step + PAGE / 2 > start + PAGE && start + PAGE <= this.last) this.page(start + PAGE);
    this.observation.textContent = s.observation;
    const trace = s.trace || {};
    const parsed = s.final ? "—" : `${s.invalid_action ? "not valid in the game" : "valid"}` +
      (trace.parse_method && trace.parse_method !== "none" ? `; parsed by ${trace.parse_method}${trace.parse_failed ? " (FAILED)" : ""}${trace.fallback ? ", fallback" : ""}` : "");
    fill(this.facts, ...[
      el("dt", {}, "action"), el("dd", { "data-role": "action" }, s.final ? "(episode over)" : s.action),
      el("dt", {}, "parsed"), el("dd", {}, parsed),
      el("dt", {}, "reward"), el("dd", {}, s.final ? "—" : fmt(s.reward)),
      el("dt", {}, "return so far"), el("dd", {}, fmt(s["return"])),
      el("dt", {}, "achievements"), el("dd", { "data-role": "achievements" }, (s.achievements || []).join(", ") || "none"),
      s.suggestion ? el("dt", {}, "agent suggested") : null, s.suggestion ? el("dd", {}, s.suggestion) : null,
      (trace.faults || []).length ? el("dt", {}, "faults") : null, (trace.faults || []).length ? el("dd", {}, trace.faults.join("; ")) : null].filter(Boolean));
    fill(this.trace, traceView(trace, this.info.dag_parents || {}));
  }
}

// the nodes of one step laid out as the DAG: one column per sequential backend round (round r only reads
// answers of rounds < r), each node with the nodes it reads (← parents, when the DAG is declared in the
// run's agent config), its question, answer and, for latent-action models, coloured tokens
function traceView(trace, parents) {
  const nodes = trace.nodes || [];
  if (!nodes.length) return el("div", { class: "muted" }, trace.agent ? `${trace.agent}: no language-model calls this step.` : "No agent trace recorded for this step.");
  const rounds = new Map();
  for (const node of nodes) {
    if (!rounds.has(node.round || 0)) rounds.set(node.round || 0, []);
    rounds.get(node.round || 0).push(node);
  }
  return el("div", { class: "dag", "data-role": "dag" }, [...rounds.keys()].sort((a, b) => a - b).map((round) =>
    el("div", { class: "dag-round" }, el("div", { class: "round-label" }, `round ${round}`),
      rounds.get(round).map((node) => el("div", { class: "dag-node", dataset: { node: node.node } },
        el("div", { class: "node-name" }, node.node,
          (parents[node.node] || []).length ? el("span", { class: "parents" }, ` ← ${parents[node.node].join(", ")}`) : null),
        node.question ? el("div", { class: "question" }, node.question) : null,
        node.metadata && node.metadata.actions ? tokenView(node.metadata) : el("div", { class: "answer" }, node.answer),
        node.error ? el("div", { class: "error" }, node.error) : null)))));
}

function tokenView(meta) {
  const top = meta.action_top || [], probs = meta.action_top_probs || [];
  return el("div", { class: "tokens", "data-role": "tokens" }, meta.tokens.map((text, i) => {
    const action = meta.actions[i];
    const p = Math.exp(meta.action_log_probs[i]);
    const alternatives = (top[i] || []).map((id, j) =>
      `  ${String(id).padStart(4)}  ${(probs[i][j] * 100).toFixed(1).padStart(5)}%${id === action ? "  ◀ chosen" : ""}`).join("\n");
    const tip = `action ${action} · p = ${(p * 100).toFixed(1)}%` + (alternatives ? `\ntop-5:\n${alternatives}` : "");
    // a newline token is shown as ↵ (then the line break), so every token has something to hover
    return el("span", { class: "token", style: `background: ${actionColour(action)}`, dataset: { action, tip } }, text.replace(/\n/g, "↵\n"));
  }));
}

const tip = document.getElementById("token-tip");
document.addEventListener("mouseover", (event) => {
  const token = event.target.closest && event.target.closest(".token");
  if (!token) { tip.hidden = true; return; }
  tip.textContent = token.dataset.tip;
  tip.hidden = false;
  const box = token.getBoundingClientRect();
  tip.style.left = `${box.left}px`;
  tip.style.top = `${box.bottom + 4}px`;
});

const replays = [];
document.addEventListener("keydown", (event) => {
  if (!replays.length || ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "range") return;
  const moves = { ArrowRight: 1, l: 1, ArrowLeft: -1, h: -1, PageDown: 10, PageUp: -10 };
  for (const replay of replays) {
    if (event.key in moves) replay.show(replay.step + moves[event.key]);
    else if (event.key === "Home") replay.show(0);
    else if (event.key === "End") replay.show(replay.last);
    else continue;
    event.preventDefault();
  }
});

async function replayPage() {
  const container = el("div", { id: "replay" });
  fill(main, el("h2", {}, `Episode ${params.get("episode")} of `, el("a", { href: `/run?${new URLSearchParams({ run: params.get("run") })}` }, params.get("run"))),
    el("div", { class: "keys" }, el("kbd", {}, "←"), " ", el("kbd", {}, "→"), " step · ", el("kbd", {}, "PgUp"), " ", el("kbd", {}, "PgDn"), " 10 steps · ",
      el("kbd", {}, "Home"), " ", el("kbd", {}, "End"), " first / last · hover a token for its latent action"), container);
  const replay = new Replay(container, params.get("run"), Number(params.get("episode")));
  replays.push(replay);
  try { await replay.load(); } catch (error) { showError(error); }
}

// ---------------------------------------------------------------------------------------------
// compare two runs: per-episode table, and both replays side by side on one episode

async function comparePage() {
  const a = params.get("a"), b = params.get("b");
  const panes = el("div", { class: "panes", id: "panes" });
  fill(main, el("h2", {}, "Compare"), el("div", { id: "compare-summary" }), panes, el("h3", {}, "Per episode (same world / game for both)"));
  let data;
  try { data = await api(`/api/compare?${new URLSearchParams({ a, b })}`); } catch (error) { showError(error); return; }
  document.getElementById("compare-summary").replaceChildren(el("p", {},
    el("b", {}, "A"), ` = ${a}: ${data.wins.a} won · `, el("b", {}, "B"), ` = ${b}: ${data.wins.b} won · ${data.wins.tie} tied`,
    data.unmatched.a || data.unmatched.b ? ` · unmatched episodes: A ${data.unmatched.a}, B ${data.unmatched.b}` : ""));
  async function open(row) {
    replays.length = 0;
    const left = el("div", { class: "pane", "data-side": "a" }), right = el("div", { class: "pane", "data-side": "b" });
    fill(panes, left, right);
    for (const [container, run, entry, side] of [[left, a, row.a, "A"], [right, b, row.b, "B"]]) {
      const body = el("div");
      container.append(el("h3", {}, `${side}: ${run}`), body);
      const replay = new Replay(body, run, entry.index);
      replays.push(replay);
      replay.load().catch(showError);
    }
  }
  main.append(el("table", { id: "compare-table" }, el("thead", {}, el("tr", {},
    ["environment", "seed", "episode", "world / game", "A score", "A return", "B score", "B return", "winner", ""].map((h) => el("th", {}, h)))),
  el("tbody", {}, data.rows.map((row) => el("tr", { class: `win-${row.winner}` },
    el("td", {}, row.env), el("td", { class: "num" }, row.seed), el("td", { class: "num" }, row.episode), el("td", { class: "num" }, fmt(row.env_seed)),
    el("td", { class: "num a" }, fmt(row.a.score)), el("td", { class: "num a" }, fmt(row.a["return"])),
    el("td", { class: "num b" }, fmt(row.b.score)), el("td", { class: "num b" }, fmt(row.b["return"])),
    el("td", { class: "winner" }, row.winner === "tie" ? "tie" : row.winner.toUpperCase()),
    el("td", {}, el("button", { onclick: () => open(row) }, "side by side")))))));
  if (data.rows.length) open(data.rows[0]);
}

// ---------------------------------------------------------------------------------------------
// play in the browser

const CRAFTER_KEYS = { w: "move_up", a: "move_left", s: "move_down", d: "move_right", ArrowUp: "move_up", ArrowLeft: "move_left",
  ArrowDown: "move_down", ArrowRight: "move_right", " ": "do", q: "noop", z: "sleep", t: "place_table", r: "place_stone",
  f: "place_furnace", p: "place_plant", 1: "make_wood_pickaxe", 2: "make_stone_pickaxe", 3: "make_iron_pickaxe",
  4: "make_wood_sword", 5: "make_stone_sword", 6: "make_iron_sword" };

async function playPage() {
  const envSelect = el("select", { id: "play-env" });
  const seed = el("input", { id: "play-seed", type: "number", min: 0, value: params.get("seed") || 0, style: "width: 6em" });
  const split = el("select", { id: "play-split" }, ["test", "validation", "train", "all"].map((s) => el("option", { value: s }, s)));
  const agent = el("input", { id: "play-agent", placeholder: "agent suggesting (optional, e.g. random)" });
  const start = el("button", { id: "play-start" }, "Start");
  const game = el("div", { id: "game" });
  fill(main, el("h2", {}, "Play"), el("div", { class: "toolbar" }, "environment", envSelect, "split", split, "episode", seed, agent, start), game);
  api("/api/envs").then((data) => {
    fill(envSelect, ...data.envs.map((name) => el("option", { value: name, selected: name === params.get("env") }, name)));
  }).catch(showError);
  let state = null;
  const command = el("input", { id: "play-command", placeholder: "type a command and press Enter", style: "width: 28em" });
  async function act(action) {
    try { state = await post(`/api/play/${state.id}/act`, { action }); showError(null); draw(); } catch (error) { showError(error); }
  }
  command.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { act(command.value); command.value = ""; }
  });
  document.addEventListener("keydown", (event) => {
    if (!state || state.family !== "crafter" || state.ended || event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
    if (event.key in CRAFTER_KEYS) { event.preventDefault(); act(CRAFTER_KEYS[event.key]); }
  });
  function draw() {
    const frame = state.frame ? el("img", { id: "play-frame", class: "frame", src: state.frame, alt: "Crafter frame" }) : null;
    fill(game,
      state.task ? el("p", { class: "muted" }, `Task: ${state.task}`) : null,
      el("div", { class: frame ? "replay" : "replay text-only" }, frame, el("div", {},
        el("pre", { id: "play-observation" }, state.observation),
        el("div", { id: "play-status" }, state.status),
        el("dl", { class: "facts" }, el("dt", {}, "score"), el("dd", { id: "play-score" }, `${fmt(state.score)} / ${fmt(state.max_score)}`),
          el("dt", {}, "steps"), el("dd", {}, state.steps), el("dt", {}, "return"), el("dd", {}, fmt(state["return"])),
          state.family === "crafter" ? el("dt", {}, "achievements") : null, state.family === "crafter" ? el("dd", {}, state.achievements.join(", ") || "none") : null),
        state.suggestion ? el("p", { id: "play-suggestion" }, `Agent suggests: ${state.suggestion} (Enter on an empty line takes it)`) : null,
        state.ended ? el("p", { id: "play-saved" }, `Game ${state.ended}. Saved to ${state.saved}`)
          : el("div", {}, command, " ", el("button", { onclick: () => post(`/api/play/${state.id}/quit`).then((s) => { state = s; draw(); }).catch(showError) }, "Stop and save")),
        state.family === "crafter" && !state.ended ? el("p", { class: "keys" }, "Keys: ", Object.entries(CRAFTER_KEYS).filter(([k]) => !k.startsWith("Arrow")).map(([k, v]) => [el("kbd", {}, k === " " ? "space" : k), ` ${v}  `])) : null,
        state.admissible.length && !state.ended && state.family !== "crafter" ? el("div", { class: "admissible", id: "play-admissible" }, "Valid commands: ",
          state.admissible.map((action) => el("button", { onclick: () => act(action) }, action))) : null)));
    if (!state.ended && state.family !== "crafter") command.focus();
  }
  start.addEventListener("click", async () => {
    try {
      start.disabled = true;
      state = await post("/api/play", { env: envSelect.value, split: split.value, seed: Number(seed.value), agent: agent.value || null });
      showError(null); draw();
    } catch (error) { showError(error); } finally { start.disabled = false; }
  });
}

// ---------------------------------------------------------------------------------------------
// training curves: one small SVG chart per logged column, hover for values

function chart(name, points) {
  const W = 360, H = 200, L = 52, R = 10, T = 22, B = 26;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const root = svg("svg", { width: W, height: H, class: "chart", "data-metric": name });
  root.append(svg("text", { x: L, y: 14, class: "title" }, name));
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d9dde5" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#d9dde5" }));
  root.append(svg("text", { x: L - 4, y: T + 4, "text-anchor": "end" }, fmt(y1, 3)), svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, fmt(y0, 3)));
  root.append(svg("text", { x: L, y: H - 8 }, `step ${fmt(x0)}`), svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, fmt(x1)));
  root.append(svg("polyline", { points: points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: "#2f5fd0", "stroke-width": 1.5 }));
  const dot = svg("circle", { r: 3, fill: "#b42318", visibility: "hidden" });
  const readout = svg("text", { x: W - R, y: 14, "text-anchor": "end" }, "");
  root.append(dot, readout);
  root.addEventListener("mousemove", (event) => {
    const box = root.getBoundingClientRect();
    const x = x0 + ((event.clientX - box.left - L) / (W - L - R)) * (x1 - x0);
    let best = points[0];
    for (const p of points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
    dot.setAttribute("cx", sx(best[0])); dot.setAttribute("cy", sy(best[1])); dot.setAttribute("visibility", "visible");
    readout.textContent = `step ${fmt(best[0])}: ${fmt(best[1], 4)}`;
  });
  return root;
}

async function curvesPage() {
  const run = params.get("run");
  const filter = el("input", { id: "curve-filter", placeholder: "filter metrics (e.g. reward, kl, loss)" });
  const charts = el("div", { id: "charts" });
  fill(main, el("h2", {}, `Training curves: ${run}`), el("div", { class: "toolbar" }, filter,
    el("span", { class: "muted" }, "re-read every few seconds while the run trains")), charts);
  let columns = {};
  function draw() {
    const text = filter.value.toLowerCase();
    fill(charts, ...Object.entries(columns).filter(([name, points]) => points.length && name.toLowerCase().includes(text))
      .map(([name, points]) => chart(name, points)));
  }
  filter.addEventListener("input", draw);
  async function poll() {
    try { columns = (await api(`/api/curves?${new URLSearchParams({ run })}`)).columns; showError(null); draw(); } catch (error) { showError(error); }
  }
  await poll();
  setInterval(poll, POLL_MS * 5);
}

const pages = { "/": runsPage, "/run": runPage, "/replay": replayPage, "/compare": comparePage, "/play": playPage, "/curves": curvesPage };
if (!document.getElementById("server-error")) (pages[location.pathname] || runsPage)();
