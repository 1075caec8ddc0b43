// motionmask console: plain JS, no build step. Stats come by Server-Sent Events (/api/live),
// pictures by one WebSocket per visible camera tile (/ws/cameras/<name>), curves and exports by
// polling the JSON endpoints. A tile that is off-screen or in a hidden tab closes its stream.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
// the order of the kind buttons; the buttons themselves are the kinds the daemon publishes
const ORDER = ["motion", "trimap", "refined", "student", "fused"];
const TINT = { motion: "#ff3b3b", trimap: "#ffcc00", refined: "#3bd1ff", student: "#7dff5a", fused: "#ff6bff" };
const OTHER_TINT = "#ff9d3b";
const STILL_EVERY_MS = 5000;
const tiles = {};
let stillMode = localStorage.getItem("motionmask.still") === "1";
let overlay = localStorage.getItem("motionmask.overlay") || "tint";  // tint | outline | both
let lastStatus = null;

function fmt(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  return typeof v === "number" ? v.toFixed(digits) : String(v);
}
function dur(s) {
  s = Math.floor(s || 0);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
function percentile(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}
function setField(root, name, text, value) {
  const el = root.querySelector(`[data-field="${name}"]`);
  if (!el) return;
  if (el.textContent !== text) el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

// ---- one camera tile ----------------------------------------------------------------------
class Tile {
  constructor(name) {
    this.name = name;
    this.kind = "motion";
    this.onScreen = false;
    this.ws = null;
    this.timer = null;
    this.pending = null;   // newest unit not drawn yet (latest wins here too)
    this.drawing = false;
    this.latencies = [];
    this.drawn = 0;
    this.el = $("#tile-template").content.firstElementChild.cloneNode(true);
    this.el.dataset.camera = name;
    $(".name", this.el).textContent = name;
    this.canvas = $("canvas", this.el);
    this.ctx = this.canvas.getContext("2d");
    this.tint = document.createElement("canvas");
    this.edge = document.createElement("canvas");
    this.edgeCtx = this.edge.getContext("2d", { willReadFrequently: true });
    $("#cameras").appendChild(this.el);
    this.renderKinds([]);
    new IntersectionObserver((entries) => {
      this.onScreen = entries[entries.length - 1].isIntersecting;
      this.sync();
    }).observe(this.el);
  }

  // the kinds this camera's masks came in (the console's subscription sees them); the one shown
  // stays listed even before its first mask
  renderKinds(kinds) {
    const box = $(".kinds", this.el);
    const seen = kinds.includes(this.kind) ? kinds : kinds.concat([this.kind]);
    const want = ORDER.filter((k) => seen.includes(k)).concat(seen.filter((k) => !ORDER.includes(k)).sort());
    if (box.dataset.kinds === want.join(",")) return;
    box.dataset.kinds = want.join(",");
    box.replaceChildren(...want.map((k) => {
      const b = document.createElement("button");
      b.textContent = k;
      b.className = k === this.kind ? "on" : "";
      b.onclick = () => this.setKind(k);
      return b;
    }));
  }

  setKind(kind) {
    this.kind = kind;
    for (const b of $(".kinds", this.el).children) b.className = b.textContent === kind ? "on" : "";
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ kind }));
    if (stillMode) this.fetchStill();
  }

  // stream only while the tile can be seen: on screen and the tab visible
  sync() {
    const want = this.onScreen && !document.hidden;
    if (!want) return this.stop();
    if (stillMode) {
      this.closeWs();
      if (!this.timer) { this.fetchStill(); this.timer = setInterval(() => this.fetchStill(), STILL_EVERY_MS); }
    } else {
      if (this.timer) { clearInterval(this.timer); this.timer = null; }
      if (!this.ws) this.openWs();
    }
  }

  stop() {
    this.closeWs();
    if (this.timer) { clearInterval(this.timer); this.timer = null; }
  }

  openWs() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws/cameras/${encodeURIComponent(this.name)}?kind=${this.kind}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e) => this.receive(e.data);
    ws.onopen = () => { if (ws.closeWhenOpen) ws.close(); };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      setTimeout(() => this.sync(), 2000);  // the console restarted, or the network blinked
    };
    this.ws = ws;
  }

  closeWs() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    if (ws.readyState === WebSocket.CONNECTING) ws.closeWhenOpen = true;  // closing now would log an error
    else ws.close();
  }

  async fetchStill() {
    try {
      const r = await fetch(`/api/cameras/${encodeURIComponent(this.name)}/still?kind=${this.kind}`, { cache: "no-store" });
      if (r.ok) this.receive(await r.arrayBuffer());
    } catch (e) { /* the next tick tries again */ }
  }

  receive(buf) {
    this.pending = buf;
    if (!this.drawing) this.drawLoop();
  }

  async drawLoop() {
    this.drawing = true;
    while (this.pending) {
      const buf = this.pending;
      this.pending = null;
      try { await this.draw(buf); } catch (e) { console.warn("draw failed", e); }
    }
    this.drawing = false;
  }

  async draw(buf) {
    const arrived = Date.now();
    const view = new DataView(buf);
    const n = view.getUint32(0);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const m = view.getUint32(4 + n);
    const jpeg = buf.slice(8 + n, 8 + n + m);
    const maskBytes = buf.slice(8 + n + m);
    const fh = head.frame, mh = head.mask;
    if (mh && mh.capture_ns) {
      this.latencies.push(arrived - mh.capture_ns / 1e6);
      if (this.latencies.length > 200) this.latencies.shift();
    }
    const frame = fh ? await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })) : null;
    let mask = null;
    if (mh && maskBytes.byteLength) {
      if (mh.encoding === "png") {
        mask = await createImageBitmap(new Blob([maskBytes], { type: "image/png" }));
      } else {  // u8: raw bytes, row-major
        const px = new Uint8Array(maskBytes), img = new ImageData(mh.width, mh.height);
        for (let i = 0; i < px.length; i++) { img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = px[i]; img.data[4 * i + 3] = 255; }
        mask = await createImageBitmap(img);
      }
    }
    const W = frame ? frame.width : mask ? mask.width : 0, H = frame ? frame.height : mask ? mask.height : 0;
    if (!W) return;
    const c = this.canvas, ctx = this.ctx;
    if (c.width !== W || c.height !== H) { c.width = W; c.height = H; }
    ctx.globalCompositeOperation = "source-over";
    ctx.globalAlpha = 1;
    let outlined = 0;
    if (frame) {
      ctx.drawImage(frame, 0, 0);
      if (mask && overlay !== "outline") {
        // tint: mask x colour (black where 0), added over the frame with "screen"
        const t = this.tint, tc = t.getContext("2d");
        if (t.width !== mask.width || t.height !== mask.height) { t.width = mask.width; t.height = mask.height; }
        tc.globalCompositeOperation = "source-over";
        tc.drawImage(mask, 0, 0);
        tc.globalCompositeOperation = "multiply";
        tc.fillStyle = TINT[this.kind] || OTHER_TINT;
        tc.fillRect(0, 0, t.width, t.height);
        ctx.globalCompositeOperation = "screen";
        ctx.globalAlpha = 0.85;
        ctx.drawImage(t, 0, 0, W, H);
      }
    } else if (mask) {
      ctx.drawImage(mask, 0, 0, W, H);  // no frames published: the mask alone
    }
    if (mask && overlay !== "tint") outlined = this.outline(mask, W, H);
    c.dataset.overlay = overlay;
    c.dataset.outlined = String(outlined);
    if (frame) frame.close();
    if (mask) mask.close();
    this.drawn += 1;
    c.dataset.drawn = String(this.drawn);
    c.dataset.frame = String((fh || mh).frame);
    const p50 = percentile(this.latencies, 0.5), p99 = percentile(this.latencies, 0.99);
    setField(this.el, "latency", p50 === null ? "-" :
      `p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms · frame ${(fh || mh).frame}${fh ? "" : " (masks only)"} · viewer drops ${head.drops || 0}`, p50);
  }

  // the mask's boundary (>= 0.5 next to < 0.5) in the kind's colour, opaque, one mask pixel wide
  // (two screen pixels at least); a few ms for a VGA mask, and only while the outline is on
  outline(mask, W, H) {
    const w = mask.width, h = mask.height, e = this.edge, ec = this.edgeCtx, ctx = this.ctx;
    if (e.width !== w || e.height !== h) { e.width = w; e.height = h; }
    ec.globalCompositeOperation = "copy";
    ec.drawImage(mask, 0, 0);
    const img = ec.getImageData(0, 0, w, h), d = img.data, on = new Uint8Array(w * h);
    for (let i = 0; i < on.length; i++) on[i] = d[4 * i] >= 128 ? 1 : 0;
    const hex = TINT[this.kind] || OTHER_TINT, r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
    let n = 0;
    for (let y = 0, i = 0; y < h; y++) {
      for (let x = 0; x < w; x++, i++) {
        const j = 4 * i;
        if (on[i] && (x === 0 || y === 0 || x === w - 1 || y === h - 1 || !on[i - 1] || !on[i + 1] || !on[i - w] || !on[i + w])) {
          d[j] = r; d[j + 1] = g; d[j + 2] = b; d[j + 3] = 255; n++;
        } else d[j + 3] = 0;
      }
    }
    ec.putImageData(img, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = false;  // crisp lines, in exactly the kind's colour
    const thin = W / w < 2;
    for (const [dx, dy] of thin ? [[0, 0], [1, 0], [0, 1]] : [[0, 0]]) ctx.drawImage(e, dx, dy, W, H);
    ctx.imageSmoothingEnabled = true;
    return n;
  }

  update(c, st, extra) {
    const state = $(".state", this.el);
    state.textContent = c.state + (c.state === "restarting" && c.restart_in_s != null ? ` (${c.restart_in_s}s)` : "");
    state.className = "badge state " + c.state;
    setField(this.el, "fps", fmt(c.fps, 1), c.fps);
    for (const k of ["frames", "kept", "pruned", "drops", "restarts", "shots"]) setField(this.el, k, fmt(c[k]), c[k]);
    const buf = ((st.buffer || {}).by_camera || {})[this.name] || 0;
    setField(this.el, "buffer", fmt(buf), buf);
    const reasons = Object.entries(c.pruned_by || {}).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${n}`);
    setField(this.el, "pruned_by", reasons.length ? "pruned: " + reasons.join(", ") : "");
    const size = c.size ? ` ${c.size[0]}x${c.size[1]}` : "";
    setField(this.el, "source", `${c.source}${size} · up ${dur(c.up_s)}`);
    setField(this.el, "last_error", c.last_error ? `last error: ${c.last_error}` : "");
    const link = c.source_link;  // network sources only
    const lb = $(".link", this.el);
    lb.textContent = link && link.state !== "running" ? `source ${link.state}` : "";
    lb.className = "badge link " + (link ? link.state : "");
    lb.hidden = !lb.textContent;
    setField(this.el, "source_link", !link || !link.error ? "" : link.state === "running" ?
      `source back since ${new Date(link.since * 1000).toLocaleTimeString()}, last drop: ${link.error}` :
      `source ${link.state} since ${new Date(link.since * 1000).toLocaleTimeString()}: ${link.error}`);
    const q = (extra && extra.quality) || {};
    setField(this.el, "quality", q.grade === "unknown" || q.up == null ? "-" :
      `${q.grade} · up ${(100 * q.up).toFixed(1)}% · ${q.reconnects} reconnects · ${q.stalls} stalls (last ${dur(q.window_s)})`, q.grade);
    if (extra && extra.kinds) this.renderKinds(extra.kinds);
  }
}

// ---- status (SSE) -------------------------------------------------------------------------
function render(msg) {
  const st = msg.status, con = msg.console || {};
  const conn = $("#conn");
  if (!st || con.error) {
    conn.textContent = con.error ? "daemon unreachable" : "waiting";
    conn.className = "badge down";
    conn.title = con.error || "";
  } else {
    conn.textContent = "live";
    conn.className = "badge live";
  }
  if (st) {
    lastStatus = st;
    const d = $("#daemon");
    d.textContent = `daemon pid ${st.pid} v${st.version}, up ${dur(st.uptime_s)}${st.stopping ? ", stopping" : ""}`;
    d.dataset.uptime = String(st.uptime_s);
    document.body.dataset.uptime = String(st.uptime_s);
    for (const [name, c] of Object.entries(st.cameras || {})) {
      if (!tiles[name]) tiles[name] = new Tile(name);
      tiles[name].update(c, st, (con.cameras || {})[name]);
    }
    const b = st.buffer || {};
    $("#buffer").textContent = `buffer ${b.name || ""}: ${b.fill || 0}/${b.capacity || 0} samples (${fmt(100 * (b.fill_fraction || 0))}%), puts ${b.puts || 0}, drops ${b.drops_total || 0}, drawn ${b.samples_drawn || 0}`;
    const p = st.publisher || {};
    $("#publisher").textContent = p.endpoint ? `masks ${p.endpoint}: sent ${p.sent || 0}, dropped ${p.dropped || 0}` : "publishing off";
    renderLearnerLine(st.learner);
  }
  $("#console-info").textContent = `console ${con.url || location.origin}: ${con.clients || 0} streams open, viewer drops ${con.stream_drops || 0}; reads ${con.control || "?"} and ${con.masks || "no mask stream"}`;
  renderEvents(msg.events || []);
}

function renderLearnerLine(l) {
  const el = $("#learner");
  if (!l) { el.textContent = "no learner (learner.enabled: false)"; return; }
  el.classList.remove("muted");
  const act = l.state === "running" && l.activity && l.activity !== "running" ? ` (${l.activity})` : "";
  const ck = l.checkpoint_step == null ? "no checkpoint yet" : `checkpoint step ${l.checkpoint_step} (${dur(l.checkpoint_age_s)} ago)`;
  el.textContent = `${l.state}${act} on ${l.device || "?"}: step ${l.step || 0}, loss ${fmt(l.loss, 3)}, ` +
    `${fmt(l.crops_per_s || 0)} crops/s, ${ck}, bootstrap round ${l.bootstrap_round || 0}, restarts ${l.restarts || 0}` +
    (l.last_error ? `, last error: ${l.last_error}` : "");
  el.dataset.step = String(l.step || 0);
}

function renderEvents(events) {
  const ol = $("#events");
  const key = events.length ? events[0].time + events[0].text + events.length : "";
  if (ol.dataset.key === key) return;
  if (ol.dataset.key !== undefined && events.length && events[0].subject === "export") pollExports();
  ol.dataset.key = key;
  ol.replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    li.className = e.level;
    li.dataset.subject = e.subject;
    const t = document.createElement("time");
    t.textContent = new Date(e.time * 1000).toLocaleTimeString();
    li.append(t, e.text);
    return li;
  }));
}

// ---- learner curves and exports (polled) --------------------------------------------------
const plots = {};
const PALETTE = ["#ff6b6b", "#4dabf7", "#69db7c", "#ffd43b", "#da77f2", "#ff922b"];

function plot(id, xLabel, names, data) {
  const el = document.getElementById(id);
  const key = names.join(",");
  if (!plots[id] || plots[id].key !== key) {
    if (plots[id]) plots[id].u.destroy();
    const series = [{ label: xLabel }, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true }))];
    const opts = { width: Math.max(300, el.clientWidth || 380), height: 200, series,
      axes: [{ stroke: "#8a949c", grid: { stroke: "#2b3238" } }, { stroke: "#8a949c", grid: { stroke: "#2b3238" } }],
      scales: { x: { time: false } }, legend: { show: true } };
    plots[id] = { key, u: new uPlot(opts, data, el) };
  } else {
    plots[id].u.setData(data);
  }
  const points = data.length > 1 ? data[1].filter((v) => v !== null && v !== undefined).length : 0;
  el.dataset.points = String(points);
}

async function pollLearner() {
  try {
    const r = await fetch("/api/learner", { cache: "no-store" });
    if (r.status === 200) {
      const l = await r.json();
      const c = l.curve || {};
      const heads = (l.heads || ["loss"]).filter((h) => c[h]);
      if ((c.step || []).length) {
        plot("loss-plot", "step", heads, [c.step, ...heads.map((h) => c[h])]);
        plot("rate-plot", "step", ["crops/s"], [c.step, c.crops_per_s]);
      }
      const rounds = l.bootstrap_rounds || [];
      if (rounds.length) plot("boot-plot", "round", ["agreement"], [rounds.map((r) => r.round), rounds.map((r) => r.agreement)]);
      $("#curve-source").textContent = `curves from ${l.curve_source}`;
      const ck = l.checkpoints;
      $("#checkpoints").textContent = ck == null ? "checkpoints: the run folder is not readable from here" :
        !ck.length ? "checkpoints: none yet" : "checkpoints on disk: " + ck.map((c) =>
          `step ${c.step} (${dur(Date.now() / 1000 - c.time)} ago, ${(c.bytes / 2 ** 20).toFixed(1)} MB)`).join(", ");
      $("#checkpoints").dataset.count = String(ck ? ck.length : 0);
    }
  } catch (e) { /* shown as "daemon unreachable" by the status stream */ }
}

function rows(tbody, items, cells) {
  $(tbody).replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    const values = cells(item);
    if (values.cls) tr.className = values.cls;
    for (const text of values.cells || values) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}
const clock = (t) => t ? new Date(t * 1000).toLocaleString() : "-";
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

async function pollExports() {
  try {
    const r = await fetch("/api/exports", { cache: "no-store" });
    if (!r.ok) return;
    const ex = await r.json();
    $("#exports-note").textContent = ex.readable ? `${ex.dir}: LATEST ${ex.latest || "none"}` : (ex.note || "");
    rows("#exports tbody", ex.versions || [], (v) => [v.version, fmt(v.step), v.created || "-", fmt(v.holdout_iou, 3),
      fmt(v.holdout_bce, 4), v.latest ? "LATEST" : v.previous ? "previous" : "",
      (v.pulled_by || []).map((p) => p.device).filter((d, i, a) => a.indexOf(d) === i).join(", ") || "-"]);
    const g = ex.gate;
    $("#gate").textContent = !g ? "the daemon's learner does not export (export.enabled: false, or no learner)" :
      g.state !== "exporting" ? `export gate ${g.state}: ${g.reason || ""}` :
      `export gate: ${g.shipped} shipped, ${g.skipped} skipped, ${g.failed} failed (holdout of ${g.holdout_samples} samples)`;
    rows("#decisions tbody", ex.decisions || [], (d) => ({ cls: d.outcome,
      cells: [clock(d.time), fmt(d.step), d.outcome, d.version || "-", d.reason || ""] }));
    const s = ex.server;
    $("#served").textContent = !s ? "no bundle server (export.serve: false, or export off)" :
      `served at ${s.endpoint} (announced ${s.announced || "nothing yet"}): ${plural(s.pulls_total, "pull")} by ` +
      `${plural((ex.devices || []).length, "device")}, ${(s.bytes_served / 2 ** 20).toFixed(1)} MB served`;
    rows("#pulls tbody", ex.pulls || [], (p) => [p.device, p.version, clock(p.time), (p.bytes / 2 ** 20).toFixed(2), fmt(p.seconds, 1)]);
  } catch (e) { /* next poll */ }
}

// ---- start --------------------------------------------------------------------------------
function start() {
  const still = $("#still");
  still.checked = stillMode;
  still.onchange = () => {
    stillMode = still.checked;
    localStorage.setItem("motionmask.still", stillMode ? "1" : "0");
    for (const t of Object.values(tiles)) { t.stop(); t.sync(); }
  };
  const ov = $("#overlay");
  ov.value = overlay;
  ov.onchange = () => { overlay = ov.value; localStorage.setItem("motionmask.overlay", overlay); };
  document.addEventListener("visibilitychange", () => { for (const t of Object.values(tiles)) t.sync(); });
  const es = new EventSource("/api/live");
  es.addEventListener("status", (e) => render(JSON.parse(e.data)));
  es.onerror = () => { const c = $("#conn"); c.textContent = "console unreachable"; c.className = "badge down"; };
  pollLearner(); pollExports();
  setInterval(pollLearner, 5000);
  setInterval(pollExports, 10000);
}
start();
