// herd dashboard: polls /dashboard/api/* and renders tables and two uPlot charts.
// No inline script, no request outside this router (the page's CSP forbids both).
"use strict";

(function () {
  const API = "/dashboard/api/";
  const POLL = { overview: 5000, traffic: 15000, health: 15000, audit: 30000 };
  const state = { window: "hour", traffic: null, charts: {}, errors: {} };

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = document.createElement("td");
        td.appendChild(cell);
        tr.appendChild(td);
      } else if (cell && typeof cell === "object") {
        tr.appendChild(el("td", cell.text, cell.cls));
      } else {
        tr.appendChild(el("td", cell));
      }
    }
    return tr;
  }

  function fill(tableId, rows, emptyText, columns) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = el("td", emptyText, "empty");
      td.colSpan = columns;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const r of rows) body.appendChild(r);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const gib = n / 1024 ** 3;
    return gib >= 10 ? gib.toFixed(0) + " GiB" : gib.toFixed(1) + " GiB";
  }

  function ms(v) { return v === null || v === undefined ? "–" : Math.round(v) + " ms"; }

  function pct(v) { return (v * 100).toFixed(v && v < 0.1 ? 1 : 0) + "%"; }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }

  function showErrors() {
    const text = Object.values(state.errors).filter(Boolean).join("; ");
    $("error").hidden = !text;
    $("error").textContent = text;
  }

  async function getJson(name) {
    try {
      const reply = await fetch(API + name, { cache: "no-store", credentials: "same-origin" });
      const body = await reply.json().catch(() => null);
      if (!reply.ok) {
        const why = body && body.error ? (body.error.message || body.error) : reply.statusText;
        throw new Error(API + name + ": " + reply.status + " " + why);
      }
      state.errors[name] = null;
      return body;
    } catch (ex) {
      state.errors[name] = String(ex.message || ex);
      return null;
    } finally {
      showErrors();
    }
  }

  // -- overview: header, nodes, drift ------------------------------------------

  function memoryText(node) {
    const m = node.metrics || {};
    const parts = [];
    if (m.memory && m.memory.total) {
      const used = m.memory.total - (m.memory.available || 0);
      parts.push("RAM " + bytes(used) + " / " + bytes(m.memory.total));
    }
    if (m.swap && m.swap.used) parts.push("swap " + bytes(m.swap.used));
    for (const gpu of m.gpus || []) {
      parts.push("GPU" + gpu.index + " " + bytes(gpu.memory_used) + " / " + bytes(gpu.memory_total));
    }
    return parts.length ? parts.join(", ") : (node.agent ? "not reported" : "unknown (no agent)");
  }

  function renderOverview(o) {
    $("fleet").textContent = o.fleet;
    const rev = o.revision;
    const badge = $("revision");
    if (rev.applied === null) {
      badge.textContent = "serving revision " + rev.served + " (no applied revision found)";
      badge.className = "badge unknown";
    } else if (rev.serves_applied) {
      badge.textContent = "revision " + rev.served + " applied and served";
      badge.className = "badge ok";
    } else {
      badge.textContent = "revision " + rev.applied + " applied, " + rev.served + " served" +
        (rev.reload_error ? ": " + rev.reload_error : "");
      badge.className = "badge critical";
    }
    badge.title = "sha256 " + rev.sha256 + (rev.applied_age_s !== null ? ", applied " + ago(rev.applied_age_s) : "");
    const up = o.nodes.filter((n) => n.state === "up").length;
    $("nodes-up").textContent = up + " of " + o.nodes.length + " nodes up";
    $("nodes-up").className = "badge " + (up === o.nodes.length ? "ok" : up ? "warning" : "critical");
    $("updated").textContent = "updated " + new Date(o.generated_at * 1000).toLocaleTimeString();

    fill("nodes", o.nodes.map((n) => {
      const tr = row([
        { text: n.name, cls: "" },
        { text: n.state + (n.last_error && n.state !== "up" ? ": " + n.last_error : ""), cls: "state-" + n.state },
        n.found,
        (n.models_loaded || []).join(", ") || "–",
        { text: n.in_flight + " / " + n.max_concurrency, cls: "num" },
        { text: n.waiting, cls: "num" },
        { text: pct(n.error_rate || 0), cls: "num" },
        memoryText(n),
      ]);
      tr.dataset.node = n.name;
      tr.title = n.url + " · " + n.admission;
      return tr;
    }), "no nodes in the manifest", 8);

    const d = o.drift;
    $("drift-summary").textContent = d.in_sync
      ? "in sync: herd plan has nothing to do"
      : d.changes + " change(s) pending" + (d.unreachable.length ? ", unreachable: " + d.unreachable.join(", ") : "") +
        (d.undeclared ? ", " + d.undeclared + " undeclared model(s)" : "");
    fill("drift", d.nodes.filter((n) => !n.reachable || n.pull.length || n.warm.length || n.undeclared.length).map((n) => row([
      n.node,
      n.pull.map((p) => p.model).join(", ") || "–",
      n.warm.join(", ") || "–",
      n.undeclared.join(", ") || "–",
      n.reachable ? "" : { text: "unreachable: " + (n.error || "?"), cls: "state-down" },
    ])), "every node holds what the manifest places on it", 5);
    const errors = $("drift-errors");
    errors.replaceChildren(...d.errors.map((e) => el("li", e)));
    document.body.dataset.overview = "1";
  }

  // -- traffic: charts and usage -----------------------------------------------

  function chartSize(div) {
    return { width: Math.max(200, div.clientWidth), height: 170 };
  }

  function makeChart(id, series, data, points) {
    const div = $(id);
    const opts = {
      ...chartSize(div),
      // Points as well as lines where a lone busy minute between idle (empty)
      // ones would otherwise not show at all.
      series: [{}, ...series.map((s) => ({ points: { show: points, size: 4 }, ...s }))],
      axes: [{}, { size: 50 }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(opts, data, div);
  }

  function renderCharts() {
    const t = state.traffic;
    if (!t || !t.available || typeof uPlot === "undefined") return;
    const w = t.windows[state.window];
    const s = w.series;
    const errorsPerMinute = s.errors.map((e) => e * 60 / w.bucket_s);
    const rpm = [s.t, s.rpm, errorsPerMinute];
    const latency = [s.t, s.ttft_p50_ms, s.ttft_p95_ms, s.duration_p50_ms, s.duration_p95_ms];
    if (!state.charts.rpm) {
      state.charts.rpm = makeChart("chart-rpm", [
        { label: "requests/min", stroke: "#2b5797", fill: "rgba(43,87,151,0.12)", width: 1.5 },
        { label: "errors/min", stroke: "#b3261e", width: 1.5 },
      ], rpm, false);
      state.charts.latency = makeChart("chart-latency", [
        { label: "TTFT p50", stroke: "#1f7a3a", width: 1.5 },
        { label: "TTFT p95", stroke: "#1f7a3a", dash: [4, 3], width: 1.5 },
        { label: "duration p50", stroke: "#a15c00", width: 1.5 },
        { label: "duration p95", stroke: "#a15c00", dash: [4, 3], width: 1.5 },
      ], latency, true);
    } else {
      state.charts.rpm.setData(rpm);
      state.charts.latency.setData(latency);
    }
    document.body.dataset.charts = "1";
  }

  function usageRows(list) {
    return list.map((u) => row([
      u.key,
      { text: u.count, cls: "num" },
      { text: u.errors + " (" + pct(u.error_rate) + ")", cls: "num" },
      { text: ms(u.ttft_p95_ms), cls: "num" },
      { text: ms(u.duration_p95_ms), cls: "num" },
      { text: u.tokens_in + " / " + u.tokens_out, cls: "num" },
    ]));
  }

  function renderTraffic() {
    const t = state.traffic;
    if (!t) return;
    if (!t.available) {
      $("traffic-note").textContent = t.reason;
      fill("by-group", [], t.reason, 6);
      fill("by-tag", [], t.reason, 6);
      document.body.dataset.traffic = "1";
      return;
    }
    const w = t.windows[state.window];
    const total = w.total;
    $("traffic-total").textContent = total.count + " model requests, " + pct(total.error_rate) +
      " errors, TTFT p50 " + ms(total.ttft_p50_ms) + " / p95 " + ms(total.ttft_p95_ms) +
      ", duration p95 " + ms(total.duration_p95_ms);
    $("traffic-note").textContent = "Buckets of " + (w.bucket_s / 60) + " min; counted: " +
      t.counted + (w.sampled_every > 1 ? "; percentiles from every " + w.sampled_every +
      "th trace (counts are exact)" : "") + ".";
    fill("by-group", usageRows(w.by_group), "no requests in this window", 6);
    fill("by-tag", usageRows(w.by_tag), "no requests in this window", 6);
    renderCharts();
    document.body.dataset.traffic = "1";
  }

  // -- health and audit --------------------------------------------------------

  function renderHealth(h) {
    const badge = $("health-status");
    badge.textContent = "health: " + h.status;
    badge.className = "badge " + h.status;
    $("health-counts").textContent = Object.entries(h.counts).filter(([, n]) => n)
      .map(([sev, n]) => n + " " + sev).join(", ");
    fill("health", h.findings.map((f) => row([
      { text: f.severity, cls: "sev sev-" + f.severity }, f.id, f.finding, f.action,
    ])), "no findings", 4);
    $("health-passed").textContent = h.passed.length ? "passed: " + h.passed.join(", ") : "";
    document.body.dataset.health = "1";
  }

  function compact(detail) {
    if (detail && typeof detail === "object") {
      return Object.entries(detail).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ");
    }
    return detail === null || detail === undefined ? "" : String(detail);
  }

  function renderAudit(a) {
    if (!a.available) {
      fill("audit", [], a.reason, 6);
      return;
    }
    const c = a.chain;
    $("audit-chain").textContent = !c ? "" : c.intact
      ? "hash chain intact (" + c.rows + " rows)"
      : "hash chain BROKEN at row " + c.broken_id + ": " + c.reason;
    $("audit-chain").className = c && !c.intact ? "state-down" : "muted";
    fill("audit", a.events.map((e) => row([
      { text: e.id, cls: "num" }, e.time, e.user, e.action,
      { text: e.revision === null ? "" : e.revision, cls: "num" },
      { text: compact(e.detail), cls: "detail" },
    ])), "no audit events yet", 6);
    document.body.dataset.audit = "1";
  }

  // -- polling -----------------------------------------------------------------

  async function poll(name, render) {
    const body = await getJson(name);
    if (body) render(body);
    setTimeout(() => poll(name, render), POLL[name]);
  }

  function start() {
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => {
        state.window = button.dataset.window;
        for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("on", b === button);
        renderTraffic();
      });
    }
    window.addEventListener("resize", () => {
      for (const [key, chart] of Object.entries(state.charts)) {
        chart.setSize(chartSize($("chart-" + key)));
      }
    });
    poll("overview", renderOverview);
    poll("traffic", (t) => { state.traffic = t; renderTraffic(); });
    poll("health", renderHealth);
    poll("audit", renderAudit);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
