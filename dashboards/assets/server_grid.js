// Kiln console: grids whose rows the server pages (AG Grid's infinite row model, dashboards/server_grid.py).
// When the page's callback has drawn them again for another choice (tenant, period), the grids that stayed
// ask for their rows again from the first page; a grid drawn anew asks by itself.
(function () {
  "use strict";
  var clientside = (window.dash_clientside = window.dash_clientside || {});
  clientside.kilnServerGrid = {
    refresh: function () {
      var ids = arguments[arguments.length - 1] || [];
      ids.forEach(function (id) {
        var api = window.dash_ag_grid && window.dash_ag_grid.getApi(id);
        if (api && !api.isDestroyed()) {
          api.purgeInfiniteCache();
          api.paginationGoToFirstPage();
        }
      });
      return Date.now();
    }
  };
})();
