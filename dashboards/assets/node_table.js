// Kiln console: the node table's status chips (dash-ag-grid cell renderer "StatusChip", dashboards/bulk.py).
// The chip keeps the state's words (colour is never the only sign); its tone comes from the server's row.
(function () {
  "use strict";
  var components = (window.dashAgGridComponentFunctions = window.dashAgGridComponentFunctions || {});
  components.StatusChip = function (props) {
    var tones = (props.data && props.data.tones) || {};
    var tone = tones[props.colDef.field] || "neutral";
    return window.React.createElement("span", {className: "chip chip-" + tone}, String(props.value));
  };
})();

// The node table's rows come from the server a page at a time (AG Grid's infinite row model, dashboards/bulk.py):
// a new search asks for them again from the first page, a finished bulk action asks for the pages again.
(function () {
  "use strict";
  var clientside = (window.dash_clientside = window.dash_clientside || {});
  function ask(firstPage) {
    var api = window.dash_ag_grid && window.dash_ag_grid.getApi("node-grid");
    if (!api) {
      return window.dash_clientside.no_update;
    }
    if (firstPage) {
      api.purgeInfiniteCache();
      api.paginationGoToFirstPage();
    } else {
      api.refreshInfiniteCache();
    }
    return Date.now();
  }
  clientside.kilnNodeTable = {
    search: function () { return ask(true); },
    refresh: function () { return ask(false); },
    // "apply to all matching nodes" (dashboards/bulk_all.py): a switch each press turns on or off
    flip: function (presses) {
      var on = (presses || 0) % 2 === 1;
      return [on, on ? "true" : "false"];
    },
    // the Run button says what it acts on: the ticked rows, or all N matching nodes
    runLabel: function (all, label) {
      return all && label ? String(label).replace("Apply to", "Run on") : "Run on selected nodes";
    }
  };
})();

// Grouped by a column (dashboards/bulk.py grouped_columns): the first row of a run of equal values on the page
// spans the run (colDef.rowSpan), the rows it covers show no value of their own.
(function () {
  "use strict";
  var functions = (window.dashAgGridFunctions = window.dashAgGridFunctions || {});
  function pageEnd(api) {
    return (api.paginationGetCurrentPage() + 1) * api.paginationGetPageSize();
  }
  function sameAbove(params) {
    var index = params.node && params.node.rowIndex;
    var api = params.api;
    if (index == null || index % api.paginationGetPageSize() === 0) {
      return false;  // the first row of a page heads its run
    }
    var above = api.getDisplayedRowAtIndex(index - 1);
    return !!(above && above.data && params.data && above.data[params.colDef.field] === params.data[params.colDef.field]);
  }
  functions.kilnRunLength = function (params) {
    if (!params.data || sameAbove(params)) {
      return 1;
    }
    var field = params.colDef.field, index = params.node.rowIndex, end = pageEnd(params.api), length = 1;
    while (index + length < end) {
      var next = params.api.getDisplayedRowAtIndex(index + length);
      if (!next || !next.data || next.data[field] !== params.data[field]) {
        break;
      }
      length += 1;
    }
    return length;
  };
  functions.kilnRunHead = function (params) {
    return sameAbove(params) ? "" : params.value;
  };
})();
