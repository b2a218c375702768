// The dashboard's live updates, without a framework and without anything from the internet.
//
// - An element with data-stream="URL" opens a server-sent-event stream (fleet/livestream.py) and
//   applies what it sends: changed device rows, the page when its membership changed, and the
//   summary / overview / events fragments. The stream ends now and then and is reopened, so a
//   session that has ended stops receiving (the page then reloads and the fleet asks to sign in).
// - Elements with data-refresh="URL" (the device page, a rollout's page) are re-fetched every 2 s.
// - <time class="ago" datetime="..."> shows "12 s ago" and is advanced here every second.
// Requests carry the session's CSRF token (X-CSRF-Token; any script that posts must use
// fleetFetch) and mark themselves as background refreshes, which do not keep a session alive.
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

  function background(url) {
    return fleetFetch(url, { headers: { "Accept": "text/html", "X-Fleet-Refresh": "1" }, cache: "no-store" });
  }

  function refresh(el) {
    return background(el.getAttribute("data-refresh"))
      .then(function (res) {
        if (res.status === 401) { window.location.reload(); }
        if (!res.ok) { throw new Error(res.status + " " + res.statusText); }
        return res.text();
      })
      .then(function (html) {
        el.innerHTML = html;
        tickAgo();
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); });
  }

  function ago(seconds) {
    if (seconds < 2) { return "just now"; }
    if (seconds >= 86400) { return Math.floor(seconds / 86400) + " d ago"; }
    if (seconds >= 3600) { return Math.floor(seconds / 3600) + " h ago"; }
    if (seconds >= 60) { return Math.floor(seconds / 60) + " min ago"; }
    return Math.floor(seconds) + " s ago";
  }

  function tickAgo() {
    var now = Date.now();
    document.querySelectorAll("time.ago[datetime]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) { el.textContent = ago(Math.max(0, (now - at) / 1000)); }
    });
  }

  function replaceRow(id, html) {
    var old = document.querySelector('tr.device-row[data-device="' + CSS.escape(id) + '"]');
    if (!old) { return; }
    var holder = document.createElement("tbody");
    holder.innerHTML = html.trim();
    var row = holder.firstElementChild;
    if (row) { old.replaceWith(row); row.classList.add("changed"); }
  }

  function setHtml(selector, html) {
    var el = document.querySelector(selector);
    if (el) { el.innerHTML = html; }
  }

  function stream(el) {
    var source = new EventSource(el.getAttribute("data-stream") + "&background=1");
    window.fleetStream = { received: 0, bytes: 0 };
    function count(ev) { window.fleetStream.received += 1; window.fleetStream.bytes += ev.data.length; }
    source.addEventListener("rows", function (ev) {
      count(ev);
      JSON.parse(ev.data).forEach(function (r) { replaceRow(r.id, r.html); });
      tickAgo();
    });
    source.addEventListener("page", function (ev) {
      count(ev);
      el.innerHTML = JSON.parse(ev.data).html;
      tickAgo();
    });
    ["summary", "overview", "events"].forEach(function (name) {
      source.addEventListener(name, function (ev) {
        count(ev);
        setHtml("#" + name, JSON.parse(ev.data).html);
        tickAgo();
      });
    });
    source.onopen = function () { document.body.classList.remove("stale"); };
    source.onerror = function () {
      document.body.classList.add("stale");
      // a refused reconnection (the session ended) shows here: ask the page itself
      background("/ui/summary").then(function (res) {
        if (res.status === 401) { source.close(); window.location.reload(); }
      }).catch(function () { /* the fleet is unreachable: EventSource retries by itself */ });
    };
  }

  function tick() {
    if (document.hidden) { return; }
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  }

  // A form with data-confirm="question" (the rollout page's Abort) asks before it is sent; the
  // listener sits on the document, so forms of re-fetched fragments are covered too.
  document.addEventListener("submit", function (ev) {
    var question = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-stream]").forEach(stream);
    setInterval(tick, PERIOD_MS);
    setInterval(tickAgo, 1000);
  });
})();
