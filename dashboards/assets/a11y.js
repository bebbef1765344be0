// Kiln console accessibility, applied to whatever Dash draws (pages change without a reload, and
// callbacks replace figures), so it runs again after every change to the page:
//  - the nav link of the page shown carries aria-current="page";
//  - Dash's dropdowns take Tab focus on their own button (Dash puts it on an aria-hidden proxy input,
//    which axe-core reports as aria-hidden-focus), and a dropdown with a <label for> is named by it
//    before its value (Dash names the button by its value alone: "Choose an action", not "Action …");
//  - every chart is a labelled figure with a visually-hidden table of the very data it draws;
//  - AG Grid's layout boxes (role="presentation") lose the aria-hidden="false" AG Grid puts on them: that
//    value means nothing, but any aria-hidden attribute makes a presentational box count as an element,
//    and a grid or row group may not contain one (axe: aria-required-children, critical).
(function () {
  "use strict";
  var MAX_ROWS = 2000;  // a 30-day, 5-minute series is 8640 points: the table says how many it leaves out
  var described = new WeakMap();  // chart container → the plotly data array it was last described from

  function markCurrentNav() {
    document.querySelectorAll("#topbar nav a.nav-link").forEach(function (link) {
      if (new URL(link.href, window.location.href).pathname === window.location.pathname) {
        if (link.getAttribute("aria-current") !== "page") { link.setAttribute("aria-current", "page"); }
      } else if (link.hasAttribute("aria-current")) {
        link.removeAttribute("aria-current");
      }
    });
  }

  function focusDropdownButtons() {
    document.querySelectorAll("input.dash-dropdown-focus-target").forEach(function (proxy) {
      var button = proxy.nextElementSibling;
      if (!button || button.tagName !== "BUTTON") { return; }
      if (proxy.tabIndex !== -1) { proxy.tabIndex = -1; }
      var wanted = button.disabled ? -1 : 0;
      if (button.tabIndex !== wanted) { button.tabIndex = wanted; }
      var label = button.id && document.querySelector('label[for="' + CSS.escape(button.id) + '"]');
      var named = button.getAttribute("aria-labelledby") || "";
      if (label) {
        if (!label.id) { label.id = button.id + "-label"; }
        if (named.split(" ")[0] !== label.id) { button.setAttribute("aria-labelledby", (label.id + " " + named).trim()); }
      }
    });
  }

  function text(value) {
    if (value === null || value === undefined) { return ""; }
    if (typeof value === "number") { return String(Math.round(value * 1000) / 1000); }
    // an ISO time as the axis shows it: date, space, time to the second (no fraction, no offset: the axis says UTC)
    return String(value).replace(/^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(:\d{2})?)(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$/, "$1 $2");
  }

  function titleOf(part) {
    var title = part && part.title;
    return (title && typeof title === "object" ? title.text : title) || "";
  }

  // One row per category (or time) and one column per trace: [header, rows, total rows].
  function chartTable(data, layout) {
    var traces = data.filter(function (t) { return t.visible !== false && (t.x || t.y); });
    var horizontal = traces.length > 0 && traces[0].orientation === "h";
    var keyAxis = horizontal ? layout.yaxis : layout.xaxis, valueAxis = horizontal ? layout.xaxis : layout.yaxis;
    var header = [titleOf(keyAxis) || "category"].concat(traces.map(function (t, i) {
      return t.name || (traces.length === 1 ? titleOf(valueAxis) : "") || "series " + (i + 1);
    }));
    var keys = [], rowsByKey = new Map();
    traces.forEach(function (t, column) {
      var categories = (horizontal ? t.y : t.x) || [], values = (horizontal ? t.x : t.y) || [];
      categories.forEach(function (category, i) {
        var key = text(category);
        if (!rowsByKey.has(key)) { rowsByKey.set(key, new Array(traces.length).fill("")); keys.push(key); }
        rowsByKey.get(key)[column] = text(values[i]);
      });
    });
    var rows = keys.slice(0, MAX_ROWS).map(function (key) { return [key].concat(rowsByKey.get(key)); });
    return {header: header, rows: rows, total: keys.length};
  }

  function describeChart(container, plot) {
    var layout = plot.layout || {}, title = titleOf(layout) || "Chart";
    var notes = (layout.annotations || []).map(function (a) { return a.text; }).filter(Boolean);
    var table = chartTable(plot.data || [], layout);
    container.setAttribute("role", "figure");
    container.setAttribute("aria-label", table.total ? title + " (chart; its data follow as a table)"
                                                     : title + ": " + (notes.join(" ") || "no data"));
    var old = container.querySelector(":scope > .chart-data");
    if (old) { old.remove(); }
    if (!table.total) { return; }
    var wrap = document.createElement("div");  // a table is never narrower than its cells: hide its box instead
    wrap.className = "chart-data visually-hidden";
    var element = wrap.appendChild(document.createElement("table"));
    var caption = element.createCaption();
    caption.textContent = title + (table.total > table.rows.length
      ? " (the first " + table.rows.length + " of " + table.total + " rows)" : "");
    var headRow = element.createTHead().insertRow();
    table.header.forEach(function (name) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = name;
      headRow.appendChild(th);
    });
    var body = element.createTBody();
    table.rows.forEach(function (cells) {
      var row = body.insertRow();
      cells.forEach(function (cell, i) {
        var td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) { td.scope = "row"; }
        td.textContent = cell;
        row.appendChild(td);
      });
    });
    container.appendChild(wrap);
  }

  function describeCharts() {
    document.querySelectorAll(".dash-graph").forEach(function (container) {
      var plot = container.querySelector(".js-plotly-plot");
      if (!plot || !plot.data || !plot.layout || described.get(container) === plot.data) { return; }
      described.set(container, plot.data);
      describeChart(container, plot);
    });
  }

  function dropMeaninglessAriaHidden() {
    document.querySelectorAll('.ag-root [role="presentation"][aria-hidden="false"]').forEach(function (box) {
      box.removeAttribute("aria-hidden");
    });
  }

  var scheduled = false;
  function update() {
    scheduled = false;
    markCurrentNav();
    focusDropdownButtons();
    describeCharts();
    dropMeaninglessAriaHidden();
  }
  function schedule() {
    if (!scheduled) { scheduled = true; window.requestAnimationFrame(update); }
  }
  new MutationObserver(schedule).observe(document.documentElement,
    {childList: true, subtree: true, attributes: true, attributeFilter: ["tabindex", "href", "aria-hidden", "aria-labelledby"]});
  window.addEventListener("popstate", schedule);
  schedule();
})();
