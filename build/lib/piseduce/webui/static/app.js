/* PiSeduce web UI: times in the browser's zone, confirmations, and the reserve/configure/manage helpers. */
(function () {
  "use strict";
  var TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
  document.cookie = "tz=" + encodeURIComponent(TZ) + "; path=/; SameSite=Lax; max-age=31536000";

  document.addEventListener("htmx:configRequest", function (e) { e.detail.headers["X-Timezone"] = TZ; });
  /* A page answering a POST that must not be sent again on reload (a new calendar URL: sent
     again, it would revoke the one just copied) puts the page's GET address in the history. */
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.querySelector("[data-replace-url]");
    if (el && window.history && window.history.replaceState) {
      window.history.replaceState(null, "", el.getAttribute("data-replace-url"));
    }
  });

  /* One way of writing times on every page and in every message (web.py's local_text writes the
     same in the server's messages): "Tue, Dec 01, 05:56 PM", in the viewer's zone. The pages are
     in English, so are their dates. */
  var LOCALE = "en-US";
  var FORMATS = {
    datetime: { weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" },
    time: { hour: "2-digit", minute: "2-digit", second: "2-digit" }
  };
  function formatTimes(root) {
    (root || document).querySelectorAll("time.t[data-utc]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-utc"));
      if (isNaN(d)) { return; }
      var style = FORMATS[el.getAttribute("data-style")] || FORMATS.datetime;
      el.textContent = new Intl.DateTimeFormat(LOCALE, style).format(d);
      el.title = d.toISOString();
    });
  }

  /* Copy buttons (Manage's known_hosts line, a new API token): <button class="copy"> next to the
     <code> it copies (or data-copy="<text>"): the clipboard when the page may use it (HTTPS or
     localhost), else the code's text is selected for Ctrl+C. */
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button.copy");
    if (!b) { return; }
    var code = b.parentNode.querySelector("code");
    var text = b.getAttribute("data-copy") || (code ? code.textContent.trim() : "");
    function said(word) { b.textContent = word; setTimeout(function () { b.textContent = "Copy"; }, 1500); }
    function select() {
      if (code) { var range = document.createRange(); range.selectNodeContents(code);
        var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range); }
      said("Ctrl+C");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { said("Copied"); }, select);
    } else { select(); }
  });

  /* Manage's OS password stays hidden (the page may be on a shared screen) until asked for. */
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button.reveal");
    var code = b && b.parentNode.querySelector("code[hidden], code.os-password");
    if (!code) { return; }
    code.hidden = !code.hidden;
    b.textContent = code.hidden ? "show" : "hide";
    b.setAttribute("aria-expanded", code.hidden ? "false" : "true");
  });

  /* Confirmation: plain forms carry data-confirm; htmx elements use hx-confirm (htmx asks). */
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var msg = form.getAttribute && form.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); e.stopImmediatePropagation(); }
  }, true);

  /* ---------------------------------------------------------------- reserve */
  /* The rule: Reserve books exactly what the booking panel shows. The panel's summary and the
     request are built from the same state (mode, visible selection, filters), a node hidden by the
     filters leaves the selection, and the selection is emptied once it is booked. */
  var filters = [];
  var selected = {};
  /* The properties of each selected node, kept from its row: the calendar shows one page of nodes,
     and a filter must drop a selected node that is on another page too. */
  var selectedProps = {};
  var dropped = [];  // names unselected because a filter hid them (said once in the summary)
  var OPS = {"=": "is", "!=": "is not", ">=": "≥", "<=": "≤"};
  /* The same rules as the server's (webui/node_filters.py): sizes such as 4G are binary multiples
     and compare with a property named for its unit (memory_gb), which a filter may name without
     it (memory >= 4G). */
  var UNITS = {"": 1, k: 1024, m: Math.pow(1024, 2), g: Math.pow(1024, 3), t: Math.pow(1024, 4), p: Math.pow(1024, 5)};
  var NUM_RE = /^\s*[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})\s*$/;
  var SIZE_RE = /^\s*([+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15}))\s*([KMGTPkmgtp])(?:i?[Bb])?\s*$/;
  var NAMED_UNIT_RE = /_(k|m|g|t|p)i?b$/i;
  function quantity(text) {
    var m = SIZE_RE.exec(String(text));
    if (m) { return {n: parseFloat(m[1]) * UNITS[m[2].toLowerCase()], size: true}; }
    return NUM_RE.test(String(text)) ? {n: parseFloat(text), size: false} : null;
  }
  function resolve(props, prop) {
    if (props[prop] !== undefined && props[prop] !== null) { return [prop, props[prop]]; }
    for (var name in props) {
      var m = NAMED_UNIT_RE.exec(name);
      if (m && name.slice(0, m.index) === prop && props[name] !== null) { return [name, props[name]]; }
    }
    return null;
  }
  function rowProps(row) {
    try { return JSON.parse(row.getAttribute("data-props") || "{}"); } catch (err) { return {}; }
  }
  function matches(props) {
    return filters.every(function (f) {
      var found = resolve(props, f.prop);
      if (f.op === "!=") { return !found || String(found[1]).toLowerCase() !== f.value.toLowerCase(); }
      if (!found) { return false; }
      var have = found[1];
      if (f.op === "=") { return String(have).toLowerCase() === f.value.toLowerCase(); }
      var w = quantity(f.value);
      if (!w || typeof have === "boolean") { return false; }
      var q = quantity(have), n;
      if (!q) { return false; }
      if (w.size) {
        var unit = NAMED_UNIT_RE.exec(found[0]);
        n = q.size ? q.n : q.n * (unit ? UNITS[unit[1].toLowerCase()] : 1);
      } else {
        if (q.size) { return false; }
        n = q.n;
      }
      return f.op === ">=" ? n >= w.n : n <= w.n;
    });
  }
  function mode() {
    var checked = document.querySelector("input[name=mode]:checked");
    return checked ? checked.value : "selected";
  }
  function setMode(value) {
    var radio = document.querySelector("input[name=mode][value=" + value + "]");
    if (radio && !radio.checked) { radio.checked = true; }
    renderSummary();
  }
  function describeFilters() {
    return filters.map(function (f) { return f.prop + " " + OPS[f.op] + " " + f.value; }).join(" AND ");
  }
  /* The calendar shows one page of the nodes matching the filters (the server filters with the
     same rules, webui/routes/reserve.py): every calendar request carries the filters, and a
     change of filters asks for the first page of the new matches. Meanwhile the rows on screen
     are filtered here, so the page answers at once. */
  function filtersText() { return filters.length ? JSON.stringify(filters) : ""; }
  function calendarInSync(cal) { return !!cal && (cal.getAttribute("data-filters") || "") === filtersText(); }
  document.addEventListener("htmx:configRequest", function (e) {
    if (e.detail.path.indexOf("/reserve/calendar") === 0 && filters.length) {
      e.detail.parameters.filters = filtersText();
    }
  });
  var askedFilters = null;  // the filters of the calendar being fetched (asked once at a time)
  function reloadCalendar(cal) {
    if (askedFilters === filtersText()) { return; }
    askedFilters = filtersText();
    var done = function () { askedFilters = null; };
    htmx.ajax("GET", "/reserve/calendar?day=" + encodeURIComponent(cal.dataset.day || "") + "&days=" +
      encodeURIComponent(cal.dataset.days || 2) + "&page=1", { target: "#calendar", swap: "outerHTML" })
      .then(done, done);
  }
  function applyFilters() {
    var cal = document.getElementById("calendar");
    if (cal && !calendarInSync(cal)) { reloadCalendar(cal); }
    // Every selected node, on this calendar page or another, by the properties kept from its row.
    Object.keys(selected).forEach(function (key) {
      if (!matches(selectedProps[key] || {})) { dropped.push(selected[key]); delete selected[key]; }
    });
    var rows = document.querySelectorAll(".cal-row[data-key]");
    var shown = 0;
    rows.forEach(function (row) {
      var ok = matches(rowProps(row)), key = row.getAttribute("data-key");
      row.classList.toggle("hidden", !ok);
      var on = !!selected[key];
      row.classList.toggle("selected", on);
      var pick = row.querySelector(".pick");
      if (pick) { pick.setAttribute("aria-pressed", on ? "true" : "false"); }
      if (ok) { shown += 1; }
    });
    var mc = document.getElementById("match-count");
    if (mc) {
      mc.textContent = calendarInSync(cal) ? cal.dataset.matching + " of " + cal.dataset.total + " nodes match"
        : shown + " of " + rows.length + " nodes match";
    }
    var bf = document.getElementById("b-filters");
    if (bf) { bf.value = JSON.stringify(filters); }
    var chips = document.getElementById("filter-chips");
    if (chips) {
      chips.textContent = "";
      filters.forEach(function (f, i) {
        var c = document.createElement("span");
        c.className = "chip";
        c.textContent = f.prop + " " + OPS[f.op] + " " + f.value;
        var b = document.createElement("button");
        b.type = "button"; b.textContent = "×"; b.title = "Remove this filter";
        b.setAttribute("aria-label", "Remove the filter " + c.textContent);
        b.addEventListener("click", function () { filters.splice(i, 1); applyFilters(); });
        c.appendChild(b); chips.appendChild(c);
      });
    }
    renderSelection();
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
      b.type = "button"; b.textContent = "×"; b.setAttribute("aria-label", "Unselect " + selected[key]);
      b.addEventListener("click", function () { delete selected[key]; applyFilters(); });
      c.appendChild(b); chips.appendChild(c);
      var inp = document.createElement("input");
      inp.type = "hidden"; inp.name = "node"; inp.value = key; inputs.appendChild(inp);
    });
    if (!keys.length) {
      var hint = document.createElement("span");
      hint.className = "muted small"; hint.textContent = "Click node names in the calendar (or Tab to them and press Enter).";
      chips.appendChild(hint);
    }
    var n = document.getElementById("sel-count");
    if (n) { n.textContent = keys.length; }
    renderSummary();
  }
  function whenText() {
    var when = document.querySelector("input[name=when]:checked"), local = document.getElementById("b-local");
    var hours = parseFloat((document.getElementById("b-duration") || {}).value);
    var text = (when && when.value === "later" && local && local.value)
      ? "from " + new Intl.DateTimeFormat(LOCALE, FORMATS.datetime).format(new Date(local.value)) : "from now";
    if (!isNaN(hours)) { text += " for " + hours + " h"; }
    var bin = ((document.getElementById("b-bin") || {}).value || "").trim();
    return text + (bin ? ", bin " + bin : "");
  }
  /* The last "Find next free slot" answer, which Reserve books by name (hidden inputs in #b-answer)
     as long as the form still asks what was answered; any change of what it asks clears it. */
  var answer = null;
  function askedNow() {
    var when = document.querySelector("input[name=when]:checked");
    var m = mode();
    return JSON.stringify([m, m === "count" ? (document.getElementById("b-count") || {}).value : Object.keys(selected).sort(),
      filters, (document.getElementById("b-duration") || {}).value, when ? when.value : "",
      (document.getElementById("b-local") || {}).value]);
  }
  function setAnswer(j) {
    var box = document.getElementById("b-answer");
    if (!box) { return; }
    box.textContent = "";
    answer = j ? { names: j.nodes, asked: askedNow() } : null;
    if (!j) { return; }
    function hidden(name, value) {
      var i = document.createElement("input");
      i.type = "hidden"; i.name = name; i.value = value; box.appendChild(i);
    }
    j.keys.forEach(function (k) { hidden("answer", k); });
    hidden("answer_start", j.start);
    hidden("answer_now", j.now ? "1" : "0");
  }
  function renderSummary() {
    var box = document.getElementById("b-summary");
    if (!box) { return; }
    if (answer && answer.asked !== askedNow()) {
      setAnswer(null);
      var out = document.getElementById("b-slot");
      if (out) {
        out.textContent = "The form changed since the answer: it is cleared, and Reserve books what the form says " +
          "(press Find next free slot again for a new answer).";
        out.className = "small";
      }
    }
    var keys = Object.keys(selected), text;
    if (answer) {
      box.textContent = "Reserve will book the answered " + answer.names.length + " node(s): " +
        answer.names.join(", ") + ", " + whenText() + ".";
      box.dataset.mode = "answer";
      return;
    }
    if (mode() === "count") {
      var count = parseInt((document.getElementById("b-count") || {}).value, 10) || 0;
      var cal = document.getElementById("calendar");
      var shown = calendarInSync(cal) ? cal.dataset.matching
        : document.querySelectorAll(".cal-row[data-key]:not(.hidden)").length;
      var matching = (filters.length ? describeFilters() : "any node") + " (" + shown + " in the calendar)";
      text = count > 0 ? "Reserve will book " + count + " node(s) matching " + matching + ", " + whenText() + "."
        : "How many nodes? Type the number of nodes matching " + matching + " that Reserve should book.";
      if (keys.length) { text += " The " + keys.length + " clicked node(s) are not what it books (the count may still pick them)."; }
    } else if (keys.length) {
      text = "Reserve will book the " + keys.length + " node(s) you clicked: " +
        keys.map(function (k) { return selected[k]; }).join(", ") + ", " + whenText() + ".";
    } else {
      text = "Nothing to book yet: click node names in the calendar, or ask for a number of nodes matching the filters.";
    }
    if (dropped.length) {
      text += " Unselected because the filters hide them: " + dropped.join(", ") + ".";
    }
    box.textContent = text;
    box.dataset.mode = mode();
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
    pop.style.left = Math.max(4, Math.min(r.left, window.innerWidth - 440)) + "px";
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
      else {
        selected[key] = row.querySelector(".node").textContent + " (" + row.querySelector(".agent").textContent + ")";
        selectedProps[key] = rowProps(row);
      }
      dropped = [];
      var radio = document.querySelector("input[name=mode][value=selected]");
      if (radio) { radio.checked = true; }
      applyFilters();
    }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { var pop = document.querySelector(".props-pop"); if (pop) { pop.remove(); } }
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
    var cal = document.getElementById("calendar");
    if (cal && cal.getAttribute("data-filters")) {  // an address that asked for filters: its chips
      try { filters = JSON.parse(cal.getAttribute("data-filters")); } catch (err) { filters = []; }
      if (!Array.isArray(filters)) { filters = []; }
    }
    var prop = document.getElementById("f-prop"), op = document.getElementById("f-op"), val = document.getElementById("f-value");
    prop.addEventListener("change", function () { valuesFor(prop.value.trim()); });
    function addFilter() {
      var p = prop.value.trim(), v = val.value.trim();
      if (!p || !v) { return; }
      if ((op.value === ">=" || op.value === "<=") && !quantity(v)) { val.setCustomValidity("A number is needed (such as 4 or 4G)"); val.reportValidity(); return; }
      val.setCustomValidity("");
      filters.push({ prop: p, op: op.value, value: v });
      // The next filter starts blank: a property left behind reads as part of the next one.
      prop.value = ""; op.value = "="; val.value = "";
      valuesFor("");
      prop.focus();
      applyFilters();  // a filter narrows the calendar; it asks for no node (a count is typed)
    }
    add.addEventListener("click", addFilter);
    val.addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); addFilter(); } });
    /* Only a change of value switches what is booked: typing a count asks for that many nodes,
       changing the date starts then. Passing through a field (Tab, a click) changes nothing. */
    var count = document.getElementById("b-count");
    count.addEventListener("input", function () { if (count.value !== "") { setMode("count"); } });
    var form = document.getElementById("book-form");
    form.addEventListener("change", renderSummary);
    form.addEventListener("input", renderSummary);
    var local = document.getElementById("b-local");
    var now = new Date(); now.setMinutes(now.getMinutes() - now.getTimezoneOffset() + 60, 0, 0);
    local.value = now.toISOString().slice(0, 16);
    local.addEventListener("input", function () {
      if (local.value) { document.querySelector("input[name=when][value=later]").checked = true; renderSummary(); }
    });
    form.addEventListener("htmx:configRequest", function (e) {
      var when = document.querySelector("input[name=when]:checked");
      if (when && when.value === "later" && local.value) {
        e.detail.parameters.start = new Date(local.value).toISOString();  // the browser's zone -> UTC
      }
      e.detail.parameters.filters = JSON.stringify(filters);
      // Only what the summary announced: no clicked node travels with a count request.
      if (mode() === "count") { delete e.detail.parameters.node; }
    });
    form.addEventListener("submit", function () {
      var when = document.querySelector("input[name=when]:checked");
      if (when && when.value === "later" && local.value) {
        document.getElementById("b-start").value = new Date(local.value).toISOString();
      }
      if (mode() === "count") { document.getElementById("sel-inputs").textContent = ""; }
    });
    /* "Find next free slot": the form as Reserve would send it, answered with the earliest start
       it could be booked at (all at once, across agents); the start and duration are filled in. */
    var find = document.getElementById("b-find");
    if (find) {
      find.addEventListener("click", function () {
        var data = new FormData(form), when = document.querySelector("input[name=when]:checked");
        var out = document.getElementById("b-slot");
        data.set("start", (when && when.value === "later" && local.value) ? new Date(local.value).toISOString() : "");
        data.set("filters", JSON.stringify(filters));
        if (mode() === "count") { data.delete("node"); }
        out.textContent = "Searching the agents' calendars\u2026";
        out.className = "small";
        find.disabled = true;
        fetch("/reserve/next-slot", { method: "POST", body: data, headers: { "X-Timezone": TZ }, credentials: "same-origin" })
          .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
          .then(function (res) {
            var ok = res[0], j = res[1];
            out.textContent = j.detail || "The search failed: reload the page and try again.";
            out.className = ok ? "small" : "small flash error";
            if (!ok) { return; }
            if (j.now) {
              document.querySelector("input[name=when][value=now]").checked = true;
            } else {
              var t = new Date(j.start);  // UTC -> the browser's zone, as datetime-local reads it
              t.setMinutes(t.getMinutes() - t.getTimezoneOffset());
              local.value = t.toISOString().slice(0, 16);
              document.querySelector("input[name=when][value=later]").checked = true;
            }
            document.getElementById("b-duration").value = j.hours;
            setAnswer(j);
            renderSummary();
          }, function () {
            out.textContent = "The web UI did not answer: check the connection and try again.";
            out.className = "small flash error";
          })
          .then(function () { find.disabled = false; });
      });
    }
    /* Booked (all of it): those nodes now show as "yours" in the calendar; the next booking starts
       afresh: no selection, no count, no bin of this one. */
    document.body.addEventListener("calendar-refresh", function () {
      selected = {}; selectedProps = {}; dropped = [];
      setAnswer(null);  // booked: the answer is spent
      count.value = "";
      document.getElementById("b-bin").value = "";
      var radio = document.getElementById("b-mode-selected");
      if (radio) { radio.checked = true; }
      applyFilters();
    });
    setupGoToDate();
    applyFilters();
  }
  /* "Go to date" loads the calendar once a date is committed: Enter, leaving the field, or a day
     chosen in the date picker. Keys typed in the field load nothing (each keystroke would reload
     the calendar, which puts the cursor back on the first part of the date). */
  function setupGoToDate() {
    var typed = false;
    function go(box, tell) {
      typed = false;
      var cal = document.getElementById("calendar");
      if (!box.value || !cal || box.value === cal.dataset.day) { return; }
      if (!box.checkValidity()) { if (tell) { box.reportValidity(); } return; }
      htmx.ajax("GET", "/reserve/calendar?day=" + encodeURIComponent(box.value) + "&days=" + (cal.dataset.days || 2),
        { target: "#calendar", swap: "outerHTML" });
    }
    document.addEventListener("keydown", function (e) {
      if (e.target.id !== "cal-date") { return; }
      if (e.key === "Enter") { e.preventDefault(); go(e.target, true); }
      else if (e.key !== "Tab" && e.key !== "Shift" && e.key !== "Escape") { typed = true; }
    });
    document.addEventListener("change", function (e) {
      if (e.target.id === "cal-date" && !typed) { go(e.target, false); }
    });
    document.addEventListener("focusout", function (e) {
      var box = e.target;
      if (box.id !== "cal-date") { return; }
      // Left for good (not a field swapped away by a reload, which htmx focuses again).
      window.setTimeout(function () {
        if (box.isConnected && document.activeElement !== box) { go(box, false); }
      }, 0);
    });
  }

  /* ---------------------------------------------------------------- search boxes of the lists */
  /* <input class="filter-box" data-filter="<selector of the items>" data-fields="owner node ...">
     (see _find.html): an item stays when every word typed is found in one of the fields the box
     names (its placeholder), read from the data-s-<field> attributes of the item and of its parts
     (a card's live status, a switch's ports loaded later). Nothing else is searched: not the
     buttons, not a node's connection details. */
  function searchText(el, fields) {
    if (!fields.length) { return ""; }
    var out = [], sel = fields.map(function (f) { return "[data-s-" + f + "]"; }).join(",");
    var parts = [el].concat(Array.prototype.slice.call(el.querySelectorAll(sel)));
    parts.forEach(function (p) {
      fields.forEach(function (f) { var v = p.getAttribute("data-s-" + f); if (v) { out.push(v); } });
    });
    return out.join(" ").replace(/\s+/g, " ").toLowerCase();
  }
  function applyFilterBox(box) {
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    var selector = box.getAttribute("data-filter");
    var fields = (box.getAttribute("data-fields") || "").split(/\s+/).filter(Boolean);
    var items = document.querySelectorAll(selector), shown = 0;
    items.forEach(function (el) {
      var text = searchText(el, fields);
      var ok = words.every(function (w) { return text.indexOf(w) >= 0; });
      el.classList.toggle("filtered-out", !ok);
      if (ok) { shown += 1; }
    });
    document.querySelectorAll("[data-filter-group]").forEach(function (g) {
      var rows = g.querySelectorAll(selector);
      if (!rows.length) { return; }
      g.classList.toggle("filtered-out", words.length > 0 &&
        !Array.prototype.some.call(rows, function (r) { return !r.classList.contains("filtered-out"); }));
    });
    var count = box.parentElement.querySelector(".filter-count");
    if (count) { count.textContent = words.length ? shown + " of " + items.length + " shown" : ""; }
  }
  document.addEventListener("input", function (e) {
    if (e.target.classList && e.target.classList.contains("filter-box")) { applyFilterBox(e.target); }
  });
  function reapplyFilterBoxes() {
    document.querySelectorAll(".filter-box").forEach(function (box) { if (box.value) { applyFilterBox(box); } });
  }
  document.addEventListener("htmx:afterSettle", reapplyFilterBoxes);
  document.addEventListener("htmx:oobAfterSwap", reapplyFilterBoxes);  // a card's live status

  /* ---------------------------------------------------------------- fields with a rule */
  /* <input pattern=… data-live-check="the rule in words" data-allowed="A-Za-z0-9._-">: what the
     field refuses is said while it is typed (which characters, and the rule), not at submit. */
  function liveCheck(box) {
    var say = document.getElementById(box.id + "-error");
    if (!say) {
      say = document.createElement("div");
      say.id = box.id + "-error"; say.className = "field-error small"; say.setAttribute("role", "alert");
      box.insertAdjacentElement("afterend", say);
      box.setAttribute("aria-describedby", ((box.getAttribute("aria-describedby") || "") + " " + say.id).trim());
    }
    var bad = box.value !== "" && box.validity.patternMismatch, text = "";
    if (bad) {
      var allowed = new RegExp("[" + (box.getAttribute("data-allowed") || "") + "]"), refused = [];
      Array.from(box.value).forEach(function (c) { if (!allowed.test(c) && refused.indexOf(c) < 0) { refused.push(c); } });
      text = (refused.length ? refused.map(function (c) { return "“" + c + "”"; }).join(", ") +
        (refused.length > 1 ? " are" : " is") + " not allowed: " : "") + box.getAttribute("data-live-check") + ".";
    }
    say.textContent = text;
    say.hidden = !bad;
    box.setAttribute("aria-invalid", bad ? "true" : "false");
  }
  document.addEventListener("input", function (e) {
    if (e.target.hasAttribute && e.target.hasAttribute("data-live-check")) { liveCheck(e.target); }
  });

  /* ---------------------------------------------------------------- configure */
  /* Deploy sends the ticked cards only: an unticked card's fields are disabled, so the browser
     neither checks nor sends them (its reservation waits on the page for a later Deploy). */
  function syncCard(card) {
    var tick = card.querySelector(".tick-card");
    if (!tick) { return; }
    card.classList.toggle("skipped", !tick.checked);
    card.querySelectorAll(".card-fields input, .card-fields select, .card-fields textarea, .apply-all").forEach(function (el) {
      el.disabled = !tick.checked;
    });
  }
  function syncConfigure() {
    var cards = document.querySelectorAll("#deploy-form .card");
    if (!cards.length) { return; }
    var ticked = 0;
    cards.forEach(function (c) { syncCard(c); if (c.querySelector(".tick-card").checked) { ticked += 1; } });
    document.querySelectorAll("#deploy-form .group").forEach(function (g) {
      var ticks = g.querySelectorAll(".tick-card"), on = g.querySelectorAll(".tick-card:checked").length;
      var box = g.querySelector(".tick-group");
      if (box) { box.checked = on === ticks.length; box.indeterminate = on > 0 && on < ticks.length; }
      var bin = g.querySelector(".group-bin");
      if (bin) { bin.disabled = on === 0; }  // a group deployed later needs no bin now
    });
    document.querySelectorAll("#deploy-form .deploy-button").forEach(function (b) {
      b.textContent = ticked ? "Deploy the " + ticked + " ticked node(s)" : "Tick the nodes to deploy";
      b.disabled = !ticked;
    });
    document.querySelectorAll("#deploy-form .deploy-count").forEach(function (el) {
      el.textContent = ticked + " of " + cards.length + " node(s) ticked.";
    });
  }
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (!t.classList) { return; }
    if (t.classList.contains("tick-group")) {
      t.closest(".group").querySelectorAll(".tick-card").forEach(function (c) { c.checked = t.checked; });
      syncConfigure();
    } else if (t.classList.contains("tick-card")) { syncConfigure(); }
  });
  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest(".apply-all");
    if (!btn) { return; }
    var card = btn.closest(".card"), type = card.getAttribute("data-type"), group = card.getAttribute("data-group");
    var src = card.querySelectorAll("[data-field] input, [data-field] select, [data-field] textarea");
    var sel = '.card[data-type="' + CSS.escape(type) + '"][data-group="' + CSS.escape(group) + '"]';
    document.querySelectorAll(sel).forEach(function (other) {
      if (other === card || other.classList.contains("skipped")) { return; }
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
    btn.textContent = "Applied to every " + type + " node of this group";
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
  /* The sticky bar's height, for the room kept under the cards (style.css, --bar-h): it wraps to
     two lines on a narrower window. */
  function measureBar() {
    var bar = document.querySelector(".actions-bar");
    if (bar) { document.documentElement.style.setProperty("--bar-h", bar.offsetHeight + "px"); }
  }
  window.addEventListener("resize", measureBar);
  document.addEventListener("DOMContentLoaded", measureBar);
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
  /* After an action, the open event logs show at once what it recorded (not at their next tick). */
  document.body.addEventListener("manage-refresh", function () {
    document.querySelectorAll("details[data-events-url][open]").forEach(loadEvents);
  });
  /* Paging swaps the calendar, and the button pressed may come back disabled (first or last page):
     the keyboard's focus then goes to the other paging button instead of the top of the page. */
  var pagingFocus = null;
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("#cal-page-prev, #cal-page-next");
    if (b) { pagingFocus = b.id; }
  }, true);
  function restorePagingFocus() {
    if (!pagingFocus) { return; }
    var other = pagingFocus === "cal-page-next" ? "cal-page-prev" : "cal-page-next";
    var el = [pagingFocus, other].map(function (id) { return document.getElementById(id); })
      .filter(function (x) { return x && !x.disabled; })[0];
    pagingFocus = null;
    if (el) { el.focus(); }
  }
  document.addEventListener("htmx:afterSettle", function (e) {
    formatTimes(e.target);
    if (e.target.id === "calendar" || (e.target.querySelector && e.target.querySelector("#calendar"))) {
      restorePagingFocus();
      applyFilters();
    }
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

  /* Each table cell knows its column's heading (data-label): on a phone the rows are stacked and
     the heading is written before the value (style.css). */
  function labelCells() {
    document.querySelectorAll("main table").forEach(function (t) {
      /* The row of column headings: headings only. A first row with a <td> is data (a table whose
         rows head themselves), never the names of the columns. */
      var head = t.querySelector("tr");
      if (!head || !head.querySelector(":scope > th") || head.querySelector(":scope > td")) { return; }
      var names = Array.prototype.map.call(head.children, function (c) { return c.textContent.trim(); });
      t.querySelectorAll("tr").forEach(function (tr) {
        if (tr === head) { return; }
        Array.prototype.forEach.call(tr.children, function (td, i) {
          if (td.tagName === "TD" && names[i] && !td.hasAttribute("data-label")) { td.setAttribute("data-label", names[i]); }
        });
      });
    });
  }
  document.addEventListener("htmx:afterSettle", labelCells);

  document.addEventListener("DOMContentLoaded", function () {
    labelCells();
    formatTimes(document);
    document.querySelectorAll(".tz-name").forEach(function (el) { el.textContent = TZ; });
    setupReserve();
    syncConfigure();
    /* The first page of a session was rendered in UTC: redraw the calendar in the browser's zone,
       on the viewer's today unless the address asked for a day (UTC's day is another one for
       part of every day in most zones). */
    var cal = document.getElementById("calendar");
    if (document.body.getAttribute("data-tz") !== TZ && cal) {
      var asked = new URLSearchParams(window.location.search).get("day");
      htmx.ajax("GET", "/reserve/calendar?" + (asked ? "day=" + encodeURIComponent(asked) + "&" : "") +
        "days=" + encodeURIComponent(cal.dataset.days || 2), { target: "#calendar", swap: "outerHTML" });
    }
  });
})();
