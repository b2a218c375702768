/* Kiosk page: screen fragments from the server, on-screen keyboard, scanner events (SSE),
 * idle warning and full reset. The session id lives only in this script's memory: no cookie,
 * no localStorage. A reset wipes the DOM and storage and reloads a fresh page.
 */
(function () {
  "use strict";

  var body = document.body;
  var app = document.getElementById("app");
  var cfg = {
    idle: Number(body.dataset.idleS) * 1000,
    warn: Number(body.dataset.warnS) * 1000,
    signage: Number(body.dataset.signageS) * 1000,
    heartbeat: Number(body.dataset.heartbeatS) * 1000,
  };
  var state = {
    sid: null, lang: document.documentElement.lang || "vi", screen: null, params: {},
    large: false, telex: true, score: 0, es: null, lastInput: Date.now(), lastTouchSent: 0,
    warnAt: 0, touched: false, pollTimer: 0, shift: false, autoSpeak: false, audio: null, spoken: null, resetting: false, searchTimer: 0, signageTimer: 0, toastTimer: 0,
  };

  function sessionHeaders(json) {
    var h = { "X-Kiosk-Session": state.sid || "" };
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  function request(url, options) {
    options = options || {};
    options.headers = Object.assign(sessionHeaders(options.body !== undefined), options.headers || {});
    return fetch(url, options).then(function (r) {
      if (r.status === 410) { reset("gone"); return null; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).catch(function () {
      if (!state.resetting) toast(body.dataset.errorText || "…");
      return null;
    });
  }

  /* ---------- rendering ---------- */
  function applyFragment(html) {
    app.innerHTML = html;
    var root = app.firstElementChild;
    if (root && root.dataset.screen) {
      if (root.dataset.screen !== state.screen) window.scrollTo(0, 0);
      state.screen = root.dataset.screen;
      state.lang = root.dataset.lang || state.lang;
      document.documentElement.lang = state.lang;
    }
    afterRender();
  }

  function afterRender() {
    var large = app.querySelector("[data-action=large]");
    if (large) large.setAttribute("aria-pressed", String(state.large));
    var telex = app.querySelector("[data-action=telex]");
    if (telex) {
      telex.setAttribute("aria-pressed", String(state.telex));
      telex.textContent = state.telex ? telex.dataset.on : telex.dataset.off;
    }
    state.score = 0;
    var auto = app.querySelector("[data-action=auto-speak]");
    if (auto) auto.setAttribute("aria-pressed", String(state.autoSpeak));
    var say = app.querySelector("[data-say]");
    if (say && state.autoSpeak && say.dataset.say !== state.spoken) speak(say.dataset.say);
    state.spoken = say ? say.dataset.say : null;
    clearTimeout(state.pollTimer);
    var poll = app.querySelector("[data-poll]");
    if (poll) state.pollTimer = setTimeout(function () { post(poll.dataset.poll, {}); }, 2000);
    var first = app.querySelector(".ff-error [data-kbd], [data-kbd][data-fv]");
    if (first) first.classList.add("editing");
    clearInterval(state.signageTimer);
    if (state.screen === "signage") state.signageTimer = setInterval(nextSlide, cfg.signage);
  }

  function nextSlide() {
    var slides = app.querySelectorAll(".slide");
    if (slides.length < 2) return;
    var i = 0;
    slides.forEach(function (s, k) { if (s.classList.contains("active")) i = k; });
    slides[i].classList.remove("active");
    slides[(i + 1) % slides.length].classList.add("active");
  }

  function go(screen, params) {
    state.params = params || {};
    var q = new URLSearchParams(Object.assign({ lang: state.lang }, state.params));
    return request("/screen/" + screen + "?" + q.toString()).then(function (html) {
      if (html !== null) applyFragment(html);
    });
  }

  function post(url, data, busyText) {
    if (busyText) toast(busyText, 0);
    return request(url, { method: "POST", body: JSON.stringify(data || {}) }).then(function (html) {
      if (busyText) hideToast();
      if (html !== null) applyFragment(html);
    });
  }

  /* ---------- spoken guidance ---------- */
  function speak(key) {
    if (!key) return;
    if (state.audio) state.audio.pause();
    state.audio = new Audio("/api/speak/" + encodeURIComponent(key) + "?lang=" + state.lang);
    state.audio.play().catch(function () { /* no audio output: the text is on screen */ });
  }

  /* ---------- toast ---------- */
  function toast(text, ms) {
    var el = document.getElementById("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(state.toastTimer);
    if (ms !== 0) state.toastTimer = setTimeout(hideToast, ms || 6000);
  }
  function hideToast() { document.getElementById("toast").hidden = true; }

  /* ---------- on-screen keyboard ---------- */
  function onKey(key) {
    var field = app.querySelector("[data-kbd].editing") || app.querySelector("[data-kbd]:not([data-fv])");
    if (!field) return;
    var value = field.dataset.value || "";
    var search = field.dataset.kbd === "search";
    var form = !!field.dataset.fv;
    var kind = field.dataset.kbd;
    if (key === "SHIFT") {
      state.shift = !state.shift;
      app.querySelectorAll("[data-key=SHIFT]").forEach(function (b) { b.setAttribute("aria-pressed", String(state.shift)); });
      return;
    }
    /* capitals: after Shift, or at the start of each word of a name */
    if (/^[a-z]$/.test(key) && (state.shift || (kind === "name" && (value === "" || / $/.test(value))))) key = key.toUpperCase();
    if (state.shift) {
      state.shift = false;
      app.querySelectorAll("[data-key=SHIFT]").forEach(function (b) { b.setAttribute("aria-pressed", "false"); });
    }
    if (key === "BACK") value = Array.from(value).slice(0, -1).join("");
    else if (key === "CLEAR") value = "";
    else if (key === "SPACE") value += " ";
    else if ((search || kind === "text" || kind === "name") && state.telex && window.Telex) value = window.Telex.apply(value, key);
    else value += key;
    value = value.slice(0, form ? 300 : search ? 80 : 48);
    field.dataset.value = value;
    field.textContent = value;
    if (search) scheduleSearch(value);
  }

  function scheduleSearch(query) {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(function () {
      var q = new URLSearchParams({ q: query, lang: state.lang });
      request("/part/results?" + q.toString()).then(function (html) {
        var results = document.getElementById("results");
        if (html !== null && results) results.innerHTML = html;
      });
    }, 150);
  }

  /* ---------- clicks ---------- */
  function onClick(ev) {
    if (!state.sid || state.resetting) return;
    if (state.screen === "signage") { go("home"); return; }
    var el = ev.target.closest("[data-key], [data-go], [data-post], [data-action]");
    if (!el || !app.contains(el)) return;
    if (el.dataset.key) { onKey(el.dataset.key); return; }
    if (el.dataset.go) { go(el.dataset.go, el.dataset.id ? { id: el.dataset.id } : {}); return; }
    if (el.dataset.post) { post(el.dataset.post, el.dataset.body ? JSON.parse(el.dataset.body) : {}, el.dataset.busy); return; }
    action(el.dataset.action, el);
  }

  function formValues() {
    var values = {};
    app.querySelectorAll("[data-fv]").forEach(function (f) { values[f.dataset.fv] = f.dataset.value || ""; });
    return values;
  }

  function action(name, el) {
    if (name === "lang" && app.querySelector("[data-fv]")) {
      /* keep what was typed on the form before it is drawn again in the other language */
      state.lang = el.dataset.lang;
      request("/api/submit/keep", { method: "POST", body: JSON.stringify({ values: formValues() }) })
        .then(function () { go("submit"); });
    } else if (name === "lang") {
      state.lang = el.dataset.lang;
      var params = Object.assign({}, state.params);
      var search = app.querySelector("[data-kbd=search]");
      if (search && search.dataset.value) params.q = search.dataset.value;
      go(state.screen || "home", params);
    } else if (name === "large") {
      state.large = !state.large;
      document.documentElement.classList.toggle("large", state.large);
      el.setAttribute("aria-pressed", String(state.large));
    } else if (name === "telex") {
      state.telex = !state.telex;
      afterRender();
    } else if (name === "score") {
      state.score = Number(el.dataset.score);
      app.querySelectorAll("[data-action=score]").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === el));
      });
    } else if (name === "chip") {
      el.setAttribute("aria-pressed", String(el.getAttribute("aria-pressed") !== "true"));
    } else if (name === "rate") {
      var reasons = [];
      app.querySelectorAll("[data-action=chip][aria-pressed=true]").forEach(function (c) { reasons.push(c.dataset.reason); });
      post("/api/rating", { score: state.score || null, reasons: reasons });
    } else if (name === "edit") {
      app.querySelectorAll("[data-kbd].editing").forEach(function (f) { f.classList.remove("editing"); });
      el.classList.add("editing");
    } else if (name === "choose") {
      var group = el.closest("[data-fv]");
      group.dataset.value = el.dataset.value;
      group.querySelectorAll("[data-action=choose]").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === el));
        b.setAttribute("aria-checked", String(b === el));
      });
    } else if (name === "listen") {
      speak(el.dataset.say);
    } else if (name === "auto-speak") {
      state.autoSpeak = !state.autoSpeak;
      el.setAttribute("aria-pressed", String(state.autoSpeak));
      if (state.autoSpeak) speak((app.querySelector("[data-say]") || {}).dataset.say);
    } else if (name === "form-save") {
      post("/api/submit/form", { values: formValues() });
    } else if (name === "end") {
      reset("end");
    } else if (name === "submit") {
      var field = app.querySelector("[data-kbd]");
      post("/api/lookup", { code: field ? field.dataset.value || "" : "" }, el.dataset.busy);
    }
  }

  /* ---------- scanner events ---------- */
  function connectEvents() {
    var es = new EventSource("/api/events?sid=" + encodeURIComponent(state.sid));
    es.addEventListener("screen", function (ev) {
      var data = JSON.parse(ev.data);
      noteInput();
      state.params = {};
      applyFragment(data.html);
      performance.mark("kiosk-push");
    });
    es.addEventListener("toast", function (ev) { noteInput(); toast(JSON.parse(ev.data).text); });
    es.onerror = function () {
      if (es.readyState !== EventSource.CLOSED || state.resetting) return;
      setTimeout(function () {
        if (state.es !== es || state.resetting) return;
        request("/api/session/touch", { method: "POST", body: "{}" }).then(function () {
          if (!state.resetting && state.es === es) connectEvents();
        });
      }, 1000);
    };
    state.es = es;
  }

  /* ---------- idle handling and reset ---------- */
  function noteInput() {
    var now = Date.now();
    state.lastInput = now;
    state.touched = true;
    if (state.sid && now - state.lastTouchSent > 5000) {
      state.lastTouchSent = now;
      request("/api/session/touch", { method: "POST", body: "{}" });
    }
  }

  function showWarning() {
    state.warnAt = Date.now();
    document.getElementById("idle").hidden = false;
    updateCountdown();
  }

  function continueSession() {
    state.warnAt = 0;
    document.getElementById("idle").hidden = true;
    noteInput();
  }

  function updateCountdown() {
    var left = Math.max(0, Math.ceil((cfg.warn - (Date.now() - state.warnAt)) / 1000));
    document.getElementById("idle-count").textContent = String(left);
    document.querySelectorAll(".idle-text").forEach(function (el) {
      el.textContent = el.dataset.tpl.replace("{n}", String(left));
    });
  }

  function tick() {
    if (state.resetting || !state.sid) return;
    var now = Date.now();
    if (state.warnAt) {
      if (now - state.warnAt >= cfg.warn) reset("idle");
      else updateCountdown();
      return;
    }
    if (state.screen === "signage" || now - state.lastInput < cfg.idle) return;
    if (state.screen === "home" && !state.touched) reset("idle");
    else showWarning();
  }

  function clearCookies() {
    document.cookie.split(";").forEach(function (c) {
      var name = c.split("=")[0].trim();
      if (name) document.cookie = name + "=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/";
    });
  }

  function reset(reason) {
    if (state.resetting) return;
    state.resetting = true;
    var sid = state.sid;
    state.sid = null;
    if (state.audio) state.audio.pause();
    if (state.es) { state.es.close(); state.es = null; }
    app.innerHTML = "";
    document.getElementById("idle").hidden = true;
    hideToast();
    try { window.localStorage.clear(); window.sessionStorage.clear(); } catch (e) { /* storage disabled */ }
    clearCookies();
    var done = function () { window.location.replace("/?screen=signage"); };
    if (!sid) { done(); return; }
    var fallback = setTimeout(done, 1500);
    fetch("/api/session/end", {
      method: "POST", keepalive: true, body: JSON.stringify({ reason: reason }),
      headers: { "Content-Type": "application/json", "X-Kiosk-Session": sid },
    }).catch(function () {}).then(function () { clearTimeout(fallback); done(); });
  }

  function heartbeat() {
    fetch("/api/heartbeat", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ w: window.innerWidth, h: window.innerHeight, sid: state.sid }),
    }).catch(function () {});
  }

  /* ---------- start ---------- */
  function start() {
    document.addEventListener("pointerdown", noteInput, true);
    document.addEventListener("keydown", noteInput, true);
    app.addEventListener("click", onClick);
    document.getElementById("idle").addEventListener("click", continueSession);
    document.addEventListener("contextmenu", function (ev) { ev.preventDefault(); });
    var root = app.firstElementChild;
    state.screen = root ? root.dataset.screen : "home";
    afterRender();
    fetch("/api/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ lang: state.lang }),
    }).then(function (r) { return r.json(); }).then(function (data) {
      state.sid = data.sid;
      state.lastInput = Date.now();
      connectEvents();
      performance.mark("kiosk-interactive");
      document.documentElement.dataset.ready = "yes";
    }).catch(function () { setTimeout(function () { window.location.reload(); }, 3000); });
    setInterval(tick, 250);
    heartbeat();
    setInterval(heartbeat, cfg.heartbeat);
  }

  start();
})();
