/* PiSeduce web UI: times in the browser's zone, confirmations, and the reserve/configure/manage helpers. */
(function () {
  "use strict";
  var TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
  document.cookie = "tz=" + encodeURIComponent(TZ) + "; path=/; SameSite=Lax; max-age=31536000";

  document.addEventListener("htmx:configRequest", function (e) { e.detail.headers["X-Timezone"] = TZ; });

  var FORMATS = {
    datetime: { weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" },
    time: { hour: "2-digit", minute: "2-digit", second: "2-digit" }
  };
  function formatTimes(root) {
    (root || document).querySelectorAll("time.t[data-utc]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-utc"));
      if (isNaN(d)) { return; }
      var style = FORMATS[el.getAttribute("data-style")] || FORMATS.datetime;
      el.textContent = new Intl.DateTimeFormat(undefined, style).format(d);
      el.title = d.toISOString();
    });
  }

  /* Confirmation: plain forms carry data-confirm; htmx elements use hx-confirm (htmx asks). */
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var msg = form.getAttribute && form.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); e.stopImmediatePropagation(); }
  }, true);

  /* ---------------------------------------------------------------- reserve */
  var filters = [];
  var selected = {};

  function rowProps(row) {
    try { return JSON.parse(row.getAttribute("data-props") || "{}"); } catch (err) { return {}; }
  }
  function matches(props) {
    return filters.every(function (f) {
      var have = props[f.prop];
      if (have === undefined || have === null) { return false; }
      if (f.op === "=") { return String(have).toLowerCase() === f.value.toLowerCase(); }
      var n = parseFloat(have), w = parseFloat(f.value);
      if (isNaN(n) || isNaN(w)) { return false; }
      return f.op === ">=" ? n >= w : n <= w;
    });
  }
  function applyFilters() {
    var rows = document.querySelectorAll(".cal-row[data-key]");
    var shown = 0;
    rows.forEach(function (row) {
      var ok = matches(rowProps(row));
      row.classList.toggle("hidden", !ok);
      row.classList.toggle("selected", !!selected[row.getAttribute("data-key")]);
      if (ok) { shown += 1; }
    });
    var mc = document.getElementById("match-count");
    if (mc) { mc.textContent = shown + " of " + rows.length + " nodes match"; }
    var bf = document.getElementById("b-filters");
    if (bf) { bf.value = JSON.stringify(filters); }
    var chips = document.getElementById("filter-chips");
    if (chips) {
      chips.textContent = "";
      filters.forEach(function (f, i) {
        var c = document.createElement("span");
        c.className = "chip";
        c.textContent = f.prop + " " + ({"=": "is", ">=": "≥", "<=": "≤"}[f.op]) + " " + f.value;
        var b = document.createElement("button");
        b.type = "button"; b.textContent = "×"; b.title = "Remove this filter";
        b.addEventListener("click", function () { filters.splice(i, 1); applyFilters(); });
        c.appendChild(b); chips.appendChild(c);
      });
    }
  }
  function renderSelection() {
    var chips = document.getElementById("sel-chips"), inputs = document.getElementById("sel-inputs");
    if (!chips || !inputs) { return; }
    chips.textContent = ""; inputs.textContent = "";
    var keys = Object.keys(selected);
    keys.forEach(function (key) {
      var c = document.createElement("span");
      c.className = "chip"; c.textContent = selected[key];
      var b = document.createElement("button");
      b.type = "button"; b.textContent = "×";
      b.addEventListener("click", function () { delete selected[key]; renderSelection(); applyFilters(); });
      c.appendChild(b); chips.appendChild(c);
      var inp = document.createElement("input");
      inp.type = "hidden"; inp.name = "node"; inp.value = key; inputs.appendChild(inp);
    });
    if (!keys.length) {
      var hint = document.createElement("span");
      hint.className = "muted small"; hint.textContent = "Click node names in the calendar.";
      chips.appendChild(hint);
    }
    var n = document.getElementById("sel-count");
    if (n) { n.textContent = keys.length; }
  }
  function showProps(button, row) {
    var old = document.querySelector(".props-pop");
    if (old) { old.remove(); if (old.dataset.key === row.getAttribute("data-key")) { return; } }
    var pop = document.createElement("div");
    pop.className = "props-pop"; pop.dataset.key = row.getAttribute("data-key");
    var table = document.createElement("table"), props = rowProps(row);
    Object.keys(props).sort().forEach(function (k) {
      var tr = document.createElement("tr"), a = document.createElement("td"), b = document.createElement("td");
      a.textContent = k; b.textContent = String(props[k]);
      tr.appendChild(a); tr.appendChild(b); table.appendChild(tr);
    });
    pop.appendChild(table);
    var r = button.getBoundingClientRect();
    pop.style.left = Math.min(r.left, window.innerWidth - 440) + "px";
    pop.style.top = (r.bottom + 6) + "px";
    document.body.appendChild(pop);
  }
  document.addEventListener("click", function (e) {
    var t = e.target;
    var info = t.closest && t.closest(".cal-name .info");
    if (info) { e.stopPropagation(); showProps(info, info.closest(".cal-row")); return; }
    var pop = document.querySelector(".props-pop");
    if (pop && !t.closest(".props-pop")) { pop.remove(); }
    var name = t.closest && t.closest(".cal-row[data-key] .cal-name");
    if (name) {
      var row = name.closest(".cal-row"), key = row.getAttribute("data-key");
      if (selected[key]) { delete selected[key]; }
      else { selected[key] = row.querySelector(".node").textContent + " (" + row.querySelector(".agent").textContent + ")"; }
      var radio = document.querySelector("input[name=mode][value=selected]");
      if (radio) { radio.checked = true; }
      renderSelection(); applyFilters();
    }
  });
  function valuesFor(prop) {
    var el = document.getElementById("prop-values"), list = document.getElementById("prop-value-list");
    if (!el || !list) { return; }
    var all = {};
    try { all = JSON.parse(el.textContent); } catch (err) { all = {}; }
    list.textContent = "";
    (all[prop] || []).forEach(function (v) { var o = document.createElement("option"); o.value = v; list.appendChild(o); });
  }
  function setupReserve() {
    var add = document.getElementById("f-add");
    if (!add) { return; }
    var prop = document.getElementById("f-prop"), op = document.getElementById("f-op"), val = document.getElementById("f-value");
    prop.addEventListener("change", function () { valuesFor(prop.value.trim()); });
    function addFilter() {
      var p = prop.value.trim(), v = val.value.trim();
      if (!p || !v) { return; }
      if (op.value !== "=" && isNaN(parseFloat(v))) { val.setCustomValidity("A number is needed"); val.reportValidity(); return; }
      val.setCustomValidity("");
      filters.push({ prop: p, op: op.value, value: v });
      val.value = ""; applyFilters();
      var radio = document.querySelector("input[name=mode][value=count]");
      if (radio && !Object.keys(selected).length) { radio.checked = true; }
    }
    add.addEventListener("click", addFilter);
    val.addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); addFilter(); } });
    var local = document.getElementById("b-local");
    var now = new Date(); now.setMinutes(now.getMinutes() - now.getTimezoneOffset() + 60, 0, 0);
    local.value = now.toISOString().slice(0, 16);
    local.addEventListener("focus", function () { document.querySelector("input[name=when][value=later]").checked = true; });
    document.getElementById("book-form").addEventListener("htmx:configRequest", function (e) {
      var when = document.querySelector("input[name=when]:checked");
      if (when && when.value === "later" && local.value) {
        e.detail.parameters.start = new Date(local.value).toISOString();  // the browser's zone -> UTC
      }
      e.detail.parameters.filters = JSON.stringify(filters);
    });
    document.getElementById("book-form").addEventListener("submit", function () {
      var when = document.querySelector("input[name=when]:checked");
      if (when && when.value === "later" && local.value) {
        document.getElementById("b-start").value = new Date(local.value).toISOString();
      }
    });
    document.addEventListener("change", function (e) {
      if (e.target.id === "cal-date" && e.target.value) {
        var cal = document.getElementById("calendar");
        htmx.ajax("GET", "/reserve/calendar?day=" + encodeURIComponent(e.target.value) + "&days=" + (cal ? cal.dataset.days : 2),
          { target: "#calendar", swap: "outerHTML" });
      }
    });
    applyFilters();
  }

  /* ---------------------------------------------------------------- configure */
  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest(".apply-all");
    if (!btn) { return; }
    var card = btn.closest(".card"), type = card.getAttribute("data-type");
    var src = card.querySelectorAll("[data-field] input, [data-field] select, [data-field] textarea");
    document.querySelectorAll('.card[data-type="' + CSS.escape(type) + '"]').forEach(function (other) {
      if (other === card) { return; }
      src.forEach(function (el) {
        if (el.type === "hidden" || el.type === "file") { return; }
        var field = el.closest("[data-field]").getAttribute("data-field");
        var targets = other.querySelectorAll('[data-field="' + CSS.escape(field) + '"] ' + el.tagName.toLowerCase());
        targets.forEach(function (t) {
          if (t.type === "hidden") { return; }
          if (t.type === "checkbox") {
            if (t.value === el.value || t.name.endsWith("." + field)) { t.checked = el.checked; }
          } else if (t.tagName === el.tagName) { t.value = el.value; }
        });
      });
      other.classList.add("copied");
    });
    btn.textContent = "Applied to every " + type + " node";
  });

  /* ---------------------------------------------------------------- manage */
  document.addEventListener("change", function (e) {
    if (e.target.classList && e.target.classList.contains("select-bin")) {
      e.target.closest(".bin").querySelectorAll("input[name=sel]").forEach(function (c) { c.checked = e.target.checked; });
    }
  });
  document.addEventListener("htmx:confirm", function (e) {
    var form = e.target;
    if (form.id !== "manage-form") { return; }
    e.preventDefault();
    var n = document.querySelectorAll("input[name=sel][form=manage-form]:checked").length;
    var act = document.getElementById("m-action");
    var label = act.options[act.selectedIndex].text;
    if (!act.value) { window.alert("Choose an action."); return; }
    if (!n) { window.alert("Tick at least one node."); return; }
    if (window.confirm(label + " on " + n + " node(s)?")) { e.detail.issueRequest(true); }
  });
  var eventTimers = new WeakMap();
  function loadEvents(details) {
    var box = details.querySelector(".events");
    htmx.ajax("GET", details.getAttribute("data-events-url"), { target: box, swap: "innerHTML" });
  }
  document.addEventListener("toggle", function (e) {
    var d = e.target;
    if (!d.matches || !d.matches("details[data-events-url]")) { return; }
    if (d.open) {
      loadEvents(d);
      eventTimers.set(d, window.setInterval(function () {
        if (!document.body.contains(d) || !d.open) { window.clearInterval(eventTimers.get(d)); return; }
        loadEvents(d);
      }, 4000));
    } else if (eventTimers.has(d)) { window.clearInterval(eventTimers.get(d)); }
  }, true);
  document.addEventListener("htmx:afterSettle", function (e) {
    formatTimes(e.target);
    if (e.target.id === "calendar" || (e.target.querySelector && e.target.querySelector("#calendar"))) { applyFilters(); }
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    if (e.target.id === "poller") { window.setTimeout(checkSignature, 60); }
  });
  function checkSignature() {
    {
      var sig = document.getElementById("manage-sig"), inner = document.getElementById("bins-inner");
      if (sig && inner && sig.dataset.signature && sig.dataset.signature !== inner.dataset.signature) {
        htmx.ajax("GET", "/manage/bins", { target: "#bins", swap: "innerHTML" });
      }
    }
  }
  document.addEventListener("htmx:oobAfterSwap", function (e) { formatTimes(e.target); });
  /* Errors of htmx requests reach the user too (never swallowed). */
  document.addEventListener("htmx:responseError", function (e) {
    var box = document.getElementById("action-result") || document.getElementById("booking-result");
    if (box) { box.innerHTML = ""; var d = document.createElement("div"); d.className = "flash error";
      d.textContent = "The server answered " + e.detail.xhr.status + ": " + (e.detail.xhr.responseText || "").replace(/<[^>]*>/g, " ").slice(0, 300);
      box.appendChild(d); }
  });
  document.addEventListener("htmx:sendError", function () {
    var box = document.getElementById("action-result") || document.getElementById("booking-result");
    if (box) { box.textContent = "The web UI cannot be reached; retrying…"; box.className = "flash error"; }
  });

  document.addEventListener("DOMContentLoaded", function () {
    formatTimes(document);
    document.querySelectorAll(".tz-name").forEach(function (el) { el.textContent = TZ; });
    setupReserve();
    /* The first page of a session was rendered in UTC: redraw the calendar in the browser's zone. */
    if (document.body.getAttribute("data-tz") !== TZ && document.getElementById("calendar")) {
      htmx.trigger("#calendar", "refresh");
    }
  });
})();
