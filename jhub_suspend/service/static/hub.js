// jhub-suspend on the hub's own pages (templates/page.html loads this after jhub-suspend.js):
// the warning banner before an automatic suspension, and on the home page the Suspend button,
// the Suspended badge, Resume, Discard saved session and the keep-running switch.
(function () {
  "use strict";
  var JHS = window.JHS;
  var user = window.jhdata && window.jhdata.user;
  var base = (window.jhdata && window.jhdata.base_url) || "/hub/";
  var path = window.location.pathname;
  // Pages in the middle of a login or a spawn are left alone.
  if (!JHS || !user || /\/(oauth2|spawn|spawn-pending|stop-pending|login|logout)(\/|$)/.test(path)) {
    return;
  }
  var staging = document.getElementById("jhs-servers");
  var isHome = !!staging;
  var alerts = document.getElementById("jhs-alerts");

  function report(kind, text) {
    if (alerts) return JHS.notify(alerts, kind, text);
    return null;
  }

  // ---- the warning banner ----------------------------------------------------------------

  var banner = document.getElementById("jhs-banner");
  var bannerTimer = null;

  function showWarnings(servers) {
    if (!banner) return;
    var warned = servers.filter(function (s) {
      return s.warning && s.warning.suspend_at && s.state === "running";
    });
    banner.textContent = "";
    if (bannerTimer) clearInterval(bannerTimer);
    if (!warned.length) {
      banner.hidden = true;
      return;
    }
    var rows = warned.map(function (s) {
      var div = JHS.el("div", {
        class: "alert alert-warning d-flex align-items-center gap-2 jhs-warning",
        role: "alert",
        "data-server-name": s.server_name,
      });
      var label = s.server_name ? "Your server “" + s.server_name + "”" : "Your server";
      var text = JHS.el("span", { class: "me-auto" });
      var left = JHS.el("strong", { class: "jhs-time-left" });
      text.append(label + " is idle and will be suspended in ", left, ". ");
      text.append(
        JHS.el("span", { class: "small" }, "Its kernels are saved and come back when you start it again.")
      );
      var btn = JHS.el("button", { type: "button", class: "btn btn-sm btn-warning jhs-keep-running-now" }, "Keep it running");
      btn.addEventListener("click", function () {
        btn.disabled = true;
        JHS.api("PUT", JHS.serverPath(s.user, s.server_name) + "/keep-running", { enabled: true })
          .then(function (r) {
            var until = r.keep_running && r.keep_running.effective_until;
            div.className = "alert alert-success jhs-warning";
            div.textContent =
              label + " will be kept running" + (until ? " until " + new Date(until).toLocaleString() : "") + ".";
          })
          .catch(function (e) {
            btn.disabled = false;
            div.append(JHS.el("div", { class: "text-danger small ms-2" }, "Could not keep it running: " + e.message));
          });
      });
      div.append(text, btn);
      banner.append(div);
      return { el: left, at: Date.parse(s.warning.suspend_at) };
    });
    function tick() {
      rows.forEach(function (r) {
        r.el.textContent = JHS.duration((r.at - Date.now()) / 1000);
      });
    }
    tick();
    bannerTimer = setInterval(tick, 1000);
    banner.hidden = false;
  }

  // ---- the home page -----------------------------------------------------------------------

  function spawnUrl(name) {
    return base + "spawn/" + encodeURIComponent(user) + (name ? "/" + encodeURIComponent(name) : "");
  }

  function place(widget) {
    var name = widget.getAttribute("data-server-name");
    var status = widget.querySelector(".jhs-status");
    var actions = widget.querySelector(".jhs-actions");
    // The parts move next to the hub's own buttons; keep hold of them for wire().
    widget.jhsParts = [status, actions];
    if (!name) {
      var start = document.getElementById("start");
      if (!start) return;
      var row = start.closest(".row");
      var holder = JHS.el("div", { class: "row jhs-default-server mt-3" });
      var col = JHS.el("div", { class: "text-center" });
      holder.append(col);
      row.after(holder);
      col.append(status);
      var stop = document.getElementById("stop");
      (stop || start).before(actions);
      if (widget.getAttribute("data-suspended") === "true") {
        start.textContent = "Resume My Server";
        start.title = "Start your server from its saved session";
      }
    } else {
      var tr = document.querySelector('tr.home-server-row[data-server-name="' + CSS.escape(name) + '"]');
      if (!tr) return;
      tr.children[0].append(status);
      tr.children[tr.children.length - 1].prepend(actions);
      if (widget.getAttribute("data-suspended") === "true") {
        var link = tr.querySelector(".start-server");
        if (link) {
          link.textContent = "resume";
          link.title = "Start this server from its saved session";
        }
      }
    }
    widget.hidden = false;
  }

  function label(name) {
    return name ? "“" + name + "”" : "your server";
  }

  function Label(name) {
    var l = label(name);
    return l.charAt(0).toUpperCase() + l.slice(1);
  }

  function find(widget, selector) {
    var parts = widget.jhsParts || [widget];
    for (var i = 0; i < parts.length; i++) {
      var found = parts[i].querySelector(selector);
      if (found) return found;
    }
    return null;
  }

  function wire(widget, allowKeepRunning, listed) {
    var name = widget.getAttribute("data-server-name");
    var suspendBtn = find(widget, ".jhs-suspend");
    if (suspendBtn) {
      suspendBtn.disabled = false;
      suspendBtn.addEventListener("click", function () {
        suspendBtn.disabled = true;
        suspendBtn.textContent = "Suspending…";
        var note = report("info", "Suspending " + label(name) + ": saving its memory and kernels…");
        JHS.api("POST", JHS.serverPath(user, name) + "/suspend")
          .then(JHS.waitOperation)
          .then(function (op) {
            if (note) note.remove();
            if (op.status === "succeeded") {
              report("success", "Suspended " + label(name) + ".");
              window.location.reload();
            } else {
              report("danger", "Could not suspend " + label(name) + ": " + (op.message || op.status));
              suspendBtn.disabled = false;
              suspendBtn.textContent = "Suspend";
            }
          })
          .catch(function (e) {
            if (note) note.remove();
            report("danger", "Could not suspend " + label(name) + ": " + e.message);
            suspendBtn.disabled = false;
            suspendBtn.textContent = "Suspend";
          });
      });
    }
    var discardBtn = find(widget, ".jhs-discard");
    if (discardBtn) {
      discardBtn.disabled = false;
      discardBtn.addEventListener("click", function () {
        JHS.confirm(
          "Discard the saved session of " + label(name) + "? Its kernels and their variables are lost; " +
            "files on your volume are kept. A fresh server is started.",
          "Discard and start fresh"
        ).then(function (ok) {
          if (!ok) return;
          discardBtn.disabled = true;
          JHS.api("DELETE", JHS.serverPath(user, name) + "/checkpoint")
            .then(function () {
              report("success", "Saved session discarded; starting a fresh server…");
              window.location.assign(spawnUrl(name));
            })
            .catch(function (e) {
              discardBtn.disabled = false;
              report("danger", "Could not discard the saved session: " + e.message);
            });
        });
      });
    }
    var sw = find(widget, ".jhs-keep-running");
    if (sw) {
      var box = sw.querySelector("input");
      var info = sw.querySelector(".jhs-keep-running-until");
      var server = listed[name];
      if (!allowKeepRunning || !server || server.state !== "running") {
        sw.hidden = true;
      } else {
        sw.hidden = false;
        var kr = server.keep_running;
        box.checked = !!kr;
        info.textContent = kr && kr.effective_until ? "until " + new Date(kr.effective_until).toLocaleString() : "";
        box.addEventListener("change", function () {
          var want = box.checked;
          box.disabled = true;
          JHS.api("PUT", JHS.serverPath(user, name) + "/keep-running", { enabled: want })
            .then(function (r) {
              var k = r.keep_running;
              box.checked = !!k;
              info.textContent = k && k.effective_until ? "until " + new Date(k.effective_until).toLocaleString() : "";
              report("success", want ? Label(name) + " will be kept running." : Label(name) + " may be suspended when idle again.");
            })
            .catch(function (e) {
              box.checked = !want;
              report("danger", "Could not change keep-running: " + e.message);
            })
            .finally(function () {
              box.disabled = false;
            });
        });
      }
    }
  }

  var widgets = isHome ? Array.prototype.slice.call(staging.querySelectorAll(".jhs-server")) : [];
  widgets.forEach(place);
  document.querySelectorAll("time.jhs-age").forEach(function (t) {
    t.title = t.getAttribute("datetime");
    t.textContent = JHS.ago(t.getAttribute("datetime"));
  });

  JHS.session()
    .then(function () {
      // The listing (the hub's servers now, with the last cycle's decisions): without it the
      // banner and the keep-running switch wait; Suspend and Discard still work.
      var listing = JHS.api("GET", "servers").catch(function () {
        return { servers: [] };
      });
      var policy = isHome ? JHS.api("GET", "policy").catch(function () {
        return null;
      }) : null;
      return Promise.all([listing, policy]);
    })
    .then(function (answers) {
      var servers = answers[0].servers || [];
      showWarnings(servers);
      var listed = {};
      servers.forEach(function (s) {
        if (s.user === user) listed[s.server_name] = s;
      });
      var allow = !!(answers[1] && answers[1].policy && answers[1].policy.allow_keep_running);
      widgets.forEach(function (w) {
        wire(w, allow, listed);
      });
      document.body.setAttribute("data-jhs-ready", "true");
    })
    .catch(function (e) {
      if (isHome) {
        report("warning", "Suspend controls are unavailable: " + e.message);
        widgets.forEach(function (w) {
          [".jhs-suspend", ".jhs-discard"].forEach(function (sel) {
            var b = find(w, sel);
            if (b) b.title = "The suspend service is unavailable: " + e.message;
          });
        });
      }
      document.body.setAttribute("data-jhs-ready", "error");
    });
})();
