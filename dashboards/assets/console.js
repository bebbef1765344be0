// Kiln console: send the CSRF token with every state-changing request of this origin (Dash's
// callback POSTs), and go back to the sign-in form when the server says the session is over.
(function () {
  "use strict";
  function readCookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }
  var originalFetch = window.fetch.bind(window);
  var leaving = false;  // several callbacks may get 401 at once: one navigation, not one aborting the other
  window.fetch = function (input, init) {
    init = init || {};
    var url = new URL(typeof input === "string" ? input : input.url, window.location.href);
    var method = (init.method || (typeof input === "string" ? "GET" : input.method) || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD" && url.origin === window.location.origin) {
      var headers = new Headers(init.headers || (typeof input === "string" ? {} : input.headers));
      headers.set("X-Kiln-CSRF", readCookie("kiln_csrf"));
      init.headers = headers;
    }
    return originalFetch(input, init).then(function (response) {
      if (response.status === 401 && url.origin === window.location.origin && url.pathname.indexOf("/_dash-") === 0 &&
          !leaving) {
        leaving = true;
        return response.clone().json().catch(function () { return {}; }).then(function (body) {
          var next = window.location.pathname + window.location.search;
          window.location.assign("/signin?reason=" + encodeURIComponent(body.reason || "expired") +
                                 "&next=" + encodeURIComponent(next));
          return response;
        });
      }
      return response;
    });
  };
})();
