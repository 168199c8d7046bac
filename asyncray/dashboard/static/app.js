// asyncray dashboard: each page polls the JSON API under /api/ and redraws its results.
// Plain JavaScript, no build step; controls are built once so typing is never interrupted.
"use strict";

const PAGE = document.body.dataset.page;
const POLL_MS = 1500;
const main = document.getElementById("main");
const statusEl = document.getElementById("status");

function esc(v) {
  return String(v == null ? "" : v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function short(id) { return id ? esc(String(id).slice(0, 8)) : ""; }
function bytes(n) {
  n = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function pct(n) { return (Number(n) || 0).toFixed(0) + "%"; }
function secs(s) { return s == null ? "" : s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s"; }
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
function state(s) { return `<span class="state ${esc(s)}">${esc(s)}</span>`; }
function bar(label, used, total, text) {
  const frac = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  return `<div class="bar"><div class="label"><span>${esc(label)}</span><span>${esc(text)}</span></div>` +
    `<div class="track"><div class="fill${frac > 0.85 ? " high" : ""}" style="width:${(frac * 100).toFixed(1)}%"></div></div></div>`;
}
function table(cols, rows, empty) {
  if (!rows.length) return `<div class="empty">${esc(empty || "nothing yet")}</div>`;
  const head = cols.map((c) => `<th class="${c.num ? "num" : ""}">${esc(c.label)}</th>`).join("");
  const body = rows.map((r) => "<tr>" + cols.map((c) => `<td class="${c.num ? "num" : ""}">${c.html(r)}</td>`).join("") + "</tr>").join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
async function api(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
function el(html) { const d = document.createElement("div"); d.innerHTML = html; return d; }

// ------------------------------------------------------------------ cluster
function clusterPage() {
  const out = el("");
  main.appendChild(out);
  return async () => {
    const c = await api("/api/cluster");
    const nodes = c.nodes.map((n) => {
      const cpuTotal = n.resources.CPU || 0, cpuUsed = cpuTotal - (n.available.CPU || 0);
      const h = n.host || {};
      return `<div class="card"><div class="title">node ${short(n.node_id)} ${state(n.state)}</div>
        <div class="kv">${esc(n.hostname)} &middot; ${esc(n.address)} &middot; ${n.num_workers} workers</div>
        ${bar("CPU slots in use", cpuUsed, cpuTotal, `${cpuUsed} / ${cpuTotal}`)}
        ${h.num_cpus ? bar("Host CPU", h.cpu_percent, 100, pct(h.cpu_percent)) : ""}
        ${h.mem_total ? bar("Host memory", h.mem_used, h.mem_total, `${bytes(h.mem_used)} / ${bytes(h.mem_total)}`) : ""}
        ${bar("Object store", n.object_store_used, n.object_store_total, `${bytes(n.object_store_used)} / ${bytes(n.object_store_total)}`)}
      </div>`;
    }).join("");
    const counts = Object.entries(c.tasks).map(([k, v]) => `<span class="pill">${state(k)} ${v}</span>`).join("");
    out.innerHTML = `<h2>Nodes</h2><div class="cards">${nodes}</div>
      <h2>Tasks</h2><div class="pills">${counts || '<span class="empty">no tasks yet</span>'}</div>
      <h2>Workers</h2>` + table([
        {label: "Node", html: (w) => `<span class="mono">${short(w.node_id)}</span>`},
        {label: "Worker", html: (w) => `<span class="mono">${esc(w.worker_id)}</span>`},
        {label: "PID", num: true, html: (w) => esc(w.pid)},
        {label: "State", html: (w) => state(w.state)},
        {label: "Running now", html: (w) => esc(w.current)},
        {label: "CPU", num: true, html: (w) => pct(w.cpu_percent)},
        {label: "Memory (RSS)", num: true, html: (w) => bytes(w.rss)},
        {label: "Logs", html: (w) => `<a href="/logs#${esc(w.pid)}">logs</a>`},
      ], c.workers, "no workers") + `<div class="kv">head event-loop lag: ${secs(c.loop_lag_s)}</div>`;
  };
}

// ------------------------------------------------------------------ tasks
function tasksPage() {
  const summary = el("");
  const controls = el(`<div class="controls">
    <label>State <select id="f-state"><option value="">any</option><option>PENDING</option><option>RUNNING</option>
      <option>FINISHED</option><option>FAILED</option></select></label>
    <label>Function <input id="f-name" placeholder="name contains&hellip;"></label></div>`);
  const list = el("");
  main.append(summary, controls, list);
  return async () => {
    const s = await api("/api/tasks/summary");
    const st = document.getElementById("f-state").value;
    const tasks = await api("/api/tasks?limit=500" + (st ? "&state=" + encodeURIComponent(st) : ""));
    const needle = document.getElementById("f-name").value.toLowerCase();
    const shown = needle ? tasks.filter((t) => String(t.name).toLowerCase().includes(needle)) : tasks;
    const states = Object.entries(s.counts).map(([k, v]) => `<span class="pill">${state(k)} ${v}</span>`).join("");
    const byName = Object.entries(s.by_name).map(([name, per]) => ({name, per}));
    summary.innerHTML = `<h2>By state</h2><div class="pills">${states || '<span class="empty">no tasks yet</span>'}</div>
      <h2>By function</h2>` + table([
        {label: "Function", html: (r) => `<span class="mono">${esc(r.name)}</span>`},
        {label: "Counts", html: (r) => Object.entries(r.per).map(([k, v]) => `${state(k)} ${v}`).join(" &middot; ")},
      ], byName);
    list.innerHTML = `<h2>Tasks (${shown.length})</h2>` + table([
      {label: "Task", html: (t) => `<span class="mono">${esc(t.task_id)}</span>`},
      {label: "Function", html: (t) => `<span class="mono">${esc(t.name)}</span>`},
      {label: "State", html: (t) => state(t.state)},
      {label: "Worker", num: true, html: (t) => esc(t.worker_pid || "")},
      {label: "Submitted", html: (t) => when(t.submitted_at)},
      {label: "Duration", num: true, html: (t) => t.ended_at && t.started_at ? secs(t.ended_at - t.started_at) : ""},
      {label: "Error", html: (t) => t.error ? `<details><summary>${esc(String(t.error).split("\n").filter(Boolean).pop())}</summary><pre class="mono">${esc(t.error)}</pre></details>` : ""},
    ], shown, "no tasks match");
  };
}

// ------------------------------------------------------------------ actors
function actorsPage() {
  const out = el("");
  main.appendChild(out);
  return async () => {
    const actors = await api("/api/actors");
    const s = await api("/api/actors/summary");
    const pills = Object.entries(s.counts).map(([k, v]) => `<span class="pill">${state(k)} ${v}</span>`).join("");
    out.innerHTML = `<div class="pills">${pills || ""}</div><h2>Actors (${actors.length})</h2>` + table([
      {label: "Actor", html: (a) => `<span class="mono">${esc(a.actor_id)}</span>`},
      {label: "Class", html: (a) => esc(a.class_name)},
      {label: "Name", html: (a) => esc(a.name)},
      {label: "State", html: (a) => state(a.state)},
      {label: "Node", html: (a) => `<span class="mono">${short(a.node_id)}</span>`},
      {label: "PID", num: true, html: (a) => a.pid ? `<a href="/logs#${esc(a.pid)}">${esc(a.pid)}</a>` : ""},
      {label: "Restarts", num: true, html: (a) => esc(a.num_restarts)},
      {label: "Mailbox", num: true, html: (a) => a.mailbox == null ? "" : esc(a.mailbox)},
      {label: "Loop lag", num: true, html: (a) => a.loop_lag_ms == null ? "" : esc(a.loop_lag_ms.toFixed(1) + " ms")},
      {label: "Death cause", html: (a) => esc(a.death_cause)},
    ], actors, "no actors");
  };
}

// ------------------------------------------------------------------ objects
function objectsPage() {
  const out = el("");
  main.appendChild(out);
  return async () => {
    const s = await api("/api/objects/summary");
    const objs = await api("/api/objects?limit=1000");
    out.innerHTML = `<div class="pills"><span class="pill">${s.stored_objects} objects in shared memory</span>
      <span class="pill">${bytes(s.stored_bytes)}</span></div>
      <div class="grid2"><div><h2>Stored objects</h2>` + table([
        {label: "Object", html: (o) => `<span class="mono">${esc(o.object_id)}</span>`},
        {label: "Size", num: true, html: (o) => bytes(o.size)},
        {label: "Nodes", html: (o) => o.nodes.map((n) => `<span class="mono">${short(n)}</span>`).join(", ")},
        {label: "Where", html: (o) => o.spilled === null ? "?" : (o.spilled ? "spilled to disk" : "memory")},
        {label: "Owner", html: (o) => o.owner_pid === null ? "" : `${esc(o.owner_role)} pid ${esc(o.owner_pid)}`},
        {label: "Refs / borrowers", num: true, html: (o) => o.refs === null ? "" : `${esc(o.refs)} / ${esc(o.borrowers)}`},
      ], objs, "no objects in shared memory (small values travel inline)") + `</div><div><h2>Owners</h2>` + table([
        {label: "Process", html: (o) => `${esc(o.role)} pid ${esc(o.pid)}`},
        {label: "Objects owned", num: true, html: (o) => esc(o.objects)},
      ], s.owners, "no owner reports yet") + "</div></div>";
  };
}

// ------------------------------------------------------------------ logs
function logsPage() {
  const controls = el(`<div class="controls"><label>Worker <select id="l-worker"><option value="">choose&hellip;</option></select></label>
    <label>Search <input id="l-q" placeholder="text in line&hellip;"></label></div>`);
  const out = el('<div class="empty">choose a worker</div>');
  main.append(controls, out);
  const sel = document.getElementById("l-worker");
  let wanted = decodeURIComponent(location.hash.slice(1));
  return async () => {
    const files = (await api("/api/logs")).files;
    const current = sel.value || wanted;
    sel.innerHTML = '<option value="">choose&hellip;</option>' + files.map((f) => {
      const key = f.pid ? String(f.pid) : f.worker;
      const selected = key === current || f.worker === current ? " selected" : "";
      return `<option value="${esc(key)}"${selected}>${f.pid ? "pid " + esc(f.pid) : "(exited)"} &middot; ${esc(f.worker)} &middot; ${bytes(f.size)}</option>`;
    }).join("");
    if (!sel.value) return;
    wanted = "";
    const q = document.getElementById("l-q").value;
    const res = await api(`/api/logs?limit=2000&worker=${encodeURIComponent(sel.value)}&q=${encodeURIComponent(q)}`);
    out.innerHTML = `<h2>Worker ${esc(res.worker)} ${res.pid ? "(pid " + esc(res.pid) + ")" : ""}: ${res.lines.length} lines</h2>` +
      `<pre class="log">${esc(res.lines.join("\n")) || "(empty)"}</pre>`;
  };
}

// ------------------------------------------------------------------ timeline
function timelinePage() {
  const controls = el(`<div class="controls"><a href="/api/timeline?download=1" download="asyncray-timeline.json">
    <button>Download Chrome trace</button></a><span class="kv">open it in chrome://tracing or ui.perfetto.dev</span></div>`);
  const wrap = el('<canvas id="tl"></canvas><div id="tip"></div>');
  wrap.id = "timeline-wrap";
  const info = el("");
  main.append(controls, wrap, info);
  const canvas = document.getElementById("tl"), tip = document.getElementById("tip");
  let boxes = [];
  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const hit = boxes.find((b) => x >= b.x && x <= b.x + b.w && y >= b.y && y <= b.y + b.h);
    tip.style.display = hit ? "block" : "none";
    if (hit) { tip.textContent = hit.text; tip.style.left = (x + 12) + "px"; tip.style.top = (y + 12) + "px"; }
  });
  const colour = (name) => { let h = 0; for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360; return `hsl(${h},55%,55%)`; };
  return async () => {
    const trace = await api("/api/timeline?limit=5000");
    const evs = trace.traceEvents.filter((e) => e.ph === "X");
    const rows = [...new Set(evs.map((e) => e.tid))].sort((a, b) => a - b);
    const width = Math.max(600, main.clientWidth - 4), rowH = 26, left = 110, top = 22;
    canvas.width = width; canvas.height = top + Math.max(1, rows.length) * rowH + 10;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    g.font = "12px sans-serif";
    boxes = [];
    if (!evs.length) { g.fillStyle = "#66707a"; g.fillText("no finished tasks yet", 10, 20); info.innerHTML = ""; return; }
    const t0 = Math.min(...evs.map((e) => e.ts)), t1 = Math.max(...evs.map((e) => e.ts + e.dur));
    const scale = (width - left - 10) / Math.max(1, t1 - t0);
    g.fillStyle = "#66707a";
    g.fillText(`0 s`, left, 14);
    g.fillText(`${((t1 - t0) / 1e6).toFixed(3)} s`, width - 70, 14);
    rows.forEach((tid, i) => { g.fillStyle = "#1d232a"; g.fillText(tid ? `pid ${tid}` : "(no worker)", 8, top + i * rowH + 17); });
    for (const e of evs) {
      const i = rows.indexOf(e.tid), x = left + (e.ts - t0) * scale, y = top + i * rowH + 3;
      const w = Math.max(1, e.dur * scale), h = rowH - 6;
      g.fillStyle = colour(e.name);
      g.fillRect(x, y, w, h);
      if (e.args.state === "FAILED") { g.strokeStyle = "#d2453b"; g.lineWidth = 2; g.strokeRect(x, y, w, h); }
      boxes.push({x, y, w, h, text: `${e.name} · ${e.args.state} · ${secs(e.dur / 1e6)} · pid ${e.tid}`});
    }
    info.innerHTML = `<div class="kv">${evs.length} finished tasks on ${rows.length} workers</div>`;
  };
}

// ------------------------------------------------------------------ jobs
function jobsPage() {
  const out = el("");
  const logs = el("");
  main.append(out, logs);
  let open = "";
  out.addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-job]");
    if (a) { ev.preventDefault(); open = a.dataset.job; }
  });
  return async () => {
    const jobs = await api("/api/jobs");
    out.innerHTML = `<h2>Jobs (${jobs.length})</h2>` + table([
      {label: "Job", html: (j) => `<a href="#" data-job="${esc(j.job_id)}" class="mono">${esc(j.job_id)}</a>`},
      {label: "Entrypoint", html: (j) => `<span class="mono">${esc(j.entrypoint)}</span>`},
      {label: "Status", html: (j) => state(j.status)},
      {label: "Exit code", num: true, html: (j) => esc(j.exit_code == null ? "" : j.exit_code)},
      {label: "Started", html: (j) => when(j.start_time)},
      {label: "Ended", html: (j) => when(j.end_time)},
    ], jobs, "no jobs; submit one with: asyncray submit -- python script.py");
    if (open) {
      const res = await api(`/api/jobs/${encodeURIComponent(open)}/logs`);
      logs.innerHTML = `<h2>Output of ${esc(open)}</h2><pre class="log">${esc(res.data) || "(no output yet)"}</pre>`;
    }
  };
}

// ------------------------------------------------------------------ polling
const PAGES = {cluster: clusterPage, tasks: tasksPage, actors: actorsPage, objects: objectsPage,
               logs: logsPage, timeline: timelinePage, jobs: jobsPage};
for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === PAGE);
const refresh = PAGES[PAGE]();
let busy = false;
async function tick() {
  if (busy || document.hidden) return;
  busy = true;
  try {
    await refresh();
    statusEl.textContent = "updated " + new Date().toLocaleTimeString();
    statusEl.classList.remove("error");
  } catch (err) {
    statusEl.textContent = "cannot reach the head: " + err.message;
    statusEl.classList.add("error");
  } finally {
    busy = false;
  }
}
tick();
setInterval(tick, POLL_MS);
