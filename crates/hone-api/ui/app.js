// The hone dashboard: a client of the public API, nothing more. The API key lives in
// session storage and goes out as a bearer header only (never in a URL, so it cannot
// land in logs or history); live updates read the events' Server-Sent Events stream
// with fetch(), because EventSource cannot send headers. Every text from the server is
// set as textContent, never parsed as HTML.

const KEY = "hone.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const main = document.getElementById("main");

// ---- helpers ------------------------------------------------------------------------

/** Builds an element: attributes (`on*` are listeners) and children (text or nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const fmt = {
  num: (x, d = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(d)),
  pct: (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`),
  time: (t) => (t ? new Date(t * 1000).toLocaleString() : "—"),
  secs(s) {
    if (s === null || s === undefined) return "—";
    s = Math.round(s);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
  bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / (1 << 20)).toFixed(1)} MiB`;
  },
};

function bar(fraction, cls = "bar") {
  const fill = h("span");
  fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h("div", { class: cls }, fill);
}

function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}

/** An error from the API: its HTTP status and the `{"error": …}` envelope's fields. */
class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = error?.param;
    this.code = error?.code;
  }
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, ...extra };
}

/** `probe`: a 401 is the answer sought (a key being tried), not a reason to sign out. */
async function api(path, { method = "GET", body, signal, probe = false } = {}) {
  const headers = authHeaders(body ? { "Content-Type": "application/json" } : {});
  const r = await fetch(path, {
    method, headers, signal, body: body ? JSON.stringify(body) : undefined,
  });
  const data = await r.json().catch(() => null);
  if (r.status === 401 && !probe) {
    sessionStorage.removeItem(KEY);
    route();
  }
  if (!r.ok) throw new ApiError(r.status, data?.error);
  return data;
}

/** The page's current view: navigating away aborts its timers, fetches and streams. */
let view = new AbortController();

function every(ms, fn) {
  const id = setInterval(fn, ms);
  view.signal.addEventListener("abort", () => clearInterval(id));
}

function showError(where, e) {
  if (e?.name === "AbortError") return;
  where.replaceChildren(h("p", { class: "error" }, e?.message || String(e)));
}

// ---- routing and the key -------------------------------------------------------------

function route() {
  view.abort();
  view = new AbortController();
  const hash = location.hash || "#/jobs";
  const key = sessionStorage.getItem(KEY);
  document.getElementById("logout").hidden = !key;
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`));
  }
  main.replaceChildren();
  if (!key) return login();
  const job = hash.match(/^#\/jobs\/([\w-]+)$/);
  if (job) return jobPage(job[1]);
  if (hash.startsWith("#/files")) return filesPage();
  if (hash.startsWith("#/models")) return modelsPage();
  return jobsPage();
}

function login() {
  const input = h("input", {
    id: "api-key", type: "password", autocomplete: "off", placeholder: "hone_sk_…",
  });
  const msg = h("p", { class: "error" });
  const form = h("form", { class: "card", id: "login" },
    h("h1", {}, "Sign in with an API key"),
    h("p", { class: "muted" },
      "The key stays in this tab's session storage and is sent only as an ",
      h("code", {}, "Authorization"), " header. `hone keys create` makes one."),
    input,
    h("button", { type: "submit" }, "Use this key"),
    msg);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("/v1/files?limit=1", { probe: true });
      route();
    } catch (e) {
      sessionStorage.removeItem(KEY);
      msg.textContent = e.status === 401 ? "That key is not valid." : e.message;
    }
  });
  main.append(h("section", { class: "login card" }, form));
  input.focus();
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  route();
});
window.addEventListener("hashchange", route);

// ---- jobs ------------------------------------------------------------------------------

async function jobsPage() {
  const list = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Fine-tuning jobs"), newJobForm(),
    h("section", { class: "card" }, h("h2", {}, "Jobs"), list));
  // The list has no stream of its own: it is polled while it is on screen.
  const refresh = async () => {
    try {
      const jobs = await api("/v1/fine_tuning/jobs?limit=50", { signal: view.signal });
      list.replaceChildren(jobsTable(jobs.data));
    } catch (e) {
      showError(list, e);
    }
  };
  await refresh();
  every(2000, refresh);
}

function jobsTable(jobs) {
  if (!jobs.length) return h("p", { class: "muted" }, "No jobs yet.");
  return h("table", { id: "jobs" },
    h("tr", {}, ["Job", "Base model", "Method", "Status", "Progress", "ETA", "Created"]
      .map((t) => h("th", {}, t))),
    jobs.map((j) => {
      const p = j.progress;
      const frac = p ? p.step / Math.max(1, p.total_steps) : j.status === "succeeded" ? 1 : 0;
      return h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.id)),
        h("td", {}, j.base_model),
        h("td", {}, methodText(j.method)),
        h("td", {}, statusBadge(j.status)),
        h("td", {}, bar(frac), p ? h("small", { class: "muted" },
          `epoch ${p.epoch}/${p.total_epochs} · step ${p.step}/${p.total_steps}`) : null),
        h("td", {}, TERMINAL.has(j.status) ? "—" : fmt.secs(p?.eta_seconds)),
        h("td", {}, fmt.time(j.created_at)));
    }));
}

function methodText(m) {
  if (m.type === "auto" && m.chosen) return `auto → ${m.chosen.type}`;
  return m.type;
}

function newJobForm() {
  const file = h("select", { name: "training_file", id: "job-file", required: true });
  const model = h("select", { name: "model", id: "job-model", required: true });
  const method = h("select", { name: "method", id: "job-method" },
    ["auto", "feature_extraction", "partial", "full"].map((m) => h("option", { value: m }, m)));
  const epochs = h("input", { name: "epochs", id: "job-epochs", type: "number", min: 1,
    max: 100, value: 3 });
  const msg = h("span", { class: "error" });
  const form = h("form", { class: "row", id: "new-job" },
    h("label", {}, "Training file", file), h("label", {}, "Base model", model),
    h("label", {}, "Method", method), h("label", {}, "Epochs", epochs),
    h("button", { type: "submit" }, "Start job"), msg);
  (async () => {
    try {
      const [files, models] = await Promise.all([
        api("/v1/files?limit=100", { signal: view.signal }),
        api("/v1/base-models", { signal: view.signal }),
      ]);
      file.replaceChildren(...files.data
        .filter((f) => f.purpose === "fine-tune" && f.status === "processed")
        .map((f) => h("option", { value: f.id }, `${f.filename} (${f.examples} examples)`)));
      model.replaceChildren(...models.data.map((m) =>
        h("option", { value: m.id }, `${m.id} (${m.modality})`)));
    } catch (e) {
      msg.textContent = e.message;
    }
  })();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "";
    try {
      const job = await api("/v1/fine_tuning/jobs", {
        method: "POST",
        body: {
          model: model.value, training_file: file.value, method: { type: method.value },
          hyperparameters: { epochs: Number(epochs.value) },
        },
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      msg.textContent = e.param ? `${e.param}: ${e.message}` : e.message;
    }
  });
  return h("section", { class: "card" }, h("h2", {}, "New job"), form);
}

// ---- one job -------------------------------------------------------------------------

async function jobPage(id) {
  const head = h("div");
  const charts = h("div", { class: "grid2" },
    h("div", { class: "chart", id: "loss-chart" }), h("div", { class: "chart", id: "metric-chart" }));
  const evaluation = h("div", { id: "evaluation" }, h("p", { class: "muted" }, "When the job has finished."));
  const dataReport = h("div", { id: "data-report" }, h("p", { class: "muted" }, "When the data has been read."));
  const checkpoints = h("div", { id: "checkpoints" });
  const events = h("div", { class: "events", id: "events" });
  main.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), head,
    h("section", { class: "card" }, h("h2", {}, "Loss and metrics per epoch"), charts),
    h("section", { class: "card" }, h("h2", {}, "Evaluation"), evaluation),
    h("section", { class: "card" }, h("h2", {}, "Data report"), dataReport),
    h("section", { class: "card" }, h("h2", {}, "Checkpoints"), checkpoints),
    h("section", { class: "card" }, h("h2", {}, "Events"), events));

  let job = null;
  const refresh = async () => {
    try {
      const [j, m] = await Promise.all([
        api(`/v1/fine_tuning/jobs/${id}`, { signal: view.signal }),
        api(`/v1/fine_tuning/jobs/${id}/metrics`, { signal: view.signal }),
      ]);
      job = j;
      head.replaceChildren(jobHeader(j, refresh));
      drawCurves(charts, m.epochs);
      if (m.evaluation) evaluation.replaceChildren(evaluationView(m.evaluation));
      if (m.data_report) dataReport.replaceChildren(dataReportView(m.data_report));
      const cks = await api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`, { signal: view.signal });
      checkpoints.replaceChildren(checkpointsTable(j, cks.data, refresh));
    } catch (e) {
      showError(head, e);
    }
  };
  await refresh();
  // Live: each event refreshes the page (at most every half second); a slow poll
  // stays as the fallback for a stream that was cut.
  let pending = null;
  const soon = () => {
    pending ??= setTimeout(() => { pending = null; refresh(); }, 500);
  };
  followEvents(id, events, soon, () => job && TERMINAL.has(job.status));
  every(5000, () => { if (!job || !TERMINAL.has(job.status)) refresh(); });
}

function jobHeader(j, refresh) {
  const p = j.progress;
  const cancel = h("button", { class: "danger", id: "cancel", type: "button" }, "Cancel job");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/v1/fine_tuning/jobs/${j.id}/cancel`, { method: "POST" });
    } catch (e) {
      alert(e.message);
    }
    refresh();
  });
  const chosen = j.method.chosen;
  return h("section", { class: "card", id: "job-head" },
    h("h1", {}, h("span", { class: "mono" }, j.id), " ", statusBadge(j.status), " ",
      TERMINAL.has(j.status) ? null : cancel),
    p ? h("div", {}, bar(p.step / Math.max(1, p.total_steps), "bar big"),
      h("p", { class: "muted", id: "progress" },
        `epoch ${p.epoch}/${p.total_epochs} · step ${p.step}/${p.total_steps} · loss ${fmt.num(p.train_loss)}`,
        TERMINAL.has(j.status) ? "" : ` · ETA ${fmt.secs(p.eta_seconds)}`)) : null,
    h("dl", { class: "kv" },
      h("dt", {}, "Base model"), h("dd", {}, j.base_model),
      h("dt", {}, "Method"), h("dd", {}, methodText(j.method)),
      h("dt", {}, "Training file"), h("dd", { class: "mono" }, j.training_file),
      h("dt", {}, "Fine-tuned model"), h("dd", { class: "mono" },
        j.fine_tuned_model ? h("a", { href: "#/models" }, j.fine_tuned_model) : "—"),
      h("dt", {}, "Created"), h("dd", {}, fmt.time(j.created_at)),
      j.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, j.error.message)] : null),
    chosen ? h("div", { class: "reason", id: "auto-reason" },
      h("strong", {}, `auto chose ${chosen.type}`,
        chosen.frozen_layers !== undefined ? ` (${chosen.frozen_layers} frozen layers)` : "", ": "),
      chosen.reason) : null);
}

/** Reads the job's SSE stream with fetch (headers allowed), reconnecting with
 * Last-Event-ID until the job is over or the view changes. */
async function followEvents(id, box, onEvent, over) {
  let last = null;
  // A finished job's stream replays its events and ends: one pass shows them.
  while (!view.signal.aborted) {
    try {
      const r = await fetch(`/v1/fine_tuning/jobs/${id}/events?stream=true`, {
        headers: authHeaders(last ? { "Last-Event-ID": last } : {}),
        signal: view.signal,
      });
      if (!r.ok || !r.body) throw new Error(`events: HTTP ${r.status}`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const { id: eid, data } = parseFrame(frame);
          if (eid) last = eid;
          if (data) {
            showEvent(box, JSON.parse(data));
            onEvent();
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    if (over()) return;
    onEvent();
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

function parseFrame(frame) {
  const out = { id: null, data: "" };
  for (const line of frame.split("\n")) {
    if (line.startsWith("id:")) out.id = line.slice(3).trim();
    else if (line.startsWith("data:")) out.data += line.slice(5).trimStart();
  }
  return out;
}

function showEvent(box, e) {
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(h("div", { class: e.level },
    h("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString(), " "),
    e.message));
  if (atEnd) box.scrollTop = box.scrollHeight;
}

/** Two uPlot charts: losses, and validation accuracy / macro-F1, by epoch. */
function drawCurves(box, epochs) {
  const [lossBox, metricBox] = box.children;
  if (!epochs.length) {
    lossBox.replaceChildren(h("p", { class: "muted" }, "The first epoch is not over yet."));
    return;
  }
  const x = epochs.map((e) => e.epoch);
  const val = (f) => epochs.map((e) => (e.validation ? f(e.validation) : null));
  const width = Math.max(320, lossBox.clientWidth || 520);
  const opts = (title, series, range) => ({
    title, width, height: 240,
    scales: { x: { time: false }, y: range ? { range } : {} },
    axes: [{ label: "epoch" }, {}],
    series: [{ label: "epoch" }, ...series],
  });
  lossBox.replaceChildren();
  metricBox.replaceChildren();
  new uPlot(opts("Loss", [
    { label: "training loss", stroke: "#3a5bd9", width: 2 },
    { label: "validation loss", stroke: "#c0362c", width: 2 },
  ]), [x, epochs.map((e) => e.train_loss), val((v) => v.loss)], lossBox);
  new uPlot(opts("Validation", [
    { label: "accuracy", stroke: "#1a7f4b", width: 2 },
    { label: "macro F1", stroke: "#a86a00", width: 2 },
  ], [0, 1]), [x, val((v) => v.accuracy), val((v) => v.macro_f1)], metricBox);
}

function evaluationView(ev) {
  const out = h("div");
  const reports = ev.validation ? [["", ev.validation]] : [];
  for (const t of ev.tasks || []) reports.push([`Task ${t.task}: `, t.report]);
  for (const [title, r] of reports) {
    out.append(h("dl", { class: "kv" },
      h("dt", {}, `${title}Accuracy`), h("dd", { id: "accuracy" }, fmt.pct(r.accuracy)),
      h("dt", {}, "Macro F1"), h("dd", {}, fmt.num(r.macro_f1, 3)),
      h("dt", {}, "Weighted F1"), h("dd", {}, fmt.num(r.weighted_f1, 3)),
      h("dt", {}, "Calibration error"), h("dd", {}, fmt.num(r.expected_calibration_error, 3)),
      h("dt", {}, "Examples"), h("dd", {}, r.examples)),
    h("div", { class: "grid2" }, perClassTable(r.per_class), heatmap(r)));
  }
  if (ev.multi_label) {
    out.append(h("p", {}, `Multi-label: subset accuracy ${fmt.pct(ev.multi_label.subset_accuracy)}`),
      perClassTable(ev.multi_label.per_label));
  }
  const g = ev.generalization;
  if (g) {
    out.append(h("p", { class: g.overfitting ? "error" : "muted" },
      `Training accuracy ${fmt.pct(g.train_accuracy)}, validation ${fmt.pct(g.validation_accuracy)}`,
      g.overfitting ? ": the gap suggests overfitting." : "."));
  }
  return out;
}

function perClassTable(rows) {
  return h("table", { class: "per-class" },
    h("tr", {}, h("th", {}, "Label"), ["Precision", "Recall", "F1", "Support"]
      .map((t) => h("th", { class: "num" }, t))),
    rows.map((c) => h("tr", {}, h("td", {}, c.label),
      h("td", { class: "num" }, fmt.num(c.precision, 3)), h("td", { class: "num" }, fmt.num(c.recall, 3)),
      h("td", { class: "num" }, fmt.num(c.f1, 3)), h("td", { class: "num" }, c.support))));
}

/** The confusion matrix as a table, each cell shaded by its share of its row. */
function heatmap(r) {
  const labels = r.per_class.map((c) => c.label);
  return h("table", { class: "heatmap", id: "confusion" },
    h("tr", {}, h("th", { class: "corner" }, "true ↓ / predicted →"), labels.map((l) => h("th", {}, l))),
    r.confusion_matrix.map((row, i) => {
      const total = row.reduce((a, b) => a + b, 0) || 1;
      return h("tr", {}, h("th", {}, labels[i] ?? i), row.map((n, j) => {
        const td = h("td", { title: `${n} of ${total}` }, n);
        const a = n / total;
        td.style.background = i === j ? `rgba(26,127,75,${a})` : `rgba(192,54,44,${a})`;
        if (a > 0.55) td.style.color = "#fff";
        return td;
      }));
    }));
}

function dataReportView(d) {
  const out = h("div", { class: "grid2" });
  const labels = h("div");
  for (const dist of d.labels) {
    const max = Math.max(1, ...Object.values(dist.counts));
    labels.append(h("h3", {}, dist.task ? `Labels of ${dist.task}` : "Label balance",
      h("small", { class: "muted" }, ` (imbalance ${fmt.num(dist.imbalance_ratio, 2)}×)`)),
      h("div", { class: "scores" }, Object.entries(dist.counts).flatMap(([label, n]) => {
        const b = h("div", { class: "score-bar" });
        b.style.width = `${(100 * n) / max}%`;
        return [h("span", {}, label), h("div", {}, b), h("span", { class: "num" }, n)];
      })));
  }
  const t = d.truncation;
  out.append(labels, h("div", {},
    h("dl", { class: "kv" },
      h("dt", {}, "Training examples"), h("dd", {}, d.training_examples),
      h("dt", {}, "Validation examples"), h("dd", {}, d.validation_examples ?? "—"),
      h("dt", {}, "Duplicate texts"), h("dd", {}, d.duplicate_texts),
      h("dt", {}, "Conflicting duplicates"), h("dd", {}, d.conflicting_duplicates),
      h("dt", {}, "Leaked into validation"), h("dd", {}, d.leaked_validation_examples ?? "—"),
      h("dt", {}, "Text length (median, max)"), h("dd", {}, `${d.text_length.median}, ${d.text_length.max}`),
      h("dt", {}, "Truncated"), h("dd", {}, t ? `${t.truncated} of ${t.examples} (${fmt.pct(t.rate)}) at ${t.max_seq_len} tokens` : "—")),
    d.warnings.length ? h("ul", { class: "warnings" }, d.warnings.map((w) => h("li", {}, w.message))) : null));
  return out;
}

function checkpointsTable(job, cks, refresh) {
  if (!cks.length) return h("p", { class: "muted" }, "None yet: one is kept per epoch.");
  return h("table", {},
    h("tr", {}, h("th", {}, "Epoch"), h("th", { class: "num" }, "Step"),
      h("th", { class: "num" }, "Train loss"), h("th", { class: "num" }, "Val. loss"),
      h("th", { class: "num" }, "Val. accuracy"), h("th", {}, "Model")),
    cks.map((c) => {
      let model;
      if (c.published_model) {
        model = h("span", { class: "mono" }, c.published_model);
      } else {
        model = h("button", { class: "secondary", type: "button", "data-epoch": c.epoch }, "Publish");
        model.addEventListener("click", async () => {
          model.disabled = true;
          try {
            await api(`/v1/fine_tuning/jobs/${job.id}/checkpoints/${c.epoch}/publish`, { method: "POST" });
          } catch (e) {
            alert(e.message);
          }
          refresh();
        });
      }
      const v = c.metrics.validation;
      return h("tr", {}, h("td", {}, c.epoch), h("td", { class: "num" }, c.step),
        h("td", { class: "num" }, fmt.num(c.metrics.train_loss)),
        h("td", { class: "num" }, fmt.num(v?.loss)), h("td", { class: "num" }, fmt.pct(v?.accuracy)),
        h("td", {}, model));
    }));
}

// ---- files -----------------------------------------------------------------------------

async function filesPage() {
  const list = h("div");
  const refresh = async () => {
    try {
      const files = await api("/v1/files?limit=100", { signal: view.signal });
      list.replaceChildren(filesTable(files.data));
    } catch (e) {
      showError(list, e);
    }
  };
  main.append(h("h1", {}, "Files"), uploadForm(refresh),
    h("section", { class: "card" }, h("h2", {}, "Uploaded"), list));
  await refresh();
}

function filesTable(files) {
  if (!files.length) return h("p", { class: "muted" }, "No files yet.");
  return h("table", { id: "files" },
    h("tr", {}, ["File", "Name", "Purpose", "Examples", "Labels", "Size", "Status"].map((t) => h("th", {}, t))),
    files.map((f) => h("tr", { "data-file": f.id },
      h("td", { class: "mono" }, f.id), h("td", {}, f.filename), h("td", {}, f.purpose),
      h("td", { class: "num" }, f.examples),
      h("td", {}, Object.entries(f.label_counts).map(([l, n]) => `${l} ${n}`).join(", ")),
      h("td", { class: "num" }, fmt.bytes(f.bytes)), h("td", {}, statusBadge(f.status)))));
}

function uploadForm(refresh) {
  const input = h("input", { type: "file", id: "upload-file", name: "file", required: true });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const result = h("div", { id: "upload-result" });
  const form = h("form", { class: "row", id: "upload" },
    h("label", {}, "Dataset (JSONL, CSV or a zip of image folders)", input),
    h("button", { type: "submit" }, "Upload"), progress);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const file = input.files[0];
    if (!file) return;
    result.replaceChildren();
    progress.hidden = false;
    progress.value = 0;
    upload(file, (f) => { progress.value = f; }).then(async (r) => {
      progress.hidden = true;
      if (r.ok) {
        result.replaceChildren(h("p", { id: "upload-ok" },
          `Uploaded ${r.body.filename}: ${r.body.examples} examples, `, statusBadge(r.body.status)));
        input.value = "";
        refresh();
      } else {
        result.replaceChildren(await uploadError(file, r.body?.error, r.status));
      }
    });
  });
  return h("section", { class: "card" }, h("h2", {}, "Upload"), form, result);
}

/** XMLHttpRequest, because fetch() reports no upload progress. */
function upload(file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", authHeaders().Authorization);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, body });
    });
    xhr.addEventListener("error", () => resolve({ ok: false, status: 0, body: null }));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file);
    xhr.send(form);
  });
}

/** The server's message, and when it names a line of a text file, that line with the
 * two around it, read back from the file the user picked. */
async function uploadError(file, error, status) {
  const box = h("div", { class: "upload-error", id: "upload-error" },
    h("strong", {}, "Rejected: "), error?.message || `HTTP ${status}`);
  const m = /\bline (\d+)\b/.exec(error?.message || "");
  if (m && file.size < 64 << 20 && !/\.(zip|png|jpe?g)$/i.test(file.name)) {
    const n = Number(m[1]);
    const lines = (await file.text()).split(/\r?\n/);
    const src = h("div", { class: "source" });
    for (let i = Math.max(1, n - 2); i <= Math.min(lines.length, n + 2); i++) {
      src.append(h("div", { class: i === n ? "error-line" : "", "data-line": i },
        h("span", { class: "ln" }, i), lines[i - 1].slice(0, 300)));
    }
    box.append(src);
  }
  return box;
}

// ---- models ----------------------------------------------------------------------------

async function modelsPage() {
  const list = h("div");
  const select = h("select", { id: "predict-model" });
  const text = h("textarea", { id: "predict-input", rows: 4, cols: 60,
    placeholder: "One input per line" });
  const out = h("div", { id: "predictions" });
  const form = h("form", { id: "predict" },
    h("div", { class: "row" }, h("label", { class: "field" }, "Model", select)),
    h("p", {}, h("label", { class: "field" }, "Inputs", text)),
    h("button", { type: "submit" }, "Predict"), out);
  main.append(h("h1", {}, "Models"),
    h("section", { class: "card" }, h("h2", {}, "Try it"), form),
    h("section", { class: "card" }, h("h2", {}, "Fine-tuned models"), list));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const inputs = text.value.split("\n").map((s) => s.trim()).filter(Boolean);
    try {
      const r = await api(`/v1/models/${encodeURIComponent(select.value)}/predict`,
        { method: "POST", body: { inputs } });
      out.replaceChildren(...r.predictions.map((p, i) => predictionView(inputs[i], p)));
    } catch (e) {
      showError(out, e);
    }
  });
  try {
    const models = await api("/v1/models?limit=100", { signal: view.signal });
    // The list also names the base models (as OpenAI's does); only fine-tuned ones predict.
    const tuned = models.data.filter((m) => m.job_id);
    select.replaceChildren(...tuned.map((m) => h("option", { value: m.id }, m.id)));
    list.replaceChildren(modelsTable(tuned));
  } catch (e) {
    showError(list, e);
  }
}

function modelsTable(models) {
  if (!models.length) return h("p", { class: "muted" }, "No models yet: a succeeded job publishes one.");
  return h("table", { id: "models" },
    h("tr", {}, ["Model", "Base", "Labels", "Val. accuracy", "Job", "Created"].map((t) => h("th", {}, t))),
    models.map((m) => h("tr", { "data-model": m.id },
      h("td", { class: "mono" }, m.id), h("td", {}, m.base_model),
      h("td", {}, (m.labels || []).join(", ")),
      h("td", { class: "num" }, fmt.pct(m.metrics?.validation?.accuracy)),
      h("td", {}, h("a", { class: "mono", href: `#/jobs/${m.job_id}` }, m.job_id)),
      h("td", {}, fmt.time(m.created)))));
}

/** One input's labels, highest score first, each with a bar. Multi-task predictions
 * show one block per task. */
function predictionView(input, p) {
  const block = h("div", { class: "prediction" }, h("strong", {}, input));
  const groups = p.tasks ? Object.entries(p.tasks) : [["", p]];
  for (const [task, q] of groups) {
    const top = new Set(q.labels || [q.label]);
    const scores = Object.entries(q.scores || {}).sort((a, b) => b[1] - a[1]);
    block.append(task ? h("div", { class: "muted" }, task) : "",
      h("div", { class: "scores" }, scores.flatMap(([label, s]) => {
        const b = h("div", { class: top.has(label) ? "score-bar top" : "score-bar" });
        b.style.width = `${Math.max(0.5, 100 * s)}%`;
        return [h("span", { class: "label" }, label), h("div", {}, b),
          h("span", { class: "num" }, s.toFixed(3))];
      })));
  }
  return block;
}

route();
