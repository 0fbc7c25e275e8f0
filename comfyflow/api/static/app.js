// comfyflow web console: plain JavaScript, no build step, no dependencies.
// The API key lives in this tab's sessionStorage only; it is sent in the Authorization header, never in a URL.
"use strict";

const KEY = "comfyflow.key";
const ACTIVE = new Set(["queued", "running"]);
const state = { key: sessionStorage.getItem(KEY), me: null, config: null, models: null, cleanups: [] };

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "HTTP_" + status;
    this.details = err.details;
  }
}

// --- small helpers --------------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// replaceChildren/append without the null, false and undefined that conditional parts leave
const kids = (...children) => children.flat().filter((c) => c !== null && c !== undefined && c !== false);
const $ = (sel) => document.querySelector(sel);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const short = (id) => (id || "").slice(0, 8);
const seconds = (s) => (s === null || s === undefined ? "—" : `${Number(s).toFixed(2)} s`);

function showError(err) {
  const box = $("#alert");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err instanceof ApiError ? `${err.message} (${err.code})` : String(err.message || err);
  box.hidden = false;
}

function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}

function progressBar(value, label) {
  return h("progress", { max: "1", value: String(value || 0), "aria-label": label || "progress" });
}

function onCleanup(fn) { state.cleanups.push(fn); }

// --- the API ----------------------------------------------------------------------------------------------------

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const opts = { method, headers: { ...headers, Authorization: `Bearer ${state.key}` }, cache: "no-store" };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    const err = new ApiError(r.status, data);
    if (r.status === 401 && path !== "/api/v1/me") signOut(err);
    throw err;
  }
  return data;
}

// Follow a job's events (Server-Sent Events read with fetch, so the key goes in a header); after a dropped
// connection it resumes with Last-Event-ID and gets every event it missed. Returns a stop function.
function follow(jobId, onEvent) {
  const ctrl = new AbortController();
  let lastId = null;
  let stopped = false;
  (async () => {
    let delay = 500;
    while (!stopped) {
      let sawDone = false;
      try {
        const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const r = await fetch(`/api/v1/jobs/${jobId}/events`, { headers, signal: ctrl.signal, cache: "no-store" });
        if (!r.ok) {
          const err = new ApiError(r.status, await r.json().catch(() => null));
          if (r.status < 500 && r.status !== 429) { onEvent({ type: "error", error: err }); return; }
          throw err;
        }
        delay = 500;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        let ev = { type: "message", data: [] };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let m;
          while ((m = /\r\n|\r|\n/.exec(buf))) {
            const line = buf.slice(0, m.index);
            buf = buf.slice(m.index + m[0].length);
            if (line === "") {
              if (ev.data.length) {
                let data = null;
                try { data = JSON.parse(ev.data.join("\n")); } catch { data = null; }
                if (ev.type === "done") sawDone = true;
                onEvent({ type: ev.type, id: lastId, data });
              }
              ev = { type: "message", data: [] };
              continue;
            }
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? "" : line.slice(colon + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (name === "id") lastId = val;
            else if (name === "event") ev.type = val;
            else if (name === "data") ev.data.push(val);
          }
        }
        // The server ends the stream once the job has finished; otherwise the connection dropped: resume.
        const job = await api(`/api/v1/jobs/${jobId}`);
        if (sawDone || !ACTIVE.has(job.status)) { onEvent({ type: "end", data: job }); return; }
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (err instanceof ApiError && err.status < 500 && err.status !== 429) { onEvent({ type: "error", error: err }); return; }
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  })();
  const stop = () => { stopped = true; ctrl.abort(); };
  onCleanup(stop);
  return stop;
}

function prefectLink(flowRunId, what) {
  const ui = state.config && state.config.prefect_ui;
  if (!ui || !flowRunId) return null;
  return h("a", { href: `${ui}/runs/flow-run/${flowRunId}`, target: "_blank", rel: "noopener noreferrer",
    "data-test": "prefect" }, `Open ${what} in the Prefect UI`);
}

// --- sign in ----------------------------------------------------------------------------------------------------

function signOut(err) {
  sessionStorage.removeItem(KEY);
  state.key = null;
  state.me = null;
  render();
  if (err) showError(err);
}

function signInPage(main) {
  const input = h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", placeholder: "cf_live_…" });
  const form = h("form", { class: "card", id: "signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key. It is kept in this tab only (session storage) and sent to the API " +
      "in the Authorization header. `comfyflow serve` prints the first key when it starts."),
    h("label", { for: "key" }, "API key", input),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    state.key = input.value.trim();
    try {
      state.me = await api("/api/v1/me");
      sessionStorage.setItem(KEY, state.key);
      showError(null);
      if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
      else render();
    } catch (err) {
      state.key = null;
      syncHeader();
      showError(err);
      input.select();
    }
  });
  main.append(form);
  input.focus();
}

// --- new job ----------------------------------------------------------------------------------------------------

function numberField(name, label, value, attrs = {}) {
  return h("label", {}, label, h("input", { name, type: "number", value, required: true, ...attrs }));
}

async function loadModels() {
  if (state.models) return state.models;
  try { state.models = await api("/api/v1/models"); } catch { state.models = { checkpoints: [], samplers: [] }; }
  return state.models;
}

function commonFields(models) {
  const samplers = models.samplers.length ? models.samplers : ["euler"];
  return [
    numberField("width", "Width", 512, { min: 64, max: 2048, step: 8 }),
    numberField("height", "Height", 512, { min: 64, max: 2048, step: 8 }),
    numberField("steps", "Steps", 20, { min: 1, max: 150 }),
    numberField("cfg_scale", "CFG scale", 7, { min: 1, max: 30, step: 0.5 }),
    h("label", {}, "Sampler", h("select", { name: "sampler" },
      samplers.map((s) => h("option", { value: s, selected: s === "euler" }, s)))),
    h("label", {}, "Model", h("select", { name: "model" }, h("option", { value: "" }, "(default)"),
      models.checkpoints.map((m) => h("option", { value: m }, m)))),
  ];
}

function requestFrom(form) {
  const f = new FormData(form);
  const body = { prompt: f.get("prompt"), negative_prompt: f.get("negative_prompt") || "",
    width: Number(f.get("width")), height: Number(f.get("height")), steps: Number(f.get("steps")),
    cfg_scale: Number(f.get("cfg_scale")), sampler: f.get("sampler") };
  if (f.get("model")) body.model = f.get("model");
  return body;
}

async function newJobPage(main) {
  const models = await loadModels();
  const img2img = h("div", { class: "fields", id: "img2img", hidden: true },
    h("label", {}, "Input image", h("input", { name: "image", type: "file", accept: "image/png,image/jpeg,image/webp" })),
    numberField("denoise", "Denoise", 0.75, { min: 0, max: 1, step: 0.05 }));
  const kinds = h("fieldset", {}, h("legend", { class: "muted" }, "Kind"),
    h("label", {}, h("input", { type: "radio", name: "kind", value: "txt2img", checked: true }), "Text to image"),
    h("label", {}, h("input", { type: "radio", name: "kind", value: "img2img" }), "Image to image"));
  kinds.addEventListener("change", (e) => { img2img.hidden = e.target.value !== "img2img"; });
  const form = h("form", { class: "card", id: "new-job" }, h("h1", {}, "New job"), kinds,
    h("div", { class: "fields" },
      h("label", { class: "wide" }, "Prompt", h("textarea", { name: "prompt", required: true, maxlength: 5000 })),
      h("label", { class: "wide" }, "Negative prompt", h("input", { name: "negative_prompt", maxlength: 5000 })),
      ...commonFields(models),
      numberField("seed", "Seed (-1 = random)", -1, { min: -1 })),
    img2img,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Submit")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = { ...requestFrom(form), seed: Number(new FormData(form).get("seed")) };
      if (new FormData(form).get("kind") === "img2img") {
        const file = form.querySelector("input[name=image]").files[0];
        if (!file) throw new Error("Choose an input image for image to image.");
        const upload = new FormData();
        upload.append("image", file);
        const stored = await api("/api/v1/uploads", { method: "POST", body: upload });
        Object.assign(body, { kind: "img2img", init_image: stored.upload_id,
          denoise: Number(new FormData(form).get("denoise")) });
      }
      const job = await api("/api/v1/jobs", { method: "POST", body });
      showError(null);
      location.hash = `#/jobs/${job.job_id}`;
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  });
  main.append(form);
}

// --- jobs -------------------------------------------------------------------------------------------------------

async function jobsPage(main) {
  const tbody = h("tbody");
  main.append(h("h1", {}, "Your jobs"),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Status"),
      h("th", {}, "Progress"), h("th", { class: "opt" }, "Prompt"), h("th", { class: "opt" }, "Created"))), tbody));
  const followed = new Map();
  let alive = true;
  onCleanup(() => { alive = false; });
  const row = (job) => h("tr", { "data-job": job.job_id },
    h("td", {}, h("a", { href: `#/jobs/${job.job_id}` }, short(job.job_id))),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, progressBar(job.status === "succeeded" ? 1 : job.progress.value, `progress of ${short(job.job_id)}`)),
    h("td", { class: "prompt opt" }, (job.request && (job.request.prompt || job.request.kind)) || ""),
    h("td", { class: "opt muted" }, new Date(job.created_at).toLocaleTimeString()));
  const update = (job) => {
    const old = tbody.querySelector(`tr[data-job="${job.job_id}"]`);
    const fresh = row(job);
    if (old) old.replaceWith(fresh); else tbody.append(fresh);
  };
  while (alive) {
    try {
      const page = await api("/api/v1/jobs?limit=25");
      if (!alive) return;
      if (!page.items.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" },
        "No jobs yet. ", h("a", { href: "#/new" }, "Submit one"), ".")));
      else {
        tbody.querySelectorAll("tr:not([data-job])").forEach((el) => el.remove());
        page.items.forEach(update);
      }
      // live progress for up to three running jobs (each stream holds a connection); the rest by this poll
      for (const job of page.items.filter((j) => ACTIVE.has(j.status)).slice(0, 3)) {
        if (followed.has(job.job_id)) continue;
        followed.set(job.job_id, follow(job.job_id, async (ev) => {
          const bar = tbody.querySelector(`tr[data-job="${job.job_id}"] progress`);
          if (ev.type === "progress" && bar && ev.data) bar.value = ev.data.value;
          if (ev.type === "status" || ev.type === "done" || ev.type === "end") {
            try { update(ev.type === "end" ? ev.data : await api(`/api/v1/jobs/${job.job_id}`)); } catch { /* next poll */ }
          }
          if (ev.type === "end") followed.delete(job.job_id);
        }));
      }
      if (!page.items.some((j) => ACTIVE.has(j.status))) return;
    } catch (err) { showError(err); return; }
    await sleep(3000);
  }
}

async function jobPage(main, jobId) {
  const box = h("section", { class: "card", id: "job" });
  main.append(h("h1", {}, "Job ", h("span", { class: "muted" }, jobId)), box);
  let job = await api(`/api/v1/jobs/${jobId}`);
  const draw = () => {
    const result = job.result || {};
    const images = (result.artifacts || []).filter((a) => a.content_type.startsWith("image/"));
    const cancel = h("button", { type: "button", class: "secondary", id: "cancel", disabled: !ACTIVE.has(job.status),
      onclick: () => act("DELETE", `/api/v1/jobs/${jobId}`) }, "Cancel");
    const retry = h("button", { type: "button", class: "secondary", id: "retry",
      disabled: !["failed", "canceled"].includes(job.status),
      onclick: () => act("POST", `/api/v1/jobs/${jobId}/retry`) }, "Retry");
    box.replaceChildren(...kids(
      h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", {}, statusBadge(job.status), job.attempt > 1 ? ` attempt ${job.attempt}` : ""),
        h("dt", {}, "Progress"), h("dd", {}, progressBar(job.status === "succeeded" ? 1 : job.progress.value, "job progress"),
          job.progress.step ? ` step ${job.progress.step}/${job.progress.max}` : ""),
        h("dt", {}, "Prompt"), h("dd", {}, (job.request && job.request.prompt) || "—"),
        h("dt", {}, "Seed"), h("dd", { id: "seed" }, result.seed ?? (job.request && job.request.seed) ?? "—"),
        h("dt", {}, "Queue wait"), h("dd", {}, seconds(job.durations.queue_wait)),
        h("dt", {}, "Render"), h("dd", {}, seconds(job.durations.render)),
        h("dt", {}, "Store"), h("dd", {}, seconds(job.durations.store)),
        h("dt", {}, "Total"), h("dd", {}, seconds(job.durations.total)),
        job.batch_id ? [h("dt", {}, "Batch"), h("dd", {}, h("a", { href: `#/batches/${job.batch_id}` }, short(job.batch_id)))] : null),
      job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
      h("div", { class: "actions" }, cancel, retry, prefectLink(job.flow_run_id, "this job's run")),
      images.length ? h("h2", {}, "Images") : null,
      h("div", { class: "images" }, images.map((a, i) => h("figure", {},
        h("img", { src: a.url, alt: `image ${i + 1} of job ${short(jobId)}`, width: 256, "data-test": "artifact" }),
        h("figcaption", {}, h("a", { href: a.url, download: `${jobId}-${a.index}` }, "Download"),
          ` ${Math.round(a.size / 1024)} KB`))))));
  };
  const act = async (method, path) => {
    try { job = await api(path, { method }); showError(null); draw(); if (ACTIVE.has(job.status)) watch(); }
    catch (err) { showError(err); }
  };
  let stop = null;
  const watch = () => {
    if (stop) stop();
    stop = follow(jobId, async (ev) => {
      if (ev.type === "error") { showError(ev.error); return; }
      if (ev.type === "progress" && ev.data) { job.progress = ev.data; draw(); return; }
      if (ev.type === "end") { job = ev.data; draw(); return; }
      if (ev.type === "status" || ev.type === "done" || ev.type === "artifact") {
        try { job = await api(`/api/v1/jobs/${jobId}`); draw(); } catch (err) { showError(err); }
      }
    });
  };
  draw();
  if (ACTIVE.has(job.status)) watch();
}

// --- sweeps and batches -----------------------------------------------------------------------------------------

function values(text, asNumber) {
  const parts = text.split(asNumber ? /[,\s]+/ : /\n/).map((v) => v.trim()).filter(Boolean);
  return asNumber ? parts.map(Number) : parts;
}

async function sweepPage(main) {
  const models = await loadModels();
  const form = h("form", { class: "card", id: "new-sweep" }, h("h1", {}, "New sweep"),
    h("p", { class: "muted" }, "Every combination of the values below becomes one job; the batch page shows them " +
      "as a contact sheet while they render."),
    h("div", { class: "fields" },
      h("label", { class: "wide" }, "Name", h("input", { name: "name", maxlength: 100, placeholder: "optional" })),
      h("label", { class: "wide" }, "Prompts (one per line)", h("textarea", { name: "prompts", required: true })),
      h("label", {}, "Seeds", h("input", { name: "seeds", value: "1, 2, 3, 4" })),
      h("label", {}, "CFG scales", h("input", { name: "cfgs", value: "5, 7" })),
      h("label", {}, "Steps", h("input", { name: "stepss", value: "20" })),
      ...commonFields(models).filter((el) => !["steps", "cfg_scale"].includes(el.querySelector("[name]").name))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Submit sweep")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const fields = { seed: values(f.get("seeds"), true), prompt: values(f.get("prompts"), false),
      cfg_scale: values(f.get("cfgs"), true), steps: values(f.get("stepss"), true) };
    const base = { width: Number(f.get("width")), height: Number(f.get("height")), sampler: f.get("sampler") };
    if (f.get("model")) base.model = f.get("model");
    const sweep = {};
    for (const [name, list] of Object.entries(fields)) {
      if (list.length > 1) sweep[name] = list; else if (list.length === 1) base[name] = list[0];
    }
    if (!Object.keys(sweep).length) { sweep.seed = [base.seed ?? -1]; delete base.seed; }
    if (base.prompt === undefined) base.prompt = fields.prompt[0];
    const body = { base, sweep };
    if (f.get("name")) body.name = f.get("name");
    try {
      const batch = await api("/api/v1/batches", { method: "POST", body });
      showError(null);
      location.hash = `#/batches/${batch.batch_id}`;
    } catch (err) { showError(err); }
  });
  main.append(form);
}

async function batchesPage(main) {
  const page = await api("/api/v1/batches?limit=50");
  main.append(h("h1", {}, "Your batches"), h("table", { id: "batches" },
    h("thead", {}, h("tr", {}, h("th", {}, "Batch"), h("th", {}, "Status"), h("th", {}, "Progress"),
      h("th", { class: "opt" }, "Items"))),
    h("tbody", {}, page.items.length ? page.items.map((b) => h("tr", {},
      h("td", {}, h("a", { href: `#/batches/${b.batch_id}` }, b.name || short(b.batch_id))),
      h("td", {}, statusBadge(b.status)), h("td", {}, progressBar(b.progress, `progress of ${b.name || short(b.batch_id)}`)),
      h("td", { class: "opt" }, b.total))) : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No batches yet. ",
      h("a", { href: "#/sweep" }, "Start a sweep"), ".")))));
}

async function batchPage(main, batchId) {
  let batch = await api(`/api/v1/batches/${batchId}?limit=0`);
  const axes = Object.keys(batch.axes || {});
  const head = h("div");
  const sheet = h("img", { class: "sheet", id: "sheet", alt: `contact sheet of batch ${batch.name || short(batchId)}` });
  const pick = (name, chosen) => h("label", {}, `${name} axis`, h("select", { name },
    axes.map((a) => h("option", { value: a, selected: a === chosen }, a))));
  // a third swept field: one sheet per value (z and which of its values)
  const zValue = h("select", { name: "z_index" });
  const fillZ = (z) => zValue.replaceChildren(...Array.from({ length: batch.axes[z] || 0 },
    (_, i) => h("option", { value: i }, `${i + 1} of ${batch.axes[z]}`)));
  const zPick = axes.length > 2 ? pick("z", axes[2]) : null;
  if (zPick) {
    fillZ(axes[2]);
    zPick.querySelector("select").addEventListener("change", (e) => fillZ(e.target.value));
  }
  const controls = axes.length > 1 ? h("form", { class: "fields", id: "axes" }, pick("x", axes[0]), pick("y", axes[1]),
    zPick, zPick ? h("label", {}, "z value", zValue) : null) : null;
  main.append(h("h1", {}, "Batch ", h("span", { class: "muted" }, batch.name || batchId)),
    h("section", { class: "card" }, head, h("h2", {}, "Contact sheet"), controls, sheet));  // h() drops a null
  let etag = null;
  let url = null;
  let alive = true;
  onCleanup(() => { alive = false; if (url) URL.revokeObjectURL(url); });
  // cells sized so the sheet fits the page's width (the server caps them at 16..512 pixels)
  const query = () => {
    const params = new URLSearchParams();
    let columns = Math.ceil(Math.sqrt(batch.total));
    if (controls) {
      const f = new FormData(controls);
      params.set("x", f.get("x"));
      params.set("y", f.get("y"));
      if (zPick) { params.set("z", f.get("z")); params.set("z_index", f.get("z_index") || "0"); }
      columns = batch.axes[f.get("x")];
    } else if (axes.length === 1) columns = batch.axes[axes[0]];
    const width = sheet.parentElement.clientWidth - 2 * 16 - 170;
    params.set("cell", String(Math.max(16, Math.min(256, Math.floor(width / columns) - 4))));
    return "?" + params.toString();
  };
  if (controls) controls.addEventListener("change", () => { etag = null; refreshSheet(); });
  const drawHead = () => {
    const counts = Object.entries(batch.counts).filter(([, n]) => n);
    head.replaceChildren(...kids(
      h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", {}, statusBadge(batch.status)),
        h("dt", {}, "Progress"), h("dd", {}, progressBar(batch.progress, "batch progress"),
          ` ${Math.round(batch.progress * 100)} % of ${batch.total}`),
        h("dt", {}, "Items"), h("dd", { class: "counts", id: "counts" },
          counts.map(([s, n]) => h("span", {}, statusBadge(s), ` ${n}`)))),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", id: "cancel-batch", disabled: !ACTIVE.has(batch.status),
          onclick: async () => {
            try { batch = await api(`/api/v1/batches/${batchId}`, { method: "DELETE" }); drawHead(); }
            catch (err) { showError(err); }
          } }, "Cancel the rest"),
        prefectLink(batch.flow_run_id, "this batch's run"))));
  };
  // The sheet needs the key, so it is fetched (not an <img src>) and shown from a blob; If-None-Match makes an
  // unchanged sheet a 304 (nothing drawn, nothing sent).
  const refreshSheet = async () => {
    const headers = { Authorization: `Bearer ${state.key}` };
    if (etag) headers["If-None-Match"] = etag;
    const q = query();
    const r = await fetch(`/api/v1/batches/${batchId}/grid${q}`, { headers, cache: "no-store" });
    if (r.status === 304) return;
    if (!r.ok) { showError(new ApiError(r.status, await r.json().catch(() => null))); return; }
    etag = r.headers.get("ETag");
    const blob = await r.blob();
    if (!alive) return;
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(blob);
    sheet.src = url;
    sheet.dataset.etag = etag || "";
    sheet.dataset.query = q;
  };
  drawHead();
  for (;;) {  // counts and sheet read together, so they agree
    try {
      await refreshSheet();
      if (!ACTIVE.has(batch.status)) return;
      await sleep(1500);
      if (!alive) return;
      batch = await api(`/api/v1/batches/${batchId}?limit=0`);
      if (!alive) return;
      drawHead();
    } catch (err) { showError(err); return; }
  }
}

// --- routing ----------------------------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/new$/, newJobPage],
  [/^#\/jobs\/([0-9a-f]{32})$/, jobPage],
  [/^#\/sweep$/, sweepPage],
  [/^#\/batches$/, batchesPage],
  [/^#\/batches\/([0-9a-f]{32})$/, batchPage],
  [/^#\/jobs$|^#?\/?$/, jobsPage],
];

function syncHeader() {
  const signedIn = Boolean(state.key && state.me);
  $("#nav").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  $("#who").textContent = state.me ? `${state.me.name || state.me.id} · ${state.me.role}` : "";
}

async function render() {
  while (state.cleanups.length) state.cleanups.pop()();
  const main = $("#main");
  main.replaceChildren();
  syncHeader();
  if (!state.key) { signInPage(main); return; }
  if (!state.me) {
    try { state.me = await api("/api/v1/me"); } catch (err) { signOut(err); return; }
    syncHeader();
  }
  if (!state.config) { try { state.config = await api("/api/v1/console"); } catch { state.config = {}; } }
  const hash = location.hash || "#/jobs";
  for (const a of document.querySelectorAll("#nav a")) {
    if (hash === a.getAttribute("href") || hash.startsWith(a.getAttribute("href") + "/")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const route = ROUTES.find(([re]) => re.test(hash));
  try {
    if (!route) { main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Your jobs"))); return; }
    await route[1](main, ...hash.match(route[0]).slice(1));
  } catch (err) { showError(err); }
}

window.addEventListener("hashchange", () => { showError(null); render(); });
document.addEventListener("DOMContentLoaded", () => {
  $("#signout").addEventListener("click", () => signOut(null));
  render();
});
