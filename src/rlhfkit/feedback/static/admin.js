// The admin page: projects from a candidates file, annotators and their links, progress, exports.
// Plain JavaScript over the admin API (/api/admin/...); the admin token stays in this tab (sessionStorage).
"use strict";

let token = sessionStorage.getItem("rlhfkit.admin") || "";

async function api(method, path, body, raw = false) {
  const res = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return raw ? res.text() : res.json();
}

function say(text, bad = false) {
  $("admin-status").textContent = text;
  $("admin-status").className = bad ? "error" : "";
}

const fmt = (x) => (x === null || x === undefined ? "–" : typeof x === "number" && !Number.isInteger(x) ? x.toFixed(2) : String(x));

async function start() {
  if (!token) return;
  try {
    await refresh();
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      sessionStorage.removeItem("rlhfkit.admin");
      token = "";
      $("admin-login-error").textContent = e.message;
      $("admin-login").hidden = false;
      $("admin-main").hidden = true;
      return;
    }
    throw e;
  }
  $("admin-login").hidden = true;
  $("admin-main").hidden = false;
  $("btn-admin-logout").hidden = false;
}

async function refresh() {
  const [projects, annotators] = await Promise.all([api("GET", "/api/admin/projects"), api("GET", "/api/admin/annotators")]);
  $("projects").tBodies[0].replaceChildren(...projects.map((p) => el("tr", { "data-project": p.name },
    el("td", {}, p.name), el("td", {}, fmt(p.tasks)), el("td", {}, fmt(p.gold_tasks)), el("td", {}, fmt(p.answered)),
    el("td", {}, fmt(p.answers)),
    el("td", {}, el("button", { type: "button", class: "progress", onclick: () => showProgress(p.name) }, "Progress"), " ",
      el("button", { type: "button", class: "export", onclick: () => download(p.name) }, "Download export")))));
  $("annotators").tBodies[0].replaceChildren(...annotators.map((a) => el("tr", {},
    el("td", {}, a.name), el("td", {}, a.disabled ? "yes" : "no"), el("td", {}, a.reviewer ? "yes" : "no"))));
}

async function showProgress(name) {
  const st = await api("GET", `/api/admin/projects/${encodeURIComponent(name)}/stats`);
  $("progress-title").textContent = `Progress: ${name}`;
  $("progress-annotators").tBodies[0].replaceChildren(...st.annotators.map((a) => el("tr", {},
    ...[a.annotator, a.done, a.skipped, a.held, a.gold_accuracy, a.agreement, a.median_seconds, a.fast_answers]
      .map((v) => el("td", {}, fmt(v))))));
  $("progress-view").hidden = false;
}

async function download(name) {
  const text = await api("GET", `/api/admin/projects/${encodeURIComponent(name)}/export`, undefined, true);
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" })), download: `${name}.jsonl` });
  document.body.append(a);
  a.click();
  a.remove();
  say(`Exported ${text.split("\n").filter((l) => l.trim()).length} records of ${name}.`);
}

$("import-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("import-file").files[0];
  const kinds = [...document.querySelectorAll("#import-kinds input:checked")].map((c) => c.value);
  const name = $("import-name").value.trim();
  $("import-status").className = "";
  $("import-status").textContent = "Importing…";
  try {
    const body = { candidates: await file.text(), filename: file.name, kinds,
                   annotators_per_task: Number($("import-per-task").value) };
    if ($("import-guidelines").value.trim()) body.guidelines = $("import-guidelines").value;
    const r = await api("POST", `/api/admin/projects/${encodeURIComponent(name)}/import`, body);
    $("import-status").textContent = `${r.project}: ${r.prompts} prompts, ${r.tasks} tasks added` +
      (r.skipped_prompts ? ` (${r.skipped_prompts} prompts were there already)` : "");
    await refresh();
  } catch (e) {
    $("import-status").className = "error";
    $("import-status").textContent = e.message;
  }
});

$("annotator-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", "/api/admin/annotators", { name: $("annotator-name").value.trim() });
    const link = `${location.origin}/#token=${encodeURIComponent(r.token)}`;
    $("links").append(el("li", { "data-annotator": r.name }, el("strong", {}, r.name + ": "), el("code", { class: "link" }, link)));
    $("annotator-name").value = "";
    say(`Added ${r.name}; their link is below (shown once).`);
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
});

$("admin-login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("admin-token").value.trim();
  sessionStorage.setItem("rlhfkit.admin", token);
  start().catch((e) => say(e.message, true));
});
$("btn-admin-logout").addEventListener("click", () => { sessionStorage.removeItem("rlhfkit.admin"); location.reload(); });

start().catch((e) => say(e.message, true));
