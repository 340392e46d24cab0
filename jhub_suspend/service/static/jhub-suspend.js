// jhub-suspend: talking to the suspend service from the browser (hub pages and the admin page).
// Same origin: the hub is at /hub/, the service at /services/suspend/. The service's OAuth cookie
// comes from a one-time navigation to its login route; its XSRF token from GET api/session.
(function () {
  "use strict";

  function servicePrefix() {
    var el = document.querySelector("[data-service-prefix]");
    if (el) return el.getAttribute("data-service-prefix");
    var base = (window.jhdata && window.jhdata.prefix) || "/";
    return base + "services/suspend/";
  }

  var prefix = servicePrefix();
  var LOGIN_KEY = "jhub-suspend-login-tried";
  var session = null;

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }
  ApiError.prototype.toString = function () {
    return this.message;
  };

  function here() {
    return window.location.pathname + window.location.search;
  }

  // Navigate to the service's login at most once per 10 s (no redirect loops); a 401 that
  // comes back sooner is reported instead.
  function loginOnce(loginUrl) {
    var last = Number(window.sessionStorage.getItem(LOGIN_KEY) || 0);
    if (Date.now() - last < 10000) return false;
    window.sessionStorage.setItem(LOGIN_KEY, String(Date.now()));
    window.location.assign(loginUrl || prefix + "login?next=" + encodeURIComponent(here()));
    return true;
  }

  async function readBody(resp) {
    var text = await resp.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch (e) {
      return { message: "unexpected answer (" + resp.status + " " + resp.statusText + ")" };
    }
  }

  async function getSession() {
    if (session) return session;
    var resp;
    try {
      resp = await fetch(prefix + "api/session?next=" + encodeURIComponent(here()), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
    } catch (e) {
      throw new ApiError(0, "the suspend service is unreachable");
    }
    var body = await readBody(resp);
    if (resp.status === 401) {
      if (loginOnce(body && body.login_url)) {
        return new Promise(function () {}); // the page is going away
      }
      throw new ApiError(401, "could not log in to the suspend service; reload the page");
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, (body && body.message) || "the suspend service failed");
    }
    window.sessionStorage.removeItem(LOGIN_KEY);
    session = body;
    return session;
  }

  // One request to the service's REST API; resolves to the JSON answer, rejects with ApiError.
  async function api(method, path, body) {
    var s = await getSession();
    var init = {
      method: method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-XSRFToken": s.xsrf },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var resp;
    try {
      resp = await fetch(prefix + "api/" + path, init);
    } catch (e) {
      throw new ApiError(0, "the suspend service is unreachable");
    }
    var data = await readBody(resp);
    if (resp.status === 401) {
      session = null;
      loginOnce();
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, (data && data.message) || resp.status + " " + resp.statusText);
    }
    return data;
  }

  function sleep(ms) {
    return new Promise(function (r) {
      setTimeout(r, ms);
    });
  }

  // Follow an operation (202 answer) until it is no longer running.
  async function waitOperation(accepted, timeoutMs) {
    var id = accepted.operation.id;
    var deadline = Date.now() + (timeoutMs || 900000);
    var op = accepted.operation;
    while (op.status === "running" && Date.now() < deadline) {
      await sleep(1000);
      op = await api("GET", "operations/" + encodeURIComponent(id));
    }
    return op;
  }

  function serverPath(user, name) {
    return (
      "servers/" + encodeURIComponent(user) + (name ? "/" + encodeURIComponent(name) : "")
    );
  }

  function humanSize(n) {
    if (n === null || n === undefined || isNaN(n)) return "?";
    var units = ["B", "kB", "MB", "GB", "TB"];
    for (var i = 0; i < units.length; i++) {
      if (n < 1000 || i === units.length - 1) {
        return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
      }
      n /= 1000;
    }
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }

  function ago(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return iso || "";
    return duration((Date.now() - t) / 1000) + " ago";
  }

  // A Bootstrap alert in `container` (an element), newest first; returns the alert.
  function notify(container, kind, text, keep) {
    var div = document.createElement("div");
    div.className = "alert alert-" + kind + " alert-dismissible fade show jhs-alert";
    div.setAttribute("role", kind === "danger" ? "alert" : "status");
    div.textContent = text;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close";
    close.setAttribute("data-bs-dismiss", "alert");
    close.setAttribute("aria-label", "Close");
    div.appendChild(close);
    container.prepend(div);
    if (!keep && kind === "success") {
      setTimeout(function () {
        div.remove();
      }, 8000);
    }
    return div;
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      e.setAttribute(k, attrs[k]);
    });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // A Bootstrap confirmation dialog; resolves true when confirmed.
  function confirmDialog(text, okLabel) {
    var modal = document.getElementById("jhs-confirm");
    if (!modal || !window.bootstrap) return Promise.resolve(window.confirm(text));
    document.getElementById("jhs-confirm-text").textContent = text;
    var ok = document.getElementById("jhs-confirm-ok");
    ok.textContent = okLabel || "OK";
    var dialog = window.bootstrap.Modal.getOrCreateInstance(modal);
    return new Promise(function (resolve) {
      var confirmed = false;
      function onOk() {
        confirmed = true;
        dialog.hide();
      }
      function onHidden() {
        ok.removeEventListener("click", onOk);
        modal.removeEventListener("hidden.bs.modal", onHidden);
        resolve(confirmed);
      }
      ok.addEventListener("click", onOk);
      modal.addEventListener("hidden.bs.modal", onHidden);
      dialog.show();
    });
  }

  window.JHS = {
    prefix: prefix,
    api: api,
    session: getSession,
    waitOperation: waitOperation,
    serverPath: serverPath,
    humanSize: humanSize,
    duration: duration,
    ago: ago,
    notify: notify,
    el: el,
    confirm: confirmDialog,
  };
})();
