/* Monitoring page: SVG line charts of power and temperature per node, one pair per agent.
   No library: the data is a few hundred points per series (the agents average it). Every refresh
   replaces the data (nothing grows), and no request is made while the tab is hidden. Node names
   come from agents: they only ever reach the page as text nodes, never as HTML. */
(function () {
  "use strict";
  var root = document.getElementById("mon-charts");
  if (!root) { return; }
  var SVG = "http://www.w3.org/2000/svg";
  var W = 640, H = 250, ML = 46, MR = 10, MT = 10, MB = 26;
  var PERIOD_MS = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 24 * 3600e3 };
  var KINDS = [["power", "Power", "W", 2], ["temperature", "Temperature", "°C", 1]];
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
    "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#9333ea", "#0284c7", "#15803d", "#b91c1c",
    "#475569", "#c026d3", "#854d0e"];
  var TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
  var hidden = {};  // "agent|node" -> true: kept across refreshes and period changes
  var refreshSeconds = parseInt(root.getAttribute("data-refresh"), 10) || 30;
  var select = document.getElementById("mon-period");
  var period = select ? select.value : "1h";
  var lastFetch = Date.now();
  var data;
  try { data = JSON.parse(document.getElementById("mon-data").textContent); } catch (e) { data = null; }

  function el(name, attrs, text) {
    var n = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    if (text !== undefined) { n.textContent = text; }
    return n;
  }
  function h(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) { n.className = cls; }
    if (text !== undefined) { n.textContent = text; }
    return n;
  }
  var hm = new Intl.DateTimeFormat("en-US", { hour: "2-digit", minute: "2-digit" });
  var full = new Intl.DateTimeFormat("en-US", { weekday: "short", day: "2-digit", month: "short",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function niceStep(range, count) {
    var raw = range / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var r = raw / mag;
    return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
  }
  function timeStep(span) {
    var steps = [5, 10, 15, 30, 60, 120, 180, 240, 360, 720].map(function (m) { return m * 60e3; });
    for (var i = 0; i < steps.length; i++) { if (span / steps[i] <= 7) { return steps[i]; } }
    return 1440 * 60e3;
  }

  /* One series as path segments: a gap of more than 3.5 typical spacings breaks the line (the
     board was off or not answering then) instead of drawing a slope across it. */
  function segments(times, values, x, y) {
    var gaps = [];
    for (var i = 1; i < times.length; i++) { gaps.push(times[i] - times[i - 1]); }
    gaps.sort(function (a, b) { return a - b; });
    var limit = gaps.length ? gaps[Math.floor(gaps.length / 2)] * 3.5 : Infinity;
    var d = "";
    for (var j = 0; j < times.length; j++) {
      var cmd = (j === 0 || times[j] - times[j - 1] > limit) ? "M" : "L";
      d += cmd + x(times[j]).toFixed(1) + "," + y(values[j]).toFixed(1);
      if (cmd === "M" && (j + 1 >= times.length || times[j + 1] - times[j] > limit)) {
        d += "h0.1";  // a lone point still shows as a dot
      }
    }
    return d;
  }

  function chart(agent, kind, colors, end) {
    var meta = KINDS.filter(function (k) { return k[0] === kind; })[0];
    var box = h("div", "mon-chart");
    box.appendChild(h("h3", "", meta[1] + " (" + meta[2] + ")"));
    var start = end - (PERIOD_MS[period] || PERIOD_MS["1h"]);
    var series = (agent[kind] || []).map(function (s) {
      return { node: s.node, t: s.t.map(function (v) { return Date.parse(v); }), v: s.v };
    }).filter(function (s) { return s.t.length; });
    var shown = series.filter(function (s) { return !hidden[agent.agent + "|" + s.node]; });
    var lo = Infinity, hi = -Infinity;
    shown.forEach(function (s) { s.v.forEach(function (v) { lo = Math.min(lo, v); hi = Math.max(hi, v); }); });
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (kind === "power") { lo = 0; }
    if (hi - lo < 1e-9) { hi = lo + 1; }
    var step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
    var x = function (t) { return ML + (t - start) / (end - start) * (W - ML - MR); };
    var y = function (v) { return MT + (hi - v) / (hi - lo) * (H - MT - MB); };
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": meta[1] + " of the nodes of " + agent.agent });
    for (var v = lo; v <= hi + step / 2; v += step) {
      svg.appendChild(el("line", { x1: ML, x2: W - MR, y1: y(v), y2: y(v), "class": "grid" }));
      svg.appendChild(el("text", { x: ML - 6, y: y(v) + 4, "text-anchor": "end", "class": "tick" },
        (+v.toFixed(6)).toString()));
    }
    var ts = timeStep(end - start);
    var offset = -new Date(end).getTimezoneOffset() * 60e3;  // ticks on round local times
    for (var t = Math.ceil((start + offset) / ts) * ts - offset; t <= end; t += ts) {
      svg.appendChild(el("line", { x1: x(t), x2: x(t), y1: MT, y2: H - MB, "class": "grid" }));
      svg.appendChild(el("text", { x: x(t), y: H - 8, "text-anchor": "middle", "class": "tick" },
        hm.format(new Date(t))));
    }
    svg.appendChild(el("line", { x1: ML, x2: W - MR, y1: H - MB, y2: H - MB, "class": "axis" }));
    svg.appendChild(el("line", { x1: ML, x2: ML, y1: MT, y2: H - MB, "class": "axis" }));
    shown.forEach(function (s) {
      var path = el("path", { d: segments(s.t, s.v, x, y), "class": "line", stroke: colors[s.node] });
      path.appendChild(el("title", {}, s.node));
      svg.appendChild(path);
    });
    if (!series.length) {
      svg.appendChild(el("text", { x: (ML + W - MR) / 2, y: H / 2, "text-anchor": "middle", "class": "none" },
        "no sample in this period"));
    }
    var cursor = el("line", { y1: MT, y2: H - MB, "class": "cursor", visibility: "hidden" });
    svg.appendChild(cursor);
    box.appendChild(svg);
    var tip = h("div", "mon-tip");
    box.appendChild(tip);
    svg.addEventListener("mousemove", function (ev) {
      var rect = svg.getBoundingClientRect();
      var px = (ev.clientX - rect.left) / rect.width * W;
      if (px < ML || px > W - MR || !shown.length) { hideTip(); return; }
      var at = start + (px - ML) / (W - ML - MR) * (end - start);
      tip.textContent = "";
      tip.appendChild(h("b", "", full.format(new Date(at))));
      var any = false;
      shown.forEach(function (s) {
        var i = nearest(s.t, at);
        if (i < 0 || Math.abs(s.t[i] - at) > (end - start) / 60) { return; }
        any = true;
        var line = h("div", "");
        var sw = h("i", ""); sw.style.background = colors[s.node]; sw.style.display = "inline-block";
        sw.style.width = "10px"; sw.style.height = "3px"; sw.style.marginRight = "5px";
        line.appendChild(sw);
        line.appendChild(document.createTextNode(s.node + ": " + s.v[i].toFixed(meta[3]) + " " + meta[2]));
        tip.appendChild(line);
      });
      if (!any) { hideTip(); return; }
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
      tip.style.display = "block";
      var left = (ev.clientX - box.getBoundingClientRect().left) + 14;
      tip.style.left = Math.min(left, box.clientWidth - tip.offsetWidth - 4) + "px";
      tip.style.top = "34px";
    });
    function hideTip() { tip.style.display = "none"; cursor.setAttribute("visibility", "hidden"); }
    svg.addEventListener("mouseleave", hideTip);
    var legend = h("div", "mon-legend");
    series.forEach(function (s) {
      var key = agent.agent + "|" + s.node;
      var b = h("button", hidden[key] ? "off" : "");
      b.type = "button";
      b.title = hidden[key] ? "show " + s.node : "hide " + s.node;
      var sw = h("i", ""); sw.style.background = colors[s.node];
      b.appendChild(sw);
      b.appendChild(document.createTextNode(s.node));
      b.addEventListener("click", function () {
        if (hidden[key]) { delete hidden[key]; } else { hidden[key] = true; }
        draw();
      });
      legend.appendChild(b);
    });
    box.appendChild(legend);
    return box;
  }

  function nearest(times, at) {
    var a = 0, b = times.length - 1;
    if (b < 0) { return -1; }
    while (b - a > 1) { var m = (a + b) >> 1; if (times[m] < at) { a = m; } else { b = m; } }
    return Math.abs(times[a] - at) <= Math.abs(times[b] - at) ? a : b;
  }

  function draw() {
    if (!data) { return; }
    var end = lastFetch;
    root.textContent = "";
    (data.agents || []).forEach(function (agent) {
      var names = {};
      KINDS.forEach(function (k) { (agent[k[0]] || []).forEach(function (s) { names[s.node] = true; }); });
      var colors = {};
      Object.keys(names).sort(function (a, b) { return a.localeCompare(b, undefined, { numeric: true }); })
        .forEach(function (n, i) { colors[n] = PALETTE[i % PALETTE.length]; });
      var sec = h("section", "mon-agent");
      sec.appendChild(h("h2", "", agent.agent));
      var pair = h("div", "mon-pair");
      KINDS.forEach(function (k) { pair.appendChild(chart(agent, k[0], colors, end)); });
      sec.appendChild(pair);
      root.appendChild(sec);
    });
    var errors = document.getElementById("mon-errors");
    errors.textContent = "";
    (data.errors || []).forEach(function (e) {
      var d = h("div", "flash error", e); d.setAttribute("role", "status"); errors.appendChild(d);
    });
    drawLatest();
  }

  function drawLatest() {
    var body = document.querySelector("#mon-latest tbody");
    if (!body) { return; }
    // As routes/monitoring.py latest(): only a value of the agent's newest round is current; a
    // board that stopped being measured (powered off) shows when it was last read, not that value.
    var rows = {};
    (data.agents || []).forEach(function (a) {
      var newest = 0;
      KINDS.forEach(function (k) {
        (a[k[0]] || []).forEach(function (s) {
          if (s.t.length) { newest = Math.max(newest, Date.parse(s.t[s.t.length - 1]) || 0); }
        });
      });
      KINDS.forEach(function (k) {
        (a[k[0]] || []).forEach(function (s) {
          if (!s.t.length) { return; }
          var key = a.agent + "\u0000" + s.node;
          var r = rows[key] || (rows[key] = { agent: a.agent, node: s.node, time: "" });
          var last = s.t[s.t.length - 1];
          // samples of one round share its time (0.5 s: SAME_ROUND_SECONDS of the server side)
          if ((Date.parse(last) || 0) >= newest - 500) { r[k[0]] = s.v[s.v.length - 1]; } else { r[k[0] + "_at"] = last; }
          if (last > r.time) { r.time = last; }
        });
      });
    });
    var clock = new Intl.DateTimeFormat("en-US", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    function cell(r, kind, digits) {
      if (r[kind] !== undefined) { return r[kind].toFixed(digits); }
      if (kind === "temperature" && r.power === 0) { return "off"; }
      return r[kind + "_at"] ? "— (last read " + clock.format(new Date(r[kind + "_at"])) + ")" : "—";
    }
    body.textContent = "";
    var keys = Object.keys(rows).sort();
    keys.forEach(function (key) {
      var r = rows[key], tr = h("tr", "");
      tr.appendChild(h("td", "", r.node));
      tr.appendChild(h("td", "", r.agent));
      tr.appendChild(h("td", "", cell(r, "power", 2)));
      tr.appendChild(h("td", "", r.power === 0 ? "off" : cell(r, "temperature", 1)));
      tr.appendChild(h("td", "", clock.format(new Date(r.time))));
      body.appendChild(tr);
    });
    if (!keys.length) {
      var tr = h("tr", ""), td = h("td", "muted", "No sample in this period.");
      td.colSpan = 5; tr.appendChild(td); body.appendChild(tr);
    }
  }

  var status = document.getElementById("mon-status");
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    var asked = period;
    fetch("/monitoring/data?period=" + encodeURIComponent(asked),
      { credentials: "same-origin", headers: { "Accept": "application/json", "X-Timezone": TZ } })
      .then(function (r) {
        var type = r.headers.get("content-type") || "";
        if (!r.ok || type.indexOf("application/json") < 0) {
          throw new Error(r.redirected ? "your session ended: reload the page" : "the web UI answered " + r.status);
        }
        return r.json();
      })
      .then(function (d) {
        if (asked !== period) { return; }  // the period changed meanwhile: that answer is next
        data = d; lastFetch = Date.now(); draw();
        if (status) { status.textContent = "updated " + hm.format(new Date(lastFetch)); }
      })
      .catch(function (err) { if (status) { status.textContent = "refresh failed: " + err.message; } })
      .then(function () { busy = false; });
  }

  if (select) {
    select.addEventListener("change", function () {
      period = select.value in PERIOD_MS ? select.value : "1h";
      var dl = document.getElementById("mon-download");
      if (dl) {
        dl.href = "/monitoring/data?period=" + period;
        dl.setAttribute("download", "piseduce-monitoring-" + period + ".json");
      }
      if (window.history && history.replaceState) { history.replaceState(null, "", "/monitoring?period=" + period); }
      busy = false;
      refresh();
    });
  }
  setInterval(function () { if (!document.hidden) { refresh(); } }, refreshSeconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && Date.now() - lastFetch > refreshSeconds * 1000) { refresh(); }
  });
  draw();
})();
