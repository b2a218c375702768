// Re-fetch every element with data-refresh="URL" every 2 s and swap its HTML.
// Pauses while the tab is hidden; keeps the old content when the fleet cannot be reached.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    return fetch(url, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (res) {
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
