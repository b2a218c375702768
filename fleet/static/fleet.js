// Re-fetch every element with data-refresh="URL" every 2 s and swap its HTML.
// Pauses while the tab is hidden; keeps the old content when the fleet cannot be reached.
// Requests carry the session's CSRF token (X-CSRF-Token; any script that posts must use
// fleetFetch) and mark themselves as background refreshes, which do not keep a session alive:
// when the session has ended (401) the page reloads, and the fleet sends the browser to sign in.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function fleetFetch(url, options) {
    options = options || {};
    var headers = options.headers || {};
    headers["X-CSRF-Token"] = csrfToken();
    options.headers = headers;
    options.credentials = "same-origin";
    return fetch(url, options);
  }
  window.fleetFetch = fleetFetch;

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    return fleetFetch(url, { headers: { "Accept": "text/html", "X-Fleet-Refresh": "1" }, cache: "no-store" })
      .then(function (res) {
        if (res.status === 401) { window.location.reload(); }
        if (!res.ok) { throw new Error(res.status + " " + res.statusText); }
        return res.text();
      })
      .then(function (html) {
        el.innerHTML = html;
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); });
  }

  function tick() {
    if (document.hidden) { return; }
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  }

  document.addEventListener("DOMContentLoaded", function () {
    setInterval(tick, PERIOD_MS);
  });
})();
