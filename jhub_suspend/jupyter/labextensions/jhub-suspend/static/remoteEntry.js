// jhub-suspend inside JupyterLab: a notification before the suspend service suspends this idle
// server ("Keep it running"), one while it is suspended ("Resume"), and, when Lab loses its
// server, the difference between "suspended" and "unreachable".
//
// A hand-written prebuilt ("federated") extension with no build step. JupyterLab loads this
// script, calls init() on the container it registers in window._JUPYTERLAB with the share scope,
// then get() for the "./extension" module and registers the plugins of its default export. The
// only packages it uses are @jupyterlab/application and @jupyterlab/apputils, taken from that
// share scope; notifications go through the apputils:notify commands (JupyterLab >= 4).
//
// It talks to the suspend service on the same origin (/services/suspend/), like the hub pages
// do. The service's OAuth cookie comes from a hidden frame that runs the hub's OAuth once
// (login?next=api/session); a navigation of the Lab page itself would lose the user's work.
(function () {
  "use strict";

  var NAME = "jhub-suspend";
  var POLL_MS = 30000; // how often the service is asked while nothing is announced
  var WARNED_POLL_MS = 10000; // while a warning is shown, so its countdown stays close
  var MAX_BACKOFF_MS = 600000;
  var KEEP_RUNNING = "jhub-suspend:keep-running";
  var RESUME = "jhub-suspend:resume";

  function pageConfig() {
    var el = document.getElementById("jupyter-config-data");
    if (!el) return {};
    try {
      return JSON.parse(el.textContent) || {};
    } catch (e) {
      return {};
    }
  }

  // The service's URL prefix: page config `jhubSuspendServicePrefix` (labconfig/page_config.json)
  // where a site names the service differently, else /services/suspend/ next to the hub's prefix.
  function servicePrefix(cfg) {
    if (cfg.jhubSuspendServicePrefix) return cfg.jhubSuspendServicePrefix;
    var hub = cfg.hubPrefix || "";
    if (!/hub\/$/.test(hub)) return null;
    return hub.replace(/hub\/$/, "") + "services/suspend/";
  }

  function minutesLeft(iso) {
    var seconds = Math.max(0, (Date.parse(iso) - Date.now()) / 1000);
    if (seconds < 90) return "less than 2 minutes";
    return "about " + Math.round(seconds / 60) + " minutes";
  }

  function clock(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function ServiceClient(prefix) {
    this.prefix = prefix;
    this.session = null;
  }

  ServiceClient.prototype.request = async function (method, path, body) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    // JupyterHub accepts a service's cookie on fetch() requests, GETs included, only with XSRF.
    if (this.session) init.headers["X-XSRFToken"] = this.session.xsrf;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var resp = await fetch(this.prefix + path, init);
    var text = await resp.text();
    var data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      var err = new Error((data && data.message) || resp.status + " " + resp.statusText);
      err.status = resp.status;
      err.loginUrl = data && data.login_url;
      throw err;
    }
    return data;
  };

  // Log in to the service through the hub's OAuth in a hidden frame; resolves when the frame has
  // come back to the service (its cookies are set then).
  ServiceClient.prototype.loginInFrame = function (url) {
    return new Promise(function (resolve, reject) {
      var frame = document.createElement("iframe");
      frame.hidden = true;
      frame.setAttribute("aria-hidden", "true");
      frame.setAttribute("data-jhub-suspend-login", "");
      var timer = setTimeout(function () {
        frame.remove();
        reject(new Error("logging in to the suspend service timed out"));
      }, 30000);
      frame.addEventListener("load", function () {
        clearTimeout(timer);
        frame.remove();
        resolve();
      });
      frame.src = url;
      document.body.appendChild(frame);
    });
  };

  ServiceClient.prototype.ensureSession = async function () {
    if (this.session) return this.session;
    var path = "api/session?next=" + encodeURIComponent(this.prefix + "api/session");
    try {
      this.session = await this.request("GET", path);
    } catch (e) {
      if (e.status !== 401 || !e.loginUrl) throw e;
      await this.loginInFrame(e.loginUrl);
      this.session = await this.request("GET", path);
    }
    return this.session;
  };

  // The service's view of this one server, or null when it does not list it.
  ServiceClient.prototype.server = async function (owner, name) {
    await this.ensureSession();
    var query = "?user=" + encodeURIComponent(owner) + "&server=" + encodeURIComponent(name);
    try {
      var data = await this.request("GET", "api/servers" + query);
      return (data.servers || [])[0] || null;
    } catch (e) {
      if (e.status === 401) this.session = null;
      throw e;
    }
  };

  ServiceClient.prototype.keepRunning = async function (owner, name) {
    await this.ensureSession();
    var path =
      "api/servers/" + encodeURIComponent(owner) + (name ? "/" + encodeURIComponent(name) : "") + "/keep-running";
    return this.request("PUT", path, { enabled: true });
  };

  // What this page shows of the service's view of its server: one notification at a time.
  function Notifier(app, cfg, client) {
    this.app = app;
    this.owner = cfg.hubServerUser || cfg.hubUser;
    this.name = cfg.hubServerName || "";
    this.hubPrefix = cfg.hubPrefix;
    this.client = client;
    this.shown = { id: null, kind: null, text: null };
    this.delay = POLL_MS;
    this.backoff = POLL_MS;
    // Set when Lab has lost its server. The service's listing is as of its last cycle, so
    // "suspended" can be stale just after a resume; it is believed only once Lab agrees.
    this.lost = false;
  }

  Notifier.prototype.notify = function (kind, type, message, actions) {
    var commands = this.app.commands;
    var shown = this.shown;
    var options = { autoClose: false, actions: actions || [], data: { jhubSuspend: kind } };
    if (shown.id && shown.kind === kind) {
      if (shown.text === message) return Promise.resolve();
      shown.text = message;
      // (update takes the options at the top level, notify under `options`)
      return commands.execute("apputils:update-notification", {
        id: shown.id,
        message: message,
        type: type,
        autoClose: false,
        actions: options.actions,
        data: options.data,
      });
    }
    this.dismiss();
    shown = this.shown = { id: null, kind: kind, text: message };
    return commands
      .execute("apputils:notify", { message: message, type: type, options: options })
      .then(function (id) {
        shown.id = id;
      });
  };

  Notifier.prototype.dismiss = function () {
    if (this.shown.id) this.app.commands.execute("apputils:dismiss-notification", { id: this.shown.id });
    this.shown = { id: null, kind: null, text: null };
  };

  Notifier.prototype.fetchServer = function () {
    return this.client.server(this.owner, this.name);
  };

  Notifier.prototype.keepRunning = function () {
    var self = this;
    var commands = this.app.commands;
    return this.client.keepRunning(this.owner, this.name).then(
      function (answer) {
        var until = answer && answer.keep_running && answer.keep_running.effective_until;
        self.dismiss();
        commands.execute("apputils:notify", {
          message:
            "This server will be kept running" + (until ? " until " + new Date(until).toLocaleString() : "") + ".",
          type: "success",
          options: { autoClose: 8000, data: { jhubSuspend: "kept" } },
        });
      },
      function (e) {
        commands.execute("apputils:notify", {
          message: "Could not keep this server running: " + e.message,
          type: "error",
          options: { autoClose: false, data: { jhubSuspend: "error" } },
        });
      }
    );
  };

  // The hub's spawn URL for this server, back to this page afterwards: starting a suspended
  // server restores it.
  Notifier.prototype.resumeUrl = function () {
    var spawn =
      this.hubPrefix + "spawn/" + encodeURIComponent(this.owner) + (this.name ? "/" + encodeURIComponent(this.name) : "");
    return spawn + "?next=" + encodeURIComponent(window.location.pathname + window.location.search);
  };

  // Show what the service says of this server; true when it is (being) suspended.
  Notifier.prototype.show = function (server) {
    var state = server && server.state;
    if (state === "running" && server.warning && server.warning.suspend_at) {
      var at = server.warning.suspend_at;
      this.delay = WARNED_POLL_MS;
      this.notify(
        "warning",
        "warning",
        "This server is idle and will be suspended in " + minutesLeft(at) + " (at " + clock(at) + "). " +
          "Its kernels are saved and come back when you resume it.",
        [{ label: "Keep it running", commandId: KEEP_RUNNING, displayType: "accent" }]
      );
      return false;
    }
    if (state === "suspending") {
      this.delay = WARNED_POLL_MS;
      this.notify(
        "suspending",
        "in-progress",
        "This server is being suspended to free its resources; its kernels and variables are being saved."
      );
      return true;
    }
    this.delay = POLL_MS;
    if (state === "suspended" && this.lost) {
      this.notify(
        "suspended",
        "info",
        "This server was suspended to free its resources. Its kernels are saved: resume it to " +
          "carry on where you left off.",
        [{ label: "Resume", commandId: RESUME, displayType: "accent" }]
      );
      return true;
    }
    if (this.shown.kind && this.shown.kind !== "kept" && this.shown.kind !== "error") this.dismiss();
    return false;
  };

  Notifier.prototype.poll = async function () {
    var self = this;
    try {
      this.show(await this.fetchServer());
      this.backoff = POLL_MS;
      setTimeout(function () { self.poll(); }, this.delay);
    } catch (e) {
      // The service is optional to the notebook: say why in the console, ask again later.
      console.warn("jhub-suspend: " + e.message);
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      setTimeout(function () { self.poll(); }, this.backoff);
    }
  };

  var notifiers = new WeakMap();

  // The page's one Notifier, or null where there is no hub or service to ask.
  function notifierFor(app) {
    if (notifiers.has(app)) return notifiers.get(app);
    var cfg = pageConfig();
    var prefix = servicePrefix(cfg);
    var notifier = null;
    if (!(cfg.hubServerUser || cfg.hubUser) || !prefix) {
      notifier = null; // not a JupyterHub single-user server
    } else if (cfg.hubHost && cfg.hubHost !== window.location.origin) {
      // With the hub on another host the service's cookie cannot be had from here.
      console.info("jhub-suspend: the hub is on another origin; no in-Lab notifications");
    } else {
      notifier = new Notifier(app, cfg, new ServiceClient(prefix));
    }
    notifiers.set(app, notifier);
    return notifier;
  }

  function withTimeout(promise, ms) {
    return Promise.race([
      promise,
      new Promise(function (_, reject) {
        setTimeout(function () {
          reject(new Error("no answer in " + ms / 1000 + " s"));
        }, ms);
      }),
    ]);
  }

  function plugins(application, apputils) {
    var notifications = {
      id: "jhub-suspend:notifications",
      description: "Warns before jhub-suspend suspends this idle server, and offers to resume it.",
      autoStart: true,
      activate: function (app) {
        var notifier = notifierFor(app);
        if (!notifier) return;
        app.commands.addCommand(KEEP_RUNNING, {
          label: "Keep this server running",
          caption: "Ask the suspend service not to suspend this idle server for now",
          execute: function () {
            return notifier.keepRunning();
          },
        });
        app.commands.addCommand(RESUME, {
          label: "Resume this server",
          caption: "Start the server again; its saved kernels are restored",
          execute: function () {
            window.location.assign(notifier.resumeUrl());
          },
        });
        app.restored.then(function () {
          notifier.poll();
        });
      },
    };

    // Replaces @jupyterlab/hub-extension:connectionlost (disabled in package.json): when the
    // server went away because it was suspended, say so and offer Resume, without the hub's modal
    // "not running, restart it?" dialog; otherwise behave as that plugin does.
    var connectionLost = {
      id: "jhub-suspend:connectionlost",
      description: "Tells a suspended server from one that is unreachable when the connection is lost.",
      autoStart: true,
      requires: [],
      optional: [application.JupyterLab.IInfo],
      provides: application.IConnectionLost,
      activate: function (app, info) {
        var cfg = pageConfig();
        if (!cfg.hubPrefix) return application.ConnectionLost;
        var busy = false;
        return async function (manager, err) {
          if (busy) return;
          busy = true;
          try {
            var notifier = notifierFor(app);
            var server = null;
            if (notifier) {
              server = await withTimeout(notifier.fetchServer(), 5000).catch(function (e) {
                console.warn("jhub-suspend: " + e.message);
                return null;
              });
            }
            if (notifier) notifier.lost = true;
            if (server && notifier.show(server)) {
              console.info("jhub-suspend: lost the server, which is " + server.state);
              return;
            }
            if (info) info.isConnected = false;
            var result = await apputils.showDialog({
              title: "Server unavailable or unreachable",
              body: "Your server at " + (cfg.baseUrl || "") + " is not running.\nWould you like to restart it?",
              buttons: [
                apputils.Dialog.okButton({ label: "Restart" }),
                apputils.Dialog.cancelButton({ label: "Dismiss" }),
              ],
            });
            if (info) info.isConnected = true;
            if (result.button.accept) await app.commands.execute("hub:restart");
          } finally {
            busy = false;
          }
        };
      },
    };
    return [notifications, connectionLost];
  }

  // JupyterLab's own copy of a shared package, from the share scope given to init(): tokens are
  // compared by identity, so the plugin must use the application's instances.
  var shareScope = null;

  async function importShared(name) {
    var versions = shareScope && shareScope[name];
    if (!versions) throw new Error(NAME + ": JupyterLab does not share " + name);
    var keys = Object.keys(versions);
    var loaded = keys.filter(function (k) {
      return versions[k].loaded;
    });
    var factory = await versions[(loaded.length ? loaded : keys)[0]].get();
    return factory();
  }

  var containers = (window._JUPYTERLAB = window._JUPYTERLAB || {});
  containers[NAME] = {
    init: function (scope) {
      shareScope = scope;
      return Promise.resolve();
    },
    get: function (module) {
      if (module !== "./extension") {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return Promise.all([importShared("@jupyterlab/application"), importShared("@jupyterlab/apputils")]).then(
        function (mods) {
          var exports = { __esModule: true, default: plugins(mods[0], mods[1]) };
          return function () {
            return exports;
          };
        }
      );
    },
  };
})();
