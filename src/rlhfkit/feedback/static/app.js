// The annotation page: one task at a time. Plain JavaScript, no libraries, talks to /api.
"use strict";

const state = {
  token: localStorage.getItem("rlhfkit.token") || "",
  project: null,        // {name, guidelines, rating_labels, strengths}
  task: null,           // the task view from the API
  answer: {},           // the answer being built
  back: false,          // changing the last answer instead of a new task
  pending: null,        // {assignment_id, body}: kept until acknowledged, so a retry reuses its submission_id
  me: null,             // {name, reviewer}
  review: null,         // reviewing: {tasks, index} (the queue of disagreements), else null
};

// A client-made id makes a retried submission idempotent on the server.
function newSubmissionId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + state.token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

function show(view) {
  for (const v of ["view-login", "view-projects", "view-task", "view-done"]) $(v).hidden = v !== view;
  const inProject = view === "view-task" || view === "view-done";
  $("btn-guidelines").hidden = !inProject;
  $("btn-back").hidden = !inProject || Boolean(state.review);
  $("btn-skip").hidden = view !== "view-task" || state.back;
  $("btn-logout").hidden = view === "view-login";
  $("btn-review").hidden = !inProject || !(state.me && state.me.reviewer);
  $("btn-review").textContent = state.review ? "Back to annotating (r)" : "Review disagreements (r)";
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").className = bad ? "error" : "";
}

// --- login and projects ------------------------------------------------------------------------

async function start() {
  // A token in the URL fragment (never sent to the server, so never in its logs) logs in directly.
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("token")) {
    state.token = frag.get("token");
    localStorage.setItem("rlhfkit.token", state.token);
  }
  const wanted = frag.get("project");
  if (frag.get("token")) history.replaceState(null, "", location.pathname + (wanted ? "#project=" + encodeURIComponent(wanted) : ""));
  if (!state.token) return show("view-login");
  try {
    const me = await api("GET", "/api/me");
    state.me = me;
    $("who").textContent = me.name + (me.reviewer ? " (reviewer)" : "");
    const projects = await api("GET", "/api/projects");
    const pick = projects.find((p) => p.name === wanted) || (projects.length === 1 && !me.reviewer ? projects[0] : null);
    if (pick) return openProject(pick.name);
    $("project-list").replaceChildren(...projects.map((p) =>
      el("li", {}, el("button", { type: "button", onclick: () => openProject(p.name) }, p.name), ` ${p.tasks} tasks `,
        ...(me.reviewer ? [el("button", { type: "button", class: "review", onclick: () => openReview(p.name) }, "Review disagreements")] : []))));
    show("view-projects");
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      localStorage.removeItem("rlhfkit.token");
      state.token = "";
      $("login-error").textContent = e.message;
      return show("view-login");
    }
    throw e;
  }
}

async function openProject(name) {
  state.project = await api("GET", "/api/projects/" + encodeURIComponent(name));
  $("project-name").textContent = "· " + state.project.name;
  showGuidelines();
  $("guidelines").hidden = !state.project.guidelines;
  await nextTask();
}

// The server renders the guidelines' Markdown with raw HTML turned off (a tag in them shows as typed).
function showGuidelines() {
  if (state.project.guidelines) $("guidelines-text").innerHTML = state.project.guidelines_html;
  else $("guidelines-text").textContent = "(no guidelines for this project)";
}

function toggleGuidelines() {
  const g = $("guidelines");
  if (g.hidden) { g.hidden = false; g.open = true; } else g.open = !g.open;
}

function showProgress(p) {
  $("progress").textContent = `${p.done} done · ${p.held + p.available} to go` + (p.skipped ? ` · ${p.skipped} skipped` : "");
}

async function nextTask() {
  state.back = false;
  state.review = null;
  $("done-text").textContent = "There is no task left for you in this project. Thank you!";
  const r = await api("GET", `/api/projects/${encodeURIComponent(state.project.name)}/next`);
  showProgress(r.progress);
  if (!r.task) { state.task = null; return show("view-done"); }
  render(r.task);
}

// --- review: the tasks whose annotators disagree most, resolved by the reviewer's own answer ----------

async function openReview(name) {
  if (!state.project || state.project.name !== name) {
    state.project = await api("GET", "/api/projects/" + encodeURIComponent(name));
    $("project-name").textContent = "· " + state.project.name;
    showGuidelines();
  }
  const r = await api("GET", `/api/review/projects/${encodeURIComponent(name)}`);
  state.back = false;
  state.review = { tasks: r.tasks, index: 0 };
  $("progress").textContent = `${r.tasks.filter((t) => !t.resolution).length} to review · ${r.tasks.filter((t) => t.resolution).length} resolved`;
  showReview();
}

function showReview() {
  const rv = state.review;
  if (rv.index >= rv.tasks.length) {
    state.task = null;
    $("done-text").textContent = "No disagreement left to review in this project.";
    return show("view-done");
  }
  const t = rv.tasks[rv.index];
  render({ ...t, assignment_id: null, answer: t.resolution ? t.resolution.answer : null, revision: 0 });
}

async function toggleReview() {
  if (!(state.me && state.me.reviewer) || !state.project) return;
  if (state.review) return nextTask();
  return openReview(state.project.name);
}

async function goBack() {
  if (state.review) return;
  const r = await api("GET", `/api/projects/${encodeURIComponent(state.project.name)}/last`);
  if (!r.task) return setStatus("Nothing answered yet.");
  state.back = true;
  render(r.task);
}

// --- rendering each kind -----------------------------------------------------------------------

function renderPrompt(task) {
  const box = $("prompt");
  if (task.messages) {
    box.replaceChildren(...task.messages.map((m) => el("div", {}, el("span", { class: "role" }, m.role + ":"), m.content)));
  } else {
    box.replaceChildren(el("span", { class: "role" }, "Prompt:"), task.prompt);
  }
}

// A task whose prompt names a clip: the page fetches it with the token (an <audio> src cannot send one) and plays
// it from memory.
function renderClip(task) {
  const box = $("clip");
  if (!task.audio) { box.hidden = true; box.replaceChildren(); return; }
  const player = el("audio", { id: "clip-audio", controls: "", preload: "auto" });
  box.replaceChildren(el("span", { class: "role" }, "Listen:"), player);
  box.hidden = false;
  fetch(`/api/assignments/${task.assignment_id}/audio`, { headers: { "Authorization": "Bearer " + state.token } })
    .then((r) => { if (!r.ok) throw new Error(r.statusText); return r.blob(); })
    .then((b) => { if (state.task === task) player.src = URL.createObjectURL(b); })
    .catch((e) => setStatus("The clip could not be loaded: " + e.message, true));
}

function render(task) {
  state.task = task;
  state.pending = null;
  $("view-task").dataset.kind = task.kind;
  $("view-task").dataset.assignment = String(task.assignment_id);
  const prev = task.answer;
  state.answer = {};
  $("comment").value = prev ? prev.comment || "" : "";
  $("banner").hidden = !state.back && !state.review;
  $("banner").textContent = state.back ? `Changing your last answer (saved as revision ${task.revision + 1}). Submit to save it, or press Esc to go on.` : "";
  $("review-panel").hidden = !state.review;
  if (state.review) {
    const rv = state.review;
    $("banner").textContent = `Review ${rv.index + 1} of ${rv.tasks.length} · agreement ${task.agreement.toFixed(2)}` +
      (task.resolution ? ` · resolved by ${task.resolution.reviewer}: ${task.resolution.says}` : "") + " · s: next without resolving";
    $("review-answers").replaceChildren(...task.answers.map((a) =>
      el("li", {}, el("strong", {}, a.annotator + ": "), a.says, a.comment ? ` (comment: ${a.comment})` : "")));
  }
  $("task-kind").textContent = { rate: "Rate the response", compare: "Which response is better?", rank: "Rank the responses", edit: "Improve the response", thumbs: "Is the response good?", arena: "Which answer would you rather get?" }[task.kind];
  renderPrompt(task);
  renderClip(task);
  $("btn-submit").textContent = task.kind === "edit" ? "Submit (Ctrl+Enter)" : "Submit (Enter)";
  ({ rate: renderRate, compare: renderCompare, rank: renderRank, edit: renderEdit, thumbs: renderThumbs, arena: renderArena })[task.kind](task, prev);
  setStatus("");
  show("view-task");
}

function renderRate(task, prev) {
  const labels = state.project.rating_labels;
  const buttons = [];
  for (let s = 1; s <= 7; s++) {
    buttons.push(el("button", { type: "button", "data-score": String(s), onclick: () => pickScore(s) }, `${s} · ${labels[s]}`));
  }
  $("task-body").replaceChildren(
    el("div", { class: "responses" }, el("div", { class: "response" }, el("h3", {}, "Response"), task.responses[0].text)),
    el("div", { class: "row scale" }, el("span", { class: "label" }, "Score"), ...buttons));
  $("keys").innerHTML = "<kbd>1</kbd>–<kbd>7</kbd> score · <kbd>Enter</kbd> submit · <kbd>s</kbd> skip · <kbd>u</kbd> back · <kbd>g</kbd> guidelines";
  if (prev) pickScore(prev.score);
}

// One key answers: y (or ↑) thumbs up, n (or ↓) thumbs down, and the answer is sent at once.
function renderThumbs(task, prev) {
  const thumb = (t, text) => el("button", { type: "button", "data-thumb": t, onclick: () => answerThumb(t) }, text);
  $("task-body").replaceChildren(
    el("div", { class: "responses" }, el("div", { class: "response" }, el("h3", {}, "Response"), task.responses[0].text)),
    el("div", { class: "row" }, thumb("up", "Good (y)"), thumb("down", "Not good (n)")));
  $("keys").innerHTML = "<kbd>y</kbd> or <kbd>↑</kbd> good · <kbd>n</kbd> or <kbd>↓</kbd> not good (each sends the answer) · <kbd>s</kbd> skip · <kbd>u</kbd> back · <kbd>g</kbd> guidelines";
  if (prev) pickThumb(prev.thumb);
}

function pickThumb(t) {
  state.answer.thumb = t;
  document.querySelectorAll("[data-thumb]").forEach((b) => b.classList.toggle("picked", b.dataset.thumb === t));
}

function answerThumb(t) {
  pickThumb(t);
  return submit();
}

function pickScore(s) {
  state.answer.score = s;
  document.querySelectorAll("[data-score]").forEach((b) => b.classList.toggle("picked", Number(b.dataset.score) === s));
}

function renderCompare(task, prev) {
  const [a, b] = task.responses;
  const choice = (c, text) => el("button", { type: "button", "data-choice": c, onclick: () => pickChoice(c) }, text);
  const strength = (s, i) => el("button", { type: "button", "data-strength": s, onclick: () => pickStrength(s) }, `${i} · ${s} better`);
  $("task-body").replaceChildren(
    el("div", { class: "responses" },
      el("div", { class: "response", id: "resp-a" }, el("h3", {}, "A"), a.text),
      el("div", { class: "response", id: "resp-b" }, el("h3", {}, "B"), b.text)),
    el("div", { class: "row" }, el("span", { class: "label" }, "Better"), choice("a", "A (a)"), choice("tie", "Tie (t)"), choice("b", "B (b)")),
    el("div", { class: "row", id: "strength-row" }, el("span", { class: "label" }, "How much"),
      ...state.project.strengths.map((s, i) => strength(s, i + 1))));
  $("keys").innerHTML = "<kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> choose · <kbd>1</kbd>–<kbd>3</kbd> slightly/clearly/much · <kbd>Enter</kbd> submit · <kbd>s</kbd> skip · <kbd>u</kbd> back";
  if (prev) {
    pickChoice(prev.choice);
    if (prev.strength) pickStrength(prev.strength);
  }
}

function pickChoice(c) {
  state.answer.choice = c;
  document.querySelectorAll("[data-choice]").forEach((b) => b.classList.toggle("picked", b.dataset.choice === c));
  $("resp-a").classList.toggle("picked", c === "a");
  $("resp-b").classList.toggle("picked", c === "b");
  $("strength-row").hidden = c === "tie";
}

// Two models' answers, blind: one key answers and sends (a: A better, b: B better, t: tie, x: both bad).
const ARENA_KEYS = { a: "a", b: "b", t: "tie", x: "both_bad" };

function renderArena(task, prev) {
  const [a, b] = task.responses;
  const choice = (c, text) => el("button", { type: "button", "data-arena": c, onclick: () => answerArena(c) }, text);
  $("task-body").replaceChildren(
    el("div", { class: "responses" },
      el("div", { class: "response", id: "resp-a" }, el("h3", {}, "A"), a.text),
      el("div", { class: "response", id: "resp-b" }, el("h3", {}, "B"), b.text)),
    el("div", { class: "row" }, choice("a", "A is better (a)"), choice("tie", "Tie (t)"), choice("b", "B is better (b)"),
      choice("both_bad", "Both are bad (x)")));
  $("keys").innerHTML = "<kbd>a</kbd> A better · <kbd>b</kbd> B better · <kbd>t</kbd> tie · <kbd>x</kbd> both bad (each sends the answer) · <kbd>s</kbd> skip · <kbd>u</kbd> back · <kbd>g</kbd> guidelines";
  if (prev) pickArena(prev.choice);
}

function pickArena(c) {
  state.answer.choice = c;
  document.querySelectorAll("[data-arena]").forEach((b) => b.classList.toggle("picked", b.dataset.arena === c));
  $("resp-a").classList.toggle("picked", c === "a");
  $("resp-b").classList.toggle("picked", c === "b");
}

function answerArena(c) {
  pickArena(c);
  return submit();
}

function pickStrength(s) {
  state.answer.strength = s;
  document.querySelectorAll("[data-strength]").forEach((b) => b.classList.toggle("picked", b.dataset.strength === s));
}

function renderRank(task, prev) {
  const k = task.responses.length;
  state.answer.places = {};  // response id → place (1 = best); equal places are a tie; none = unranked
  state.answer.none_acceptable = false;
  const cards = task.responses.map((r, i) => {
    const select = el("select", { "data-rank-id": String(r.id), "aria-label": `place of response ${i + 1}` },
      el("option", { value: "" }, "–"));
    for (let p = 1; p <= k; p++) select.append(el("option", { value: String(p) }, `#${p}`));
    select.addEventListener("change", () => setPlace(r.id, select.value ? Number(select.value) : null));
    return el("div", { class: "response", id: `rank-card-${r.id}` }, el("h3", {}, `Response ${i + 1}`, select), r.text);
  });
  const none = el("input", { type: "checkbox", id: "none-acceptable" });
  none.addEventListener("change", () => { state.answer.none_acceptable = none.checked; });
  $("task-body").replaceChildren(
    el("div", { class: "responses" }, ...cards),
    el("div", { class: "row" }, el("button", { type: "button", onclick: clearPlaces }, "Clear (0)"),
      el("label", {}, none, " None is acceptable (n)")));
  $("keys").innerHTML = `<kbd>1</kbd>–<kbd>${k}</kbd> give that response the next place · <kbd>Shift</kbd>+digit tie it with the last place · <kbd>0</kbd> clear · <kbd>n</kbd> none acceptable · unranked responses are left out (partial ranking) · <kbd>Enter</kbd> submit`;
  if (prev) {
    prev.ranking.forEach((group, p) => group.forEach((id) => setPlace(id, p + 1)));
    none.checked = state.answer.none_acceptable = prev.none_acceptable;
  }
}

function setPlace(id, place) {
  if (place === null) delete state.answer.places[id]; else state.answer.places[id] = place;
  for (const s of document.querySelectorAll("[data-rank-id]")) {
    const p = state.answer.places[s.dataset.rankId];
    s.value = p ? String(p) : "";
    $(`rank-card-${s.dataset.rankId}`).classList.toggle("picked", Boolean(p));
  }
}

function clearPlaces() {
  for (const id of Object.keys(state.answer.places)) setPlace(Number(id), null);
}

function rankByKey(index, tie) {
  const r = state.task.responses[index];
  if (!r) return;
  const used = Object.values(state.answer.places);
  const last = used.length ? Math.max(...used) : 0;
  setPlace(r.id, tie && last ? last : last + 1);
}

function rankingFromPlaces() {
  const byPlace = {};
  for (const [id, p] of Object.entries(state.answer.places)) (byPlace[p] = byPlace[p] || []).push(Number(id));
  return Object.keys(byPlace).map(Number).sort((x, y) => x - y).map((p) => byPlace[p]);
}

function renderEdit(task, prev) {
  const area = el("textarea", { id: "edit-text", spellcheck: "true" });
  area.value = prev ? prev.edited : task.responses[0].text;
  $("task-body").replaceChildren(
    el("div", { class: "response original" }, el("h3", {}, "The model's response"), task.responses[0].text),
    el("h3", { class: "yours" }, "Your version"), area,
    el("div", { class: "row" }, el("button", { type: "button", onclick: () => { area.value = task.responses[0].text; } }, "Reset to the model's response")));
  $("keys").innerHTML = "<kbd>Ctrl</kbd>+<kbd>Enter</kbd> submit · <kbd>Esc</kbd> leave the text box · then <kbd>s</kbd> skip · <kbd>u</kbd> back";
  area.focus();
}

// --- submitting --------------------------------------------------------------------------------

function buildBody() {
  const t = state.task, a = state.answer, comment = $("comment").value;
  if (t.kind === "rate") {
    if (!a.score) throw new Error("Pick a score from 1 to 7.");
    return { score: a.score, comment };
  }
  if (t.kind === "compare") {
    if (!a.choice) throw new Error("Pick A, B or tie.");
    if (a.choice !== "tie" && !a.strength) throw new Error("Say how much better: slightly, clearly or much.");
    return { choice: a.choice, strength: a.choice === "tie" ? null : a.strength, comment };
  }
  if (t.kind === "arena") {
    if (!a.choice) throw new Error("A better (a), B better (b), tie (t) or both bad (x).");
    return { choice: a.choice, comment };
  }
  if (t.kind === "thumbs") {
    if (!a.thumb) throw new Error("Thumbs up (y) or down (n).");
    return { thumb: a.thumb, comment };
  }
  if (t.kind === "rank") {
    const ranking = rankingFromPlaces();
    if (ranking.flat().length < 2 && !a.none_acceptable) throw new Error("Rank at least two responses, or tick 'none is acceptable'.");
    return { ranking, none_acceptable: a.none_acceptable, comment };
  }
  return { edited: $("edit-text").value, comment };
}

async function submit() {
  if (!state.task) return;
  let body;
  try { body = buildBody(); } catch (e) { return setStatus(e.message, true); }
  // The same submission id is reused for retries of this answer, so the server stores it once.
  if (!state.pending || JSON.stringify(state.pending.body) !== JSON.stringify(body)) {
    state.pending = { body, submission_id: newSubmissionId() };
  }
  const payload = { ...body, submission_id: state.pending.submission_id };
  setStatus("Saving…");
  const path = state.review ? `/api/review/tasks/${state.task.task_id}` : `/api/assignments/${state.task.assignment_id}/answer`;
  for (let attempt = 0; ; attempt++) {
    try {
      await api("POST", path, payload);
      break;
    } catch (e) {
      if (e.status && e.status < 500) return setStatus(e.message, true);
      if (attempt >= 4) return setStatus("Could not save (network). Press Enter to retry.", true);
      setStatus(`Saving… (retry ${attempt + 1})`);
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
  state.pending = null;
  if (state.review) {
    state.review.index += 1;
    showReview();
    return setStatus("Resolved.");
  }
  await nextTask();
  setStatus("Saved.");
}

async function skip() {
  if (!state.task || state.back) return;
  if (state.review) {
    state.review.index += 1;
    return showReview();
  }
  await api("POST", `/api/assignments/${state.task.assignment_id}/skip`);
  await nextTask();
  setStatus("Skipped.");
}

// --- keys --------------------------------------------------------------------------------------

document.addEventListener("keydown", (ev) => {
  if ($("view-task").hidden && $("view-done").hidden) return;
  const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName);
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); return submit(); }
  if (typing) {
    if (ev.key === "Escape") document.activeElement.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const kind = state.task && !$("view-task").hidden ? state.task.kind : null;
  const digit = /^Digit([0-9])$/.exec(ev.code);
  const n = digit ? Number(digit[1]) : null;
  let handled = true;
  if (ev.key === "Enter" && kind) submit();
  else if (ev.key === "Escape" && state.back) nextTask();
  else if (ev.key === "s" && kind) skip();
  else if (ev.key === "u") goBack();
  else if (ev.key === "g") toggleGuidelines();
  else if (ev.key === "r" && state.me && state.me.reviewer) toggleReview();
  else if (kind === "rate" && n >= 1 && n <= 7) pickScore(n);
  else if (kind === "thumbs" && (ev.key === "y" || ev.key === "ArrowUp")) answerThumb("up");
  else if (kind === "thumbs" && (ev.key === "n" || ev.key === "ArrowDown")) answerThumb("down");
  else if (kind === "arena" && Object.hasOwn(ARENA_KEYS, ev.key)) answerArena(ARENA_KEYS[ev.key]);
  else if (kind === "compare" && ["a", "b", "t"].includes(ev.key)) pickChoice(ev.key === "t" ? "tie" : ev.key);
  else if (kind === "compare" && n >= 1 && n <= 3) pickStrength(state.project.strengths[n - 1]);
  else if (kind === "rank" && n === 0) clearPlaces();
  else if (kind === "rank" && n >= 1) rankByKey(n - 1, ev.shiftKey);
  else if (kind === "rank" && ev.key === "n") { const c = $("none-acceptable"); c.checked = !c.checked; state.answer.none_acceptable = c.checked; }
  else handled = false;
  if (handled) ev.preventDefault();
});

$("btn-submit").addEventListener("click", submit);
$("btn-skip").addEventListener("click", skip);
$("btn-back").addEventListener("click", goBack);
$("btn-review").addEventListener("click", toggleReview);
$("btn-guidelines").addEventListener("click", toggleGuidelines);
$("btn-logout").addEventListener("click", () => { localStorage.removeItem("rlhfkit.token"); location.hash = ""; location.reload(); });
$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  localStorage.setItem("rlhfkit.token", state.token);
  start();
});

// A "#token=..." link opened in a tab where the page is already open changes only the fragment, which reloads
// nothing: log in as the link's annotator.
window.addEventListener("hashchange", () => {
  if (!new URLSearchParams(location.hash.slice(1)).get("token")) return;
  Object.assign(state, { project: null, task: null, answer: {}, back: false, pending: null, me: null, review: null });
  $("project-name").textContent = "";
  $("guidelines").hidden = true;
  start().catch((e) => setStatus(e.message, true));
});

start().catch((e) => setStatus(e.message, true));
