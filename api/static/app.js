// recdistill dashboard: plain JS over the REST API (no build step, no library). The API key is kept in
// sessionStorage (this tab only) and sent as X-API-Key on every call.
"use strict";

const FINAL = ["succeeded", "failed", "cancelled"];
const state = { datasets: [], jobs: [], models: [], selectedJob: null, pollTimer: null };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmt = {
  num: (x, d = 4) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(d)),
  int: (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en")),
  bytes: (b) => (b < 1024 ? `${b} B` : b < 1 << 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / (1 << 20)).toFixed(1)} MiB`),
  date: (s) => (s ? new Date(s).toLocaleString() : "—"),
  id: (s) => (s ? s.slice(0, 8) : "—"),
};

function showError(err) {
  const box = $("#error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = err.message || String(err);
}

function key() { return sessionStorage.getItem("recdistill-key") || ""; }

class ApiError extends Error {
  constructor(status, body) {
    super(`${status} ${body && body.code ? body.code + ": " : ""}${body && body.detail ? body.detail : "request failed"}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (key()) headers["X-API-Key"] = key();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text.slice(0, 200) }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ---- key ----------------------------------------------------------------------------------------------
function renderKeyState() {
  $("#key-state").textContent = key() ? "key set for this tab" : "no key";
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("recdistill-key", $("#key").value);
  $("#key").value = "";
  renderKeyState();
  showError(null);
  refreshTab();
});

// ---- tabs ---------------------------------------------------------------------------------------------
let currentTab = "datasets";
for (const btn of document.querySelectorAll("#tabs button")) {
  btn.addEventListener("click", () => selectTab(btn.dataset.tab));
}

function selectTab(name) {
  currentTab = name;
  for (const btn of document.querySelectorAll("#tabs button")) btn.classList.toggle("active", btn.dataset.tab === name);
  for (const sec of document.querySelectorAll("main > section")) sec.hidden = sec.id !== `tab-${name}`;
  showError(null);
  refreshTab();
}

async function refreshTab() {
  try {
    if (currentTab === "datasets") await loadDatasets();
    else if (currentTab === "jobs") { await loadDatasets(); await loadJobs(); }
    else if (currentTab === "models") await loadModels();
  } catch (err) { showError(err); }
}

// ---- data sets ----------------------------------------------------------------------------------------
async function loadDatasets() {
  state.datasets = (await api("/datasets?limit=100")).data;
  const body = $("#datasets-table tbody");
  body.replaceChildren(...state.datasets.map((d) => el("tr", { "data-id": d.id },
    el("td", {}, d.name), el("td", { class: "mono" }, fmt.id(d.id)), el("td", { class: "n" }, fmt.int(d.n_users)),
    el("td", { class: "n" }, fmt.int(d.n_items)), el("td", { class: "n" }, fmt.int(d.n_interactions)),
    el("td", { class: "n" }, fmt.num(d.density, 4)), el("td", { class: "n" }, fmt.bytes(d.size_bytes)),
    el("td", {}, fmt.date(d.created_at)))));
  const select = $("#job-dataset");
  const keep = select.value;
  select.replaceChildren(...state.datasets.map((d) => el("option", { value: d.id }, `${d.name} (${fmt.id(d.id)})`)));
  if (keep) select.value = keep;
}

$("#upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  if ($("#upload-name").value) form.append("name", $("#upload-name").value);
  form.append("user_col", $("#upload-user-col").value || "user_id");
  form.append("item_col", $("#upload-item-col").value || "item_id");
  const bar = $("#upload-progress");
  const status = $("#upload-state");
  bar.hidden = false; bar.value = 0; status.textContent = "uploading…";
  // XHR, not fetch: fetch reports no upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/datasets");
  if (key()) xhr.setRequestHeader("X-API-Key", key());
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) { bar.value = e.loaded / e.total; status.textContent = `${Math.round(100 * e.loaded / e.total)} %`; }
  });
  xhr.upload.addEventListener("load", () => { status.textContent = "validating…"; });
  xhr.addEventListener("load", async () => {
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch { data = { detail: xhr.responseText.slice(0, 200) }; }
    if (xhr.status >= 400) { status.textContent = "failed"; showError(new ApiError(xhr.status, data)); return; }
    bar.value = 1;
    status.textContent = `uploaded ${data.name}: ${fmt.int(data.n_users)} users, ${fmt.int(data.n_items)} items, `
      + `${fmt.int(data.n_interactions)} interactions, density ${fmt.num(data.density, 4)}`;
    showError(null);
    await loadDatasets().catch(showError);
  });
  xhr.addEventListener("error", () => { status.textContent = "failed"; showError(new Error("upload failed: network error")); });
  xhr.send(form);
});

// ---- jobs ---------------------------------------------------------------------------------------------
$("#job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const epochs = Number($("#job-epochs").value);
    let extra = {};
    if ($("#job-hp").value.trim()) {
      try { extra = JSON.parse($("#job-hp").value); } catch (e) { throw new Error(`hyper-parameters: not JSON: ${e.message}`); }
    }
    const job = await api("/jobs", { method: "POST", body: {
      dataset_id: $("#job-dataset").value,
      method: $("#job-method").value,
      teacher: teacherSpec($("#job-teacher-model").value, Number($("#job-teacher-dim").value)),
      student: { model: $("#job-student-model").value, dim: Number($("#job-student-dim").value) },
      hyperparameters: { epochs, teacher_epochs: epochs, ...extra },
    } });
    state.selectedJob = job.id;
    showError(null);
    await loadJobs();
  } catch (err) { showError(err); }
});

// EASE is solved in closed form and sized by the catalogue: its number is the L2 weight, not a dim.
function teacherSpec(model, value) {
  return model === "ease" ? { model, l2: value } : { model, dim: value };
}
$("#job-teacher-model").addEventListener("change", () => {
  const ease = $("#job-teacher-model").value === "ease";
  $("#job-teacher-size").textContent = ease ? "L2" : "dim";
  $("#job-teacher-dim").value = ease ? 1000 : 32;
});

async function loadJobs() {
  state.jobs = (await api("/jobs?limit=50")).data;
  const names = Object.fromEntries(state.datasets.map((d) => [d.id, d.name]));
  const body = $("#jobs-table tbody");
  body.replaceChildren(...state.jobs.map((j) => {
    const cancel = FINAL.includes(j.status) ? "" : el("button", { class: "cancel", onclick: (e) => { e.stopPropagation(); cancelJob(j.id); } },
      j.cancel_requested ? "cancelling…" : "Cancel");
    return el("tr", { "data-id": j.id, "data-status": j.status, class: j.id === state.selectedJob ? "selected" : null,
      onclick: () => { state.selectedJob = j.id; loadJobs().catch(showError); } },
      el("td", { class: "mono" }, fmt.id(j.id)), el("td", {}, names[j.dataset_id] || fmt.id(j.dataset_id)),
      el("td", {}, j.method), el("td", { class: `status ${j.status}` }, j.status), el("td", {}, j.phase || "—"),
      el("td", {}, el("progress", { max: "1", value: String(j.progress) }), ` ${Math.round(100 * j.progress)} %`),
      el("td", { class: "n" }, `${j.epoch}/${j.max_epochs}`), el("td", {}, fmt.date(j.created_at)), el("td", {}, cancel));
  }));
  if (!state.selectedJob && state.jobs.length) state.selectedJob = state.jobs[0].id;
  const job = state.jobs.find((j) => j.id === state.selectedJob);
  renderJobDetail(job);
  schedulePoll();
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  const live = state.jobs.some((j) => !FINAL.includes(j.status));
  $("#jobs-poll").textContent = live ? "(live: refreshed every 2 s)" : "";
  if (live && currentTab === "jobs") state.pollTimer = setTimeout(() => loadJobs().catch(showError), 2000);
}

async function cancelJob(id) {
  try { await api(`/jobs/${id}/cancel`, { method: "POST" }); await loadJobs(); } catch (err) { showError(err); }
}

function renderJobDetail(job) {
  const box = $("#job-detail");
  if (!job) { box.replaceChildren(); return; }
  const hist = job.history || [];
  const series = (phase, pick) => hist.filter((h) => h.phase === phase).map((h) => [h.epoch, pick(h)])
    .filter(([, y]) => typeof y === "number" && Number.isFinite(y));
  const lossOf = (h) => (h.losses ? (h.losses.total ?? h.losses.base) : null);
  const ndcgOf = (h) => (h.valid ? h.valid["ndcg@10"] : null);
  const header = el("h3", {}, `Job ${fmt.id(job.id)}: ${job.status}`, job.phase ? `, phase ${job.phase}` : "",
    job.error ? el("span", { class: "err" }, ` — ${job.error}`) : "");
  const links = job.student_model_id ? el("p", {}, "Student model ", el("span", { class: "mono" }, fmt.id(job.student_model_id)),
    " — see the Models tab.") : "";
  box.replaceChildren(header, links, el("div", { class: "charts" },
    lineChart("Training loss per epoch", [
      { name: "teacher (base)", cls: "teacher", points: series("teacher", lossOf) },
      { name: `student (${job.method === "none" ? "base" : "total"})`, cls: "student", points: series("distill", lossOf) },
    ], "loss-chart"),
    lineChart("Validation NDCG@10 per epoch", [
      { name: "teacher", cls: "teacher", points: series("teacher", ndcgOf) },
      { name: "student", cls: "student", points: series("distill", ndcgOf) },
    ], "ndcg-chart")));
}

// An SVG line chart of series [{name, cls, points: [[x, y], ...]}] with axes, ticks and a legend.
function lineChart(title, series, id) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 460, H = 260, L = 58, R = 12, T = 44, B = 40;
  const svg = document.createElementNS(NS, "svg");
  const s = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", id);
  s("text", { x: L, y: 16, class: "title" }, title);
  const pts = series.flatMap((x) => x.points);
  if (!pts.length) {
    s("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no epochs recorded yet");
    return svg;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(1, ...xs), x1 = Math.max(x0 + 1, ...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5 * (Math.abs(y0) || 1); y1 += 0.5 * (Math.abs(y1) || 1); }
  const pad = 0.05 * (y1 - y0); y0 -= pad; y1 += pad;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (i / 4) * (y1 - y0);
    s("line", { x1: L, y1: py(y), x2: W - R, y2: py(y), class: "grid" });
    s("text", { x: L - 6, y: py(y) + 4, "text-anchor": "end", class: "tick" }, Math.abs(y) >= 100 ? y.toFixed(0) : y.toPrecision(3));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 8));
  for (let x = x0; x <= x1; x += step) s("text", { x: px(x), y: H - B + 16, "text-anchor": "middle", class: "tick" }, x);
  s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "tick" }, "epoch");
  series.forEach((ser, i) => {
    if (!ser.points.length) return;
    const d = ser.points.map(([x, y], j) => `${j ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    s("path", { d, class: `line ${ser.cls}`, "data-series": ser.cls });
    for (const [x, y] of ser.points) s("circle", { cx: px(x), cy: py(y), r: 2.5, class: `dot ${ser.cls}` });
    // The legend sits in one row above the plot, where it can never hide a line.
    s("rect", { x: L + 150 * i, y: T - 16, width: 12, height: 3, class: `swatch ${ser.cls}` });
    s("text", { x: L + 150 * i + 16, y: T - 11, class: "legend" }, ser.name);
  });
  return svg;
}

// ---- models -------------------------------------------------------------------------------------------
const METRICS = ["ndcg@10", "recall@10", "ndcg@20", "recall@20"];

async function loadModels() {
  const [models, jobs] = await Promise.all([api("/models?limit=100"), api("/jobs?limit=100")]);
  state.models = models.data;
  const byId = Object.fromEntries(state.models.map((m) => [m.id, m]));
  const jobsById = Object.fromEntries(jobs.data.map((j) => [j.id, j]));
  const students = state.models.filter((m) => m.role === "student");
  const active = state.models.find((m) => m.active);
  const previous = sessionStorage.getItem("recdistill-previous");
  const bar = el("p", { id: "active-model" }, active ? ["Serving ", el("b", { class: "mono" }, fmt.id(active.id)),
    ` (${active.model_name}, dim ${active.dim}, ${active.method})`] : "No model is active: activate a student below.");
  if (previous && byId[previous] && (!active || active.id !== previous)) {
    bar.append(" ", el("button", { id: "rollback", onclick: () => activate(previous) },
      `Roll back to ${fmt.id(previous)}`));
  }
  $("#activation-bar").replaceChildren(bar);
  if (!students.length) { $("#models-list").replaceChildren(el("p", {}, "No student models yet: run a job.")); return; }
  const reports = await Promise.all(students.map((m) => api(`/models/${m.id}/report`).catch(() => null)));
  $("#models-list").replaceChildren(...students.map((m, i) =>
    modelCard(m, byId[m.teacher_model_id], baselineFor(m, students, jobsById), reports[i], active)));
}

// A student trained without distillation (method "none") of the same size on the same data set and split:
// the "alone" of gap closed = (student − alone) / (teacher − alone). Null when no such run exists.
function baselineFor(m, students, jobsById) {
  const job = jobsById[m.job_id];
  if (!job) return null;
  return students.find((o) => {
    const oj = jobsById[o.job_id];
    return o.method === "none" && o.id !== m.id && o.dataset_id === m.dataset_id && o.model_name === m.model_name
      && o.dim === m.dim && oj && oj.seed === job.seed && JSON.stringify(oj.split) === JSON.stringify(job.split);
  }) || null;
}

function modelCard(m, teacher, alone, report, active) {
  const tm = m.teacher_metrics || (teacher ? teacher.metrics : null) || {};
  const rows = METRICS.map((k) => el("tr", {}, el("th", {}, k), el("td", { class: "n" }, fmt.num(m.metrics[k])),
    el("td", { class: "n" }, fmt.num(tm[k])), el("td", { class: "n" }, alone ? fmt.num(alone.metrics[k]) : "—")));
  rows.push(el("tr", {}, el("th", {}, "parameters"), el("td", { class: "n" }, fmt.int(m.n_params)),
    el("td", { class: "n" }, teacher ? fmt.int(teacher.n_params) : "—"), el("td", { class: "n" }, alone ? fmt.int(alone.n_params) : "—")));
  rows.push(el("tr", {}, el("th", {}, "bytes on disk"), el("td", { class: "n" }, fmt.bytes(m.size_bytes)),
    el("td", { class: "n" }, teacher ? fmt.bytes(teacher.size_bytes) : "—"), el("td", { class: "n" }, alone ? fmt.bytes(alone.size_bytes) : "—")));
  if (report && report.student && report.teacher) {
    const lat = (r) => (r && r.latency ? `${fmt.num(r.latency.p50_ms, 3)} / ${fmt.num(r.latency.p99_ms, 3)} ms` +
      (r.latency.servable ? "" : " (full scores)") : "—");
    rows.push(el("tr", {}, el("th", {}, "recommend p50 / p99"), el("td", { class: "n" }, lat(report.student)),
      el("td", { class: "n" }, lat(report.teacher)), el("td", {}, "")));
  }
  const smaller = teacher && m.size_bytes ? teacher.size_bytes / m.size_bytes : m.compression_ratio;
  const s10 = m.metrics["ndcg@10"], t10 = tm["ndcg@10"];
  const facts = [el("li", { class: "smaller" }, smaller ? `${smaller.toFixed(1)}× smaller than its teacher on disk` : "teacher size unknown")];
  if (typeof s10 === "number" && typeof t10 === "number" && t10 > 0) {
    facts.push(el("li", {}, `NDCG@10 at ${(100 * s10 / t10).toFixed(1)} % of the teacher's`));
  }
  if (alone && typeof s10 === "number" && typeof t10 === "number") {
    const a10 = alone.metrics["ndcg@10"];
    facts.push(el("li", { class: "gap" }, t10 > a10
      ? `gap closed ${(100 * (s10 - a10) / (t10 - a10)).toFixed(0)} % (NDCG@10, vs the student trained alone ${fmt.id(alone.id)}; one seed each)`
      : `gap closed: undefined, the student trained alone (${fmt.id(alone.id)}) is not below the teacher`));
  } else if (m.method !== "none") {
    facts.push(el("li", { class: "gap" }, "gap closed: needs a student of the same size trained alone (method none, same data set, seed and split); none found"));
  }
  const isActive = active && active.id === m.id;
  return el("div", { class: `card${isActive ? " active" : ""}`, "data-id": m.id },
    el("h3", {}, `${m.model_name} dim ${m.dim} · ${m.method}`, el("span", { class: "mono" }, ` ${fmt.id(m.id)}`),
      isActive ? el("span", { class: "badge" }, "active") : ""),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "test"), el("th", {}, "student"),
      el("th", {}, teacher ? `teacher (${teacher.model_name} dim ${teacher.dim})` : "teacher"), el("th", {}, "student alone"))),
    el("tbody", {}, rows)),
    el("ul", {}, facts),
    isActive ? "" : el("button", { class: "activate", onclick: () => activate(m.id) }, "Activate"));
}

async function activate(id) {
  try {
    const res = await api(`/models/${id}/activate`, { method: "POST" });
    if (res.previous_model_id) sessionStorage.setItem("recdistill-previous", res.previous_model_id);
    else sessionStorage.removeItem("recdistill-previous");
    showError(null);
    await loadModels();
  } catch (err) { showError(err); }
}

// ---- try it -------------------------------------------------------------------------------------------
// Typing in either box picks its mode.
for (const [box, mode] of [["#try-user", "user"], ["#try-items", "items"]]) {
  $(box).addEventListener("focus", () => { document.querySelector(`input[name=who][value=${mode}]`).checked = true; });
}
$("#try-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const k = Number($("#try-k").value) || 10;
  const who = document.querySelector("input[name=who]:checked").value;
  const out = $("#try-result");
  try {
    let rec, seen;
    if (who === "user") {
      const user = $("#try-user").value.trim();
      if (!user) throw new Error("user: type a user id");
      rec = await api(`/recommend/${encodeURIComponent(user)}?k=${k}`);
      seen = rec.source === "personalized"
        ? await api(`/users/${encodeURIComponent(user)}/seen`).catch((e) => ({ error: e.message }))
        : { error: "not in the active model's training data" };
    } else {
      const items = $("#try-items").value.split(/[\s,]+/).filter(Boolean);
      if (!items.length) throw new Error("items: type one or more item ids");
      rec = await api("/recommend", { method: "POST", body: { items, k } });
      seen = { items, count: items.length, given: true };
    }
    showError(null);
    out.replaceChildren(renderRecommendation(rec, seen));
  } catch (err) {
    out.replaceChildren(el("p", { class: "err" }, err.message));
  }
});

function renderRecommendation(rec, seen) {
  const label = { personalized: "personalised", folded_in: "personalised (folded in)", popular: "fallback: popular items" }[rec.source] || rec.source;
  const list = el("table", { id: "rec-table" }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "item"), el("th", {}, "score"))),
    el("tbody", {}, rec.items.map((it, i) => el("tr", {}, el("td", { class: "n" }, rec.offset + i + 1),
      el("td", { class: "item" }, it.item), el("td", { class: "n" }, fmt.num(it.score))))));
  const seenBox = seen.error
    ? el("p", {}, `Seen items: ${seen.error}.`)
    : el("p", { id: "seen" }, `${seen.given ? "Given" : "Seen"} items (${seen.count}${seen.count > seen.items.length ? `, first ${seen.items.length}` : ""}): `,
      seen.items.join(", "));
  return el("div", {}, el("p", {}, el("span", { class: `badge ${rec.source}`, id: "rec-source" }, label),
    ` from model ${fmt.id(rec.model_id)}`), el("div", { class: "cols" }, list, seenBox));
}

renderKeyState();
refreshTab();
