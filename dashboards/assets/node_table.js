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
