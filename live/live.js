// The live view: topology boxes and charts, drawn from Prometheus's HTTP API
// (/api/v1/query for the boxes, /api/v1/query_range for the charts), every
// 2 s. nginx passes /api/ to the lab's Prometheus, so this page only ever
// asks its own origin.
//
// Two sources side by side:
// - the servers' own exporters (HAProxy's built-in one, RabbitMQ's plugin,
//   Debian's Redis, MariaDB and blackbox exporters), there from `./lab up`;
// - the app's own /metrics (clones, workers, baker), scraped as job="app",
//   each target labelled service="clone1" (worker1, baker...). The series
//   the page reads from it are named in APP below (common/src/metrics.rs
//   defines them); a panel with nothing to show says "no data yet".
"use strict";

const STEP = 2; // seconds: Prometheus scrapes every 2 s (lab.d/prometheus.yml.in)
const WINDOW = 300; // the charts' last 5 minutes
const RATE = "[10s]"; // five scrapes: a rate that moves within seconds

// The app's series (issue 10, its Rust side). Prometheus adds the target's
// labels: service ("clone2", "worker1", "baker") and role ("clone",
// "worker", "baker").
const APP = {
  requests: "lab_http_requests_total", // counter {route, method, status}
  latency: "lab_http_request_duration_seconds", // histogram {route}: _bucket{le}
  cache: "lab_cache_requests_total", // counter {backend, pattern, result="hit"|"miss"|"bypass"}
  queries: "lab_db_queries_total", // counter {pool="primary"|"replica"}: the clones' pools (an idle clone: ~2/s and ~4/s, its health check)
  lag: "lab_replica_lag_seconds", // gauge: the replica's lag as the app measures it
  jobs: "lab_jobs_total", // counter {event="enqueued"|"done"|"failed"|"dead_lettered"}
  running: "lab_jobs_running", // gauge: jobs a worker runs now
  depth: "lab_queue_depth", // gauge {state="ready"|"dead"}: the queue as each worker reads it
  sessions: "lab_sessions_total", // counter {store, event="created"|"found"|"missing"|"ended"}
};

// ------------------------------------------------------------------ the charts

// Each panel: one or more PromQL queries, each series labelled from its
// metric's labels. A panel whose queries all answer nothing says so.
const PANELS = [
  {
    id: "rps",
    title: "Requests per clone (req/s)",
    note: "HAProxy, per server: where the balancer sends the traffic",
    queries: [
      { q: `sum by (server) (rate(haproxy_server_http_responses_total{proxy="clones"}${RATE}))`, label: (m) => m.server },
    ],
    empty: "no traffic seen by HAProxy yet",
  },
  {
    id: "latency",
    title: "Latency p99 (ms)",
    note: "the app's histogram, per clone",
    queries: [
      {
        q: `1000 * histogram_quantile(0.99, sum by (le, service) (rate(${APP.latency}_bucket[30s])))`,
        label: (m) => m.service || "p99",
      },
    ],
    // HAProxy 2.6 has no histogram: until the app exports one, its average.
    fallback: {
      title: "Response time (ms)",
      note: "HAProxy: mean of each clone's last 1024 requests (p99 once the app exports it)",
      queries: [
        { q: `1000 * haproxy_server_total_time_average_seconds{proxy="clones"}`, label: (m) => m.server },
      ],
    },
    empty: "no requests timed yet",
  },
  {
    id: "hits",
    title: "Cache hit ratio (%)",
    note: "the app's lookups per backend; Redis's keyspace (sessions too)",
    queries: [
      {
        q: `100 * sum by (backend) (rate(${APP.cache}{result="hit"}[30s])) / sum by (backend) (rate(${APP.cache}[30s]))`,
        label: (m) => `app: ${m.backend || "cache"}`,
      },
      {
        q: `100 * rate(redis_keyspace_hits_total[30s]) / (rate(redis_keyspace_hits_total[30s]) + rate(redis_keyspace_misses_total[30s]))`,
        label: () => "Redis keyspace",
      },
    ],
    range: [0, 100],
    empty: "no cache lookups yet",
  },
  {
    id: "lag",
    title: "Replication lag (s)",
    note: "the replica's SHOW SLAVE STATUS; and as the app measures it",
    queries: [
      { q: `mysql_slave_status_seconds_behind_master{service="mariadb-replica"}`, label: () => "replica (server)" },
      { q: `max(${APP.lag})`, label: () => "as the app sees it" },
    ],
    empty: "no replica status yet (SQL thread stopped? its lag is then unknown)",
  },
  {
    id: "queries",
    title: "Database queries (q/s)",
    note: "each MariaDB server's own count: reads on the replica, writes on the primary, shards",
    queries: [
      { q: `rate(mysql_global_status_queries${RATE})`, label: (m) => (m.service || "").replace("mariadb-", "") },
      { q: `sum by (pool) (rate(${APP.queries}${RATE}))`, label: (m) => `app: ${m.pool}` },
    ],
    empty: "no MariaDB exporter data yet",
  },
  {
    id: "queue",
    title: "Queue depth (messages)",
    note: "RabbitMQ: every queue on the broker together, a few seconds behind; a worker: its own queue, read at each scrape",
    queries: [
      { q: `sum(rabbitmq_queue_messages_ready)`, label: () => "RabbitMQ ready" },
      { q: `sum(rabbitmq_queue_messages_unacked)`, label: () => "RabbitMQ unacked" },
      // Every worker reads the same queue: the largest reading, not a sum.
      { q: `max(${APP.depth}{state="ready"})`, label: () => "ready, as a worker reads it" },
    ],
    empty: "no queue data yet (RabbitMQ's plugin serves it from the broker's next start)",
  },
  {
    id: "sessions",
    title: "Sessions (per s)",
    note: "the clones' session lookups: missing = a cookie its clone could not find (part 1's memory sessions)",
    queries: [{ q: `sum by (event) (rate(${APP.sessions}${RATE}))`, label: (m) => m.event }],
    empty: "no session lookups yet (log in: part 1's guide)",
  },
];

// Readable on a projector and for most colour vision: Okabe-Ito, darkened.
const COLORS = ["#0063a6", "#d55e00", "#007a5a", "#b8006b", "#7a5c00", "#5a3ea8", "#00838f", "#333333"];

// ------------------------------------------------------------------ the boxes

// Rows of the topology. The clones and workers come from what Prometheus
// scrapes (the app tier's target file, rewritten by ./lab up partN) and
// what HAProxy balances over.
const FIXED = {
  edge: [
    { service: "nginx", title: "nginx", port: 18090 },
    { service: "haproxy", title: "HAProxy", port: 18080 },
  ],
  data: [
    { service: "redis", title: "Redis", port: 16379 },
    { service: "memcached", title: "Memcached", port: 11311 },
    { service: "mariadb-primary", title: "primary", port: 13306 },
    { service: "mariadb-replica", title: "replica", port: 13307 },
    { service: "mariadb-shard0", title: "shard0", port: 13316 },
    { service: "mariadb-shard1", title: "shard1", port: 13317 },
    { service: "rabbitmq", title: "RabbitMQ", port: 15673 },
  ],
};

// Instant queries for the boxes: name -> PromQL. Each answer is a map from
// a label's value (service, server...) to a number.
const INSTANT = {
  probe: { q: `probe_success`, key: "service" },
  lb: { q: `max by (server) (haproxy_server_status{proxy="clones",state="UP"})`, key: "server" },
  cloneRate: { q: `sum by (server) (rate(haproxy_server_http_responses_total{proxy="clones"}${RATE}))`, key: "server" },
  front: { q: `sum(rate(haproxy_frontend_http_requests_total{proxy="front"}${RATE}))`, key: null },
  redis: { q: `rate(redis_commands_processed_total${RATE})`, key: null },
  mysql: { q: `rate(mysql_global_status_queries${RATE})`, key: "service" },
  lag: { q: `mysql_slave_status_seconds_behind_master`, key: "service" },
  sql: { q: `mysql_slave_status_slave_sql_running`, key: "service" },
  io: { q: `mysql_slave_status_slave_io_running`, key: "service" },
  ready: { q: `sum(rabbitmq_queue_messages_ready)`, key: null },
  published: { q: `sum(rate(rabbitmq_global_messages_received_total${RATE}))`, key: null },
  memcached: { q: `sum(rate(${APP.cache}{backend="memcached"}${RATE}))`, key: null },
  appRate: { q: `sum by (service) (rate(${APP.requests}${RATE}))`, key: "service" },
  jobsDone: { q: `sum by (service) (rate(${APP.jobs}{event="done"}${RATE}))`, key: "service" },
  jobsRunning: { q: `sum by (service) (${APP.running})`, key: "service" },
  bakeSeconds: { q: `max by (service) (lab_bake_last_seconds)`, key: "service" },
  targets: { q: `max by (service, role) (probe_success{job="probe-health"})`, key: "service", keepLabels: true },
};

// ------------------------------------------------------------------ Prometheus

async function prom(path, params) {
  const url = new URL(`/api/v1/${path}`, location.origin);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const res = await fetch(url, { cache: "no-store" });
  if (!res.ok && res.status >= 500) throw new Error(`it answered ${res.status}`);
  const body = await res.json();
  if (body.status !== "success") throw new Error(body.error || "Prometheus refused the query");
  return body.data.result;
}

// Prometheus's clock, from the timestamps of its answers: the charts end
// at its "now", not the browser's (a laptop's clock may be off).
let serverNow = null;

async function instant() {
  const out = {};
  serverNow = null;
  await Promise.all(
    Object.entries(INSTANT).map(async ([name, { q, key, keepLabels }]) => {
      const rows = await prom("query", { query: q });
      const m = new Map();
      for (const r of rows) {
        const v = Number(r.value[1]);
        serverNow = Math.max(serverNow ?? 0, r.value[0]);
        m.set(key ? r.metric[key] : "", keepLabels ? { v, labels: r.metric } : v);
      }
      out[name] = m;
    }),
  );
  return out;
}

// ------------------------------------------------------------------ drawing

function fmt(v, digits) {
  if (v === undefined || v === null || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return "∞";
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
  return v.toFixed(v >= 100 ? 0 : digits ?? 1);
}

function box(parent, key) {
  let el = parent.querySelector(`[data-key="${key}"]`);
  if (!el) {
    el = document.createElement("div");
    el.className = "box";
    el.dataset.key = key;
    el.innerHTML = `<div class="name"><span class="title"></span><span class="state"></span></div>
      <div class="rate"></div><div class="detail"></div>`;
    parent.appendChild(el);
  }
  return el;
}

// state: "up" | "down" | "warn" | "none"
function paint(el, { title, state, words, rate, unit, detail }) {
  el.className = `box ${state === "none" ? "" : state}`;
  el.querySelector(".title").textContent = title;
  el.querySelector(".state").textContent = words;
  el.querySelector(".rate").innerHTML = rate === undefined ? "&nbsp;" : `${fmt(rate)} <span class="unit">${unit}</span>`;
  el.querySelector(".detail").textContent = detail || "";
}

function probeState(d, service) {
  const p = d.probe.get(service);
  if (p === undefined) return { state: "none", words: "no data" };
  return p === 1 ? { state: "up", words: "UP" } : { state: "down", words: "DOWN" };
}

function drawFixed(d) {
  for (const row of ["edge", "data"]) {
    const parent = document.getElementById(`row-${row}`);
    for (const s of FIXED[row]) {
      const st = probeState(d, s.service);
      const b = { title: s.title, ...st, detail: `:${s.port}` };
      switch (s.service) {
        case "haproxy":
          Object.assign(b, { rate: d.front.get(""), unit: "req/s" });
          break;
        case "nginx":
          b.detail = ":18090 baked pages + proxy";
          break;
        case "redis":
          Object.assign(b, { rate: d.redis.get(""), unit: "cmd/s" });
          break;
        case "memcached":
          Object.assign(b, { rate: d.memcached.get(""), unit: "lookups/s" });
          if (b.rate === undefined) b.detail = ":11311 (rate: the app's)";
          break;
        case "rabbitmq": {
          const ready = d.ready.get("");
          Object.assign(b, { rate: d.published.get(""), unit: "msg/s in" });
          b.detail = ready === undefined ? ":15673 (metrics: next start)" : `${fmt(ready, 0)} waiting`;
          break;
        }
        default:
          // MariaDB
          Object.assign(b, { rate: d.mysql.get(s.service), unit: "q/s" });
          if (s.service === "mariadb-replica") {
            const sql = d.sql.get(s.service), io = d.io.get(s.service), lag = d.lag.get(s.service);
            if (sql === 0 || io === 0) {
              if (b.state === "up") Object.assign(b, { state: "warn", words: "NOT REPLICATING" });
              b.detail = `${sql === 0 ? "SQL" : "IO"} thread stopped`;
            } else if (lag !== undefined) {
              b.detail = `lag ${fmt(lag, 0)} s`;
            }
          }
      }
      paint(box(parent, s.service), b);
    }
  }
}

function byNumber(a, b) {
  const na = Number(a.replace(/\D+/g, "")) || 0, nb = Number(b.replace(/\D+/g, "")) || 0;
  return a.replace(/\d+/g, "").localeCompare(b.replace(/\d+/g, "")) || na - nb;
}

function drawTier(d) {
  // The clones: those Prometheus probes and those HAProxy balances over.
  const roles = new Map();
  for (const [service, { labels }] of d.targets) roles.set(service, labels.role);
  for (const server of d.lb.keys()) if (!roles.has(server)) roles.set(server, "clone");
  const rows = { app: [], async: [] };
  for (const [service, role] of roles) (role === "clone" ? rows.app : rows.async).push(service);
  for (const [row, names] of Object.entries(rows)) {
    const parent = document.getElementById(`row-${row}`);
    names.sort((a, b) => (a === "baker") - (b === "baker") || byNumber(a, b)); // workers, then the baker
    for (const el of [...parent.children]) if (!names.includes(el.dataset.key)) el.remove();
    if (names.length === 0) {
      const el = box(parent, "none");
      paint(el, { title: row === "app" ? "no app tier" : "no workers", state: "none", words: "", detail: row === "app" ? "./lab up part3" : "./lab up part4" });
      continue;
    }
    parent.querySelector('[data-key="none"]')?.remove();
    for (const name of names) {
      const t = d.targets.get(name);
      const b = { title: name };
      if (t === undefined) Object.assign(b, { state: "none", words: "no data" });
      else Object.assign(b, t.v === 1 ? { state: "up", words: "UP" } : { state: "down", words: "DOWN" });
      if (row === "app") {
        const lb = d.lb.get(name);
        b.rate = d.cloneRate.get(name) ?? d.appRate.get(name);
        b.unit = "req/s";
        if (lb !== undefined) {
          b.detail = `balancer: ${lb === 1 ? "routes to it" : "does not route"}`;
          if (lb !== 1 && b.state === "up") Object.assign(b, { state: "warn", words: "NOT ROUTED" });
          if (lb !== 1 && b.state === "none") Object.assign(b, { state: "down", words: "DOWN" });
        }
      } else if (name === "baker") {
        const took = d.bakeSeconds.get(name);
        b.detail = took === undefined ? "no full bake yet" : `last full bake ${fmt(took)} s`;
      } else {
        b.rate = d.jobsDone.get(name);
        b.unit = "jobs/s";
        const running = d.jobsRunning.get(name);
        if (b.rate === undefined) b.detail = "jobs/s: from its /metrics";
        else if (running !== undefined) b.detail = `running ${fmt(running, 0)}`;
      }
      paint(box(parent, name), b);
    }
  }
}

// ------------------------------------------------------------------ charts

const charts = new Map(); // id -> { el, plot, key }

function panelEl(p) {
  let c = charts.get(p.id);
  if (c) return c;
  const el = document.createElement("div");
  el.className = "panel";
  el.innerHTML = `<h2></h2><div class="note"></div><div class="plot"></div>`;
  el.querySelector("h2").textContent = p.title;
  el.querySelector(".note").textContent = p.note;
  document.getElementById("charts").appendChild(el);
  c = { el, plot: null, key: "" };
  charts.set(p.id, c);
  return c;
}

async function series(queries, start, end) {
  const xs = [];
  for (let t = start; t <= end; t += STEP) xs.push(t);
  const index = new Map(xs.map((t, i) => [t, i]));
  const lines = [];
  const answers = await Promise.all(
    queries.map((q) => prom("query_range", { query: q.q, start, end, step: STEP }).then((rows) => ({ q, rows }))),
  );
  for (const { q, rows } of answers) {
    for (const r of rows) {
      const ys = new Array(xs.length).fill(null);
      for (const [t, v] of r.values) {
        const i = index.get(Math.round(t));
        const n = Number(v);
        if (i !== undefined && Number.isFinite(n)) ys[i] = n;
      }
      lines.push({ label: q.label(r.metric), ys });
    }
  }
  lines.sort((a, b) => byNumber(a.label, b.label));
  return { xs, lines };
}

function chartOpts(width, labels, range) {
  const font = "15px DejaVu Sans, Arial, sans-serif";
  const axis = { font, stroke: "#222", grid: { stroke: "#e3e3e3" }, ticks: { stroke: "#bbb" } };
  return {
    width,
    height: 160,
    legend: { show: true, live: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: range ? { range: () => range } : { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
    axes: [
      {
        ...axis,
        // A tick each minute, as HH:MM.
        splits: (u, i, min, max) => {
          const out = [];
          for (let t = Math.ceil(min / 60) * 60; t <= max; t += 60) out.push(t);
          return out;
        },
        values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })),
      },
      { ...axis, size: 60 },
    ],
    series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 3, spanGaps: false, points: { show: false } }))],
  };
}

async function drawPanel(p, start, end) {
  const c = panelEl(p);
  let view = p, data = await series(p.queries, start, end);
  if (data.lines.length === 0 && p.fallback) {
    view = { ...p, ...p.fallback };
    data = await series(p.fallback.queries, start, end);
  }
  c.el.querySelector("h2").textContent = view.title;
  c.el.querySelector(".note").textContent = view.note;
  const plotEl = c.el.querySelector(".plot");
  const hasData = data.lines.some((l) => l.ys.some((v) => v !== null));
  if (!hasData) {
    c.plot?.destroy();
    c.plot = null;
    c.key = "";
    plotEl.innerHTML = `<div class="nodata"><div>no data yet<small>${p.empty}</small></div></div>`;
    return;
  }
  plotEl.querySelector(".nodata")?.remove();
  const labels = data.lines.map((l) => l.label);
  const key = view.title + "|" + labels.join("|");
  const width = Math.max(plotEl.clientWidth, 200);
  const rows = [data.xs, ...data.lines.map((l) => l.ys)];
  if (c.plot && c.key === key && c.plot.width === width) {
    c.plot.setData(rows);
  } else {
    c.plot?.destroy();
    c.plot = new uPlot(chartOpts(width, labels, p.range), rows, plotEl);
    c.key = key;
  }
  // The legend says each series' latest value: lines that lie on top of
  // each other (three clones, round robin) still read apart.
  const legend = c.plot.root.querySelectorAll(".u-legend .u-series");
  data.lines.forEach((l, i) => {
    const last = [...l.ys].reverse().find((v) => v !== null);
    // (uPlot lists the x series in the legend only when it is live.)
    const el = legend[i + legend.length - data.lines.length]?.querySelector(".u-label");
    if (el) el.textContent = `${l.label} ${fmt(last)}`;
  });
}

// ------------------------------------------------------------------ the loop

let busy = false;
async function tick() {
  if (busy) return; // Prometheus slower than 2 s: skip a beat rather than pile up
  busy = true;
  const status = document.getElementById("status");
  try {
    const d = await instant();
    const end = Math.floor((serverNow ?? Date.now() / 1000) / STEP) * STEP;
    const start = end - WINDOW;
    drawFixed(d);
    drawTier(d);
    await Promise.all(PANELS.map((p) => drawPanel(p, start, end)));
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "status";
    document.body.classList.remove("stale");
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    status.textContent = `no answer from Prometheus (${e.message}): ./lab status; ./lab up starts it`;
    status.className = "status error";
    document.body.classList.add("stale");
  } finally {
    busy = false;
  }
}

for (const p of PANELS) panelEl(p);
tick();
setInterval(tick, STEP * 1000);
