// The four views: Farm, Jobs, a Job, Submit. Each builds its part of the page, keeps it up to
// date (a job over Server-Sent Events, the lists by polling every 2 s) and returns a function
// that stops it.

import { api, el, bytes, ago, duration, badge, bar, toast, setLive } from "/assets/app.js";
import { lossPlot, drawLosses, SERIES } from "/assets/plot.js";

const POLL_MS = 2000;
const FINAL = new Set(["completed", "failed", "canceled"]);
const IMAGE_PARTS = new Set(["frame", "sweep", "stage", "lockstep", "sheet", "render"]);
/** Points kept per task for the loss plot (older ones are thinned out). */
const MAX_POINTS = 2000;

const blobUrl = (sha, name) => `/api/blobs/${sha}${name ? `?name=${encodeURIComponent(name)}` : ""}`;

/**
 * Polls `load` every 2 s while the view is open; `load` gets whether it is the first call.
 * Returns the function that stops it; its `now()` polls at once (after a change).
 */
function poll(load) {
  let stopped = false;
  let timer = null;
  let first = true;
  let running = false;
  const tick = async () => {
    running = true;
    try {
      await load(first);
      setLive("live");
    } catch (e) {
      setLive("offline");
      if (first) toast(e.message, "error");
    }
    first = false;
    running = false;
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  const stop = () => { stopped = true; clearTimeout(timer); };
  stop.now = () => {
    if (!running && !stopped) { clearTimeout(timer); tick(); }
  };
  return stop;
}

function taskFraction(t) {
  if (t.state === "succeeded") return 1;
  const p = t.progress;
  return p && p.total ? p.iteration / p.total : 0;
}

/** The job's progress, 0..1, over the tasks that render (shards follow their driver). */
function jobFraction(job) {
  const tasks = job.tasks.filter((t) => !["shard", "statistics"].includes(t.part.kind));
  if (job.state === "completed") return 1;
  if (tasks.length === 0) return 0;
  return tasks.reduce((s, t) => s + taskFraction(t), 0) / tasks.length;
}

function cancelButton(id, after) {
  return el("button.cancel.danger", {
    dataset: { jobId: id },
    onclick: async (e) => {
      e.preventDefault();
      e.currentTarget.disabled = true;
      try {
        await api(`/api/jobs/${id}/cancel`, { method: "POST" });
        toast("Job canceled");
      } catch (err) {
        toast(err.message, "error");
      }
      if (after) after();
    },
  }, "Cancel");
}

function retryButton(id, after) {
  return el("button.retry", {
    dataset: { jobId: id },
    onclick: async (e) => {
      e.preventDefault();
      e.currentTarget.disabled = true;
      try {
        await api(`/api/jobs/${id}/retry`, { method: "POST" });
        toast("Job queued again");
      } catch (err) {
        toast(err.message, "error");
      }
      if (after) after();
    },
  }, "Retry");
}

function jobActions(job, after) {
  if (!FINAL.has(job.state)) return [cancelButton(job.id, after)];
  if (job.state === "failed" || job.state === "canceled") return [retryButton(job.id, after)];
  return [];
}

// ----------------------------------------------------------------------------------------
// Farm

export function farmView(root) {
  const stats = el("section.stats");
  const workers = el("tbody");
  root.append(
    el("h1", {}, "Farm"),
    stats,
    el("section.panel", {},
      el("h2", {}, "Workers"),
      el("table.list#workers", {},
        el("thead", {}, el("tr", {}, ["Worker", "Device", "Memory", "State", "Task", "Iterations/s", "Done", "Failed"].map((h) => el("th", {}, h)))),
        workers)));
  const seen = new Map();
  return poll(async () => {
    const farm = await api("/api/farm");
    const card = (label, value, cls = "") => el(`div.stat${cls}`, {}, el("span.value", {}, String(value)), el("span.label", {}, label));
    const q = farm.queue;
    stats.replaceChildren(
      card("workers live", q.live_workers),
      card("tasks queued", q.tasks_queued, q.tasks_queued ? ".warn" : ""),
      card("tasks running", q.tasks_running, q.tasks_running ? ".busy" : ""),
      ...Object.entries(farm.pools).map(([pool, p]) => card(`${pool} queue · demand ${p.demand}`, p.queued, p.queued ? ".warn" : "")),
      ...["active", "queued", "completed", "failed", "canceled"].map((s) => card(`jobs ${s}`, farm.jobs[s] || 0, s === "failed" && farm.jobs[s] ? ".bad" : "")));
    const now = performance.now();
    workers.replaceChildren(...farm.workers.map((w) => {
      let rate = "";
      if (w.task) {
        const before = seen.get(w.id);
        if (before && before.task === w.task.id && w.task.iteration > before.iteration) {
          rate = ((w.task.iteration - before.iteration) / ((now - before.at) / 1000)).toFixed(1);
          seen.set(w.id, { task: w.task.id, iteration: w.task.iteration, at: now, rate });
        } else if (before && before.task === w.task.id) {
          rate = before.rate || "";
        } else {
          seen.set(w.id, { task: w.task.id, iteration: w.task.iteration, at: now, rate: "" });
        }
      }
      const task = w.task
        ? el("a", { href: `#/job/${w.task.job_id}` }, `task ${w.task.index}`, " ", bar(w.task.total ? w.task.iteration / w.task.total : 0), ` ${w.task.iteration}/${w.task.total}`)
        : "—";
      return el("tr", { dataset: { workerId: w.id } },
        el("td", {}, el("strong", {}, w.name || w.id.slice(0, 8))),
        el("td", {}, `${w.device} · ${w.threads} threads`),
        el("td", {}, bytes(w.memory_bytes)),
        el("td", {}, badge(w.state)),
        el("td", {}, task),
        el("td.num", {}, rate),
        el("td.num", {}, w.tasks_done),
        el("td.num", {}, w.tasks_failed));
    }));
    if (farm.workers.length === 0) workers.append(el("tr", {}, el("td.empty", { colSpan: 8 }, "No worker has registered yet.")));
  });
}

// ----------------------------------------------------------------------------------------
// Jobs

export function jobsView(root) {
  const rows = el("tbody");
  root.append(
    el("div.heading", {}, el("h1", {}, "Jobs"), el("a.button.primary", { href: "#/submit" }, "New job")),
    el("section.panel", {},
      el("table.list#jobs", {},
        el("thead", {}, el("tr", {}, ["Job", "State", "Progress", "Priority", "Owner", "Submitted", ""].map((h) => el("th", {}, h)))),
        rows)));
  let refresh = () => {};
  const stop = poll(async () => {
    const { jobs } = await api("/api/jobs?limit=100");
    rows.replaceChildren(...jobs.map((j) => {
      const f = jobFraction(j);
      return el("tr", { dataset: { jobId: j.id, state: j.state } },
        el("td", {}, el("a.job-link", { href: `#/job/${j.id}` }, j.name || j.id.slice(0, 8)), el("div.sub", {}, `${j.tasks.length} task${j.tasks.length === 1 ? "" : "s"}`)),
        el("td", {}, badge(j.state)),
        el("td", {}, bar(f), el("span.pct", {}, ` ${Math.round(f * 100)}%`)),
        el("td.num", {}, j.priority),
        el("td", {}, j.owner || "—"),
        el("td", {}, ago(j.created_unix_ms)),
        el("td.actions", {}, jobActions(j, () => refresh())));
    }));
    if (jobs.length === 0) rows.append(el("tr", {}, el("td.empty", { colSpan: 7 }, "No jobs yet: submit one.")));
  });
  refresh = () => stop.now();
  return stop;
}

// ----------------------------------------------------------------------------------------
// One job

function partLabel(t) {
  const p = t.part;
  switch (p.kind) {
    case "frame": return t.name || `frame ${p.index + 1}`;
    case "sweep": return p.label || t.name;
    case "stage": return `stage ${p.index + 1} of ${p.count}`;
    case "lockstep": return `print ${p.width}×${p.height}`;
    case "sheet": return "contact sheet";
    case "statistics": return "style statistics";
    case "shard": return `shard ${p.index + 1} of ${p.count}`;
    default: return t.name || `task ${t.index}`;
  }
}

/** The picture a task shows now: its result once it is an image, else its latest preview. */
function taskPicture(t) {
  if (t.state === "succeeded" && t.result && IMAGE_PARTS.has(t.part.kind)) return t.result.sha256;
  return t.progress && t.progress.preview ? t.progress.preview.sha256 : null;
}

function layoutOf(tasks) {
  const kinds = new Set(tasks.map((t) => t.part.kind));
  if (kinds.has("lockstep")) return "print";
  if (kinds.has("sweep")) return "sheet";
  if (kinds.has("stage")) return "stages";
  if (tasks.length > 1) return "filmstrip";
  return "single";
}

export function jobView(root, id) {
  const tasks = new Map();
  const history = new Map();
  let job = null;
  let focus = null;
  let showGrid = false;
  let source = null;
  let scheduled = false;

  const title = el("h1");
  const stateEl = el("span#job-state");
  const meta = el("div.meta");
  const actions = el("div.actions");
  const progressEl = el("div#progress.progress");
  const img = el("img#preview-img", { alt: "live preview" });
  const grid = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  grid.setAttribute("class", "tile-grid");
  const placeholder = el("div.placeholder", {}, "The first picture appears within 2 s of a task starting.");
  const stage = el("div#preview.preview", {}, img, grid, placeholder);
  const caption = el("div.caption");
  const gridToggle = el("label.toggle", {}, el("input#grid-toggle", { type: "checkbox", onchange: (e) => { showGrid = e.target.checked; render(); } }), " tile grid");
  const plot = lossPlot();
  const legend = el("div.legend", {}, SERIES.map(([k, label]) => el(`span.key.${k}`, {}, label)));
  const settings = el("dl.settings");
  const downloads = el("div.downloads");
  const taskArea = el("section.tasks");
  const taskTitle = el("h2");
  const error = el("p.error");

  root.append(
    el("div.heading", {}, el("div", {}, title, el("div.sub", {}, stateEl, meta)), actions),
    error,
    el("div.job-grid", {},
      el("section.panel.picture", {}, el("div.panel-head", {}, el("h2", {}, "Live preview"), gridToggle), stage, caption, progressEl),
      el("div.side", {},
        el("section.panel", {}, el("div.panel-head", {}, el("h2", {}, "Loss"), legend), plot),
        el("section.panel", {}, el("h2", {}, "Settings"), settings),
        el("section.panel", {}, el("h2", {}, "Downloads"), downloads))),
    el("section.panel", {}, taskTitle, taskArea));

  function remember(t) {
    const p = t.progress;
    if (!p || !p.losses) return;
    let pts = history.get(t.id);
    if (!pts) history.set(t.id, (pts = []));
    const last = pts[pts.length - 1];
    if (last && p.iteration < last.it) pts.length = 0; // a retry starts over
    if (last && last.it === p.iteration) return;
    pts.push({ it: p.iteration, ...p.losses });
    if (pts.length > MAX_POINTS) history.set(t.id, pts.filter((_, i) => i % 2 === 0));
  }

  function focusTask() {
    const all = [...tasks.values()];
    if (focus && tasks.has(focus)) return tasks.get(focus);
    const lockstep = all.find((t) => t.part.kind === "lockstep");
    if (lockstep) return lockstep;
    const running = all.filter((t) => t.state === "running" && t.progress).sort((a, b) => b.progress.iteration - a.progress.iteration);
    if (running.length) return running[0];
    const result = all.find((t) => t.job_result) || all.filter((t) => IMAGE_PARTS.has(t.part.kind)).pop();
    return result || all[0];
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; render(); });
  }

  function render() {
    if (!job) return;
    title.textContent = job.name || `Job ${job.id.slice(0, 8)}`;
    stateEl.replaceChildren(badge(job.state));
    meta.textContent = ` ${job.id} · ${job.owner || "unknown owner"} · priority ${job.priority} · submitted ${ago(job.created_unix_ms)}`;
    actions.replaceChildren(...jobActions(job, () => {}));
    error.textContent = job.state === "failed" || (job.error && !FINAL.has(job.state)) ? job.error : "";
    job.tasks = [...tasks.values()];

    const t = focusTask();
    const sha = t ? taskPicture(t) : null;
    if (sha && img.dataset.sha !== sha) {
      // Swapped once loaded, so the picture updates in place without flashing.
      const next = new Image();
      next.onload = () => {
        img.src = next.src;
        img.dataset.sha = sha;
        img.dataset.iteration = t.progress ? String(t.progress.iteration) : "";
        stage.classList.add("has-picture");
      };
      next.src = blobUrl(sha);
    }
    caption.textContent = t ? `${partLabel(t)} · ${t.state}` : "";
    const p = t && t.progress;
    progressEl.dataset.iteration = p ? String(p.iteration) : "0";
    progressEl.dataset.total = p ? String(p.total) : "0";
    const f = jobFraction(job);
    progressEl.replaceChildren(bar(f), el("span", {}, p ? ` iteration ${p.iteration} of ${p.total} · ` : " ", `${Math.round(f * 100)}% of the job`));

    const print = t && t.part.kind === "lockstep" ? t.part : null;
    gridToggle.hidden = !print;
    grid.replaceChildren();
    grid.classList.toggle("on", !!(print && showGrid));
    if (print && showGrid && print.tile_size) {
      grid.setAttribute("viewBox", `0 0 ${print.width} ${print.height}`);
      // Fitted like the picture (object-fit: contain), so the lines fall on the tiles.
      grid.setAttribute("preserveAspectRatio", "xMidYMid meet");
      const line = (x1, y1, x2, y2) => {
        const l = document.createElementNS("http://www.w3.org/2000/svg", "line");
        Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => l.setAttribute(k, v));
        grid.append(l);
      };
      for (let x = print.tile_size; x < print.width; x += print.tile_size) line(x, 0, x, print.height);
      for (let y = print.tile_size; y < print.height; y += print.tile_size) line(0, y, print.width, y);
    }

    drawLosses(plot, t ? history.get(t.id) || [] : []);

    const s = job.settings;
    const rows = [
      ["Size", s.image_size ?? "512 (default)"],
      ["Iterations", s.num_iterations ?? "500 (default)"],
      ["Optimizer", s.optimizer === "unspecified" ? "lbfgs" : s.optimizer],
      ["Content weight", s.content_weight ?? 1],
      ["Style weight", s.style_weight ?? 100],
      ["TV weight", s.tv_weight ?? 0],
      ["Seed", s.seed],
      ["Tiles", job.tiles && job.tiles.tile_size ? `${job.tiles.tile_size} px` : "none"],
      ...job.sweeps.map((w) => [`Sweep ${w.parameter}`, w.values.join(", ")]),
      ...(job.scales.length ? [["Stages", job.scales.join(" → ")]] : []),
    ];
    settings.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));

    const files = [];
    if (job.result) files.push(el("a.button.primary.download", { href: blobUrl(job.result.sha256, `${job.name || job.id}.png`), download: "" }, "Download result"));
    for (const task of job.tasks) {
      if (task.result && !task.intermediate && !task.job_result && IMAGE_PARTS.has(task.part.kind)) {
        files.push(el("a.button.download", { href: blobUrl(task.result.sha256, `${task.name || task.index}.png`), download: "" }, partLabel(task)));
      }
    }
    downloads.replaceChildren(...(files.length ? files : [el("p.sub", {}, "Results appear here as tasks finish.")]));

    const layout = layoutOf(job.tasks);
    taskTitle.textContent = { print: "Print in lock step", sheet: "Contact sheet", stages: "Stages", filmstrip: "Frames", single: "Task" }[layout];
    taskArea.className = `tasks ${layout}`;
    const shown = job.tasks.filter((x) => layout !== "print" || x.part.kind !== "shard");
    const cards = shown.map((x, i) => {
      const pic = taskPicture(x);
      const thumb = pic ? el("img", { src: blobUrl(pic), alt: "" }) : el("div.thumb-empty", {}, x.part.kind === "statistics" ? "Σ" : "…");
      const card = el(`button.task${t && x.id === t.id ? ".focus" : ""}`, {
        dataset: { taskId: x.id, state: x.state },
        onclick: () => { focus = x.id; render(); },
      }, el("div.thumb", {}, thumb), el("div.task-label", {}, partLabel(x)), bar(taskFraction(x)), badge(x.state));
      return layout === "stages" && i > 0 ? [el("span.arrow", {}, "→"), card] : [card];
    }).flat();
    const shards = job.tasks.filter((x) => x.part.kind === "shard");
    if (layout === "print" && shards.length) {
      cards.push(el("div.shards", {}, el("div.task-label", {}, `${shards.length} shard${shards.length === 1 ? "" : "s"}`), shards.map((x) => badge(x.state))));
    }
    taskArea.replaceChildren(...cards);
  }

  function connect() {
    source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
    source.onopen = () => setLive("live");
    source.addEventListener("snapshot", (e) => {
      job = JSON.parse(e.data);
      tasks.clear();
      for (const t of job.tasks) {
        tasks.set(t.id, t);
        // A running task's losses so far, from before the page was opened (or reconnected).
        if (t.loss_history && t.loss_history.length) history.set(t.id, t.loss_history.slice());
        remember(t);
      }
      schedule();
      if (FINAL.has(job.state)) { source.close(); setLive("done"); }
    });
    source.addEventListener("task", (e) => {
      const t = JSON.parse(e.data);
      tasks.set(t.id, t);
      remember(t);
      schedule();
    });
    source.addEventListener("job", (e) => {
      const j = JSON.parse(e.data);
      job = { ...j, tasks: job ? job.tasks : [] };
      schedule();
      if (FINAL.has(j.state)) {
        source.close();
        setLive("done");
        // The finished job's results, with every task's final state.
        api(`/api/jobs/${encodeURIComponent(id)}`).then((full) => {
          job = full;
          for (const t of full.tasks) tasks.set(t.id, t);
          schedule();
        }).catch((err) => toast(err.message, "error"));
      }
    });
    source.addEventListener("failure", (e) => {
      toast(JSON.parse(e.data).error, "error");
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (not signed in, unknown job): say why once.
        api(`/api/jobs/${encodeURIComponent(id)}`).catch((err) => { error.textContent = err.message; });
      }
      setLive(source.readyState === EventSource.CONNECTING ? "reconnecting" : "offline");
    };
  }
  connect();
  return () => { if (source) source.close(); };
}

// ----------------------------------------------------------------------------------------
// Submit

/** Uploaded files' blobs, so that planning then submitting uploads each file once. */
const uploaded = new WeakMap();

async function upload(file) {
  if (uploaded.has(file)) return uploaded.get(file);
  const blob = await api("/api/blobs", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  uploaded.set(file, blob);
  return blob;
}

function dropZone(name, label, multiple) {
  const files = [];
  const input = el("input.file", { type: "file", name, accept: "image/*", multiple });
  const thumbs = el("div.thumbs");
  const show = () => {
    thumbs.replaceChildren(...files.map((f, i) => {
      const url = URL.createObjectURL(f);
      return el("figure", {},
        el("img", { src: url, alt: f.name, onload: () => URL.revokeObjectURL(url) }),
        el("figcaption", {}, f.name),
        el("button.remove", { type: "button", title: "remove", onclick: () => { files.splice(i, 1); show(); } }, "×"));
    }));
    zone.classList.toggle("filled", files.length > 0);
  };
  const add = (list) => {
    for (const f of list) {
      if (!f.type.startsWith("image/")) { toast(`${f.name} is not an image`, "error"); continue; }
      if (!multiple) files.length = 0;
      files.push(f);
    }
    show();
  };
  input.addEventListener("change", () => { add(input.files); input.value = ""; });
  const zone = el(`label.drop#drop-${name}`, {
    ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); zone.classList.remove("over"); add(e.dataTransfer.files); },
  }, input, el("span.drop-label", {}, label), el("span.sub", {}, multiple ? "drop images here or click to choose" : "drop an image here or click to choose"), thumbs);
  return { zone, files };
}

function field(name, label, attrs = {}) {
  return el("label.field", {}, el("span", {}, label), el("input", { name, ...attrs }));
}

export function submitView(root) {
  const content = dropZone("content", "Content", true);
  const styles = dropZone("styles", "Style", true);
  const planOut = el("div#plan.plan");
  const form = el("form#submit-form", {},
    el("div.drops", {}, content.zone, styles.zone),
    el("div.fields", {},
      field("name", "Name", { type: "text", maxLength: 200, placeholder: "untitled" }),
      field("image_size", "Size (px, longer side)", { type: "number", min: 16, placeholder: "512" }),
      field("num_iterations", "Iterations", { type: "number", min: 1, placeholder: "500" }),
      field("content_weight", "Content weight", { type: "number", step: "any", min: 0, placeholder: "1" }),
      field("style_weight", "Style weight", { type: "number", step: "any", min: 0, placeholder: "100" }),
      field("tv_weight", "TV weight", { type: "number", step: "any", min: 0, placeholder: "0" }),
      field("seed", "Seed", { type: "number", min: 0, placeholder: "0" }),
      el("label.field", {}, el("span", {}, "Start from"),
        el("select", { name: "init" }, el("option", { value: "random" }, "noise"), el("option", { value: "content" }, "the content image"))),
      field("priority", "Priority", { type: "number", placeholder: "0" }),
      field("tile_size", "Tile size (lock step)", { type: "number", min: 0, placeholder: "none" }),
      el("label.field", {}, el("span", {}, "Sweep"),
        el("div.pair", {},
          el("select", { name: "sweep_parameter" }, ["", "style-weight", "content-weight", "tv-weight", "style-scale", "image-size", "num-iterations", "seed"].map((p) => el("option", { value: p }, p || "none"))),
          el("input", { name: "sweep_values", type: "text", placeholder: "e.g. 10, 100, 1000" }))),
      field("scales", "Stages (coarse to fine)", { type: "text", placeholder: "e.g. 256, 512" })),
    el("div.buttons", {},
      el("button#plan-button", { type: "button", onclick: () => go(false) }, "Dry run"),
      el("button#submit-button.primary", { type: "submit" }, "Submit")),
    planOut);
  form.addEventListener("submit", (e) => { e.preventDefault(); go(true); });
  root.append(el("h1", {}, "Submit a job"), el("section.panel", {}, form));

  const num = (v) => (v === "" ? undefined : Number(v));
  const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);

  async function go(submit) {
    const data = new FormData(form);
    if (!content.files.length || !styles.files.length) {
      toast("Add a content image and at least one style image.", "error");
      return;
    }
    const buttons = form.querySelectorAll(".buttons button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      planOut.replaceChildren(el("p.sub", {}, "Uploading…"));
      const contentBlobs = [];
      for (const f of content.files) contentBlobs.push(await upload(f));
      const styleBlobs = [];
      for (const f of styles.files) styleBlobs.push(await upload(f));
      const sweepParam = data.get("sweep_parameter");
      const body = {
        name: data.get("name") || "",
        content: contentBlobs,
        content_names: content.files.map((f) => f.name),
        styles: styleBlobs,
        image_size: num(data.get("image_size")),
        num_iterations: num(data.get("num_iterations")),
        content_weight: num(data.get("content_weight")),
        style_weight: num(data.get("style_weight")),
        tv_weight: num(data.get("tv_weight")),
        seed: num(data.get("seed")) || 0,
        init: data.get("init"),
        priority: num(data.get("priority")) || 0,
        tile_size: num(data.get("tile_size")) || 0,
        sweeps: sweepParam ? [{ parameter: sweepParam, values: list(data.get("sweep_values")) }] : [],
        scales: list(data.get("scales")).map(Number),
      };
      if (submit) {
        const { id } = await api("/api/jobs", { method: "POST", json: body });
        toast("Job submitted");
        location.hash = `#/job/${id}`;
        return;
      }
      const plan = await api("/api/plan", { method: "POST", json: body });
      const total = plan.tasks.reduce((s, t) => s + t.seconds, 0);
      const peak = Math.max(0, ...plan.tasks.map((t) => t.memory_bytes));
      planOut.replaceChildren(
        el("h2", {}, "Dry run"),
        el("p", {}, `${plan.tasks.length} task${plan.tasks.length === 1 ? "" : "s"}, output ${plan.width}×${plan.height}`,
          plan.tile_columns ? `, tiles ${plan.tile_columns}×${plan.tile_rows}` : "",
          ` · peak memory per task ${bytes(peak)} · about ${duration(total)} of work on two CPU cores`,
          plan.coordinator_memory_bytes ? ` · coordinator ${bytes(plan.coordinator_memory_bytes)}` : ""),
        el("table.list", {},
          el("thead", {}, el("tr", {}, ["#", "Task", "Pixels", "Memory", "Time"].map((h) => el("th", {}, h)))),
          el("tbody", {}, plan.tasks.map((t, i) => el("tr", {},
            el("td.num", {}, i),
            el("td", {}, partLabel({ part: t.part, name: t.name, index: i }), t.intermediate ? el("span.sub", {}, " (intermediate)") : ""),
            el("td", {}, `${t.width}×${t.height}`),
            el("td", {}, t.memory_bytes ? bytes(t.memory_bytes) : "—"),
            el("td", {}, t.seconds ? duration(t.seconds) : "—"))))));
    } catch (e) {
      planOut.replaceChildren(el("p.error", {}, e.message));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
  return () => {};
}
