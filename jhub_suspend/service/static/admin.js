// jhub-suspend admin page: every server, actions, filters, and charts from Prometheus.
(function () {
  "use strict";
  var JHS = window.JHS;
  var alerts = document.getElementById("jhs-admin-alerts");
  var tbody = document.querySelector("#jhs-servers tbody");
  var userFilter = document.getElementById("jhs-filter-user");
  var stateFilter = document.getElementById("jhs-filter-state");
  var servers = [];
  var STATE_CLASS = {
    running: "success",
    suspending: "warning",
    suspended: "info",
    restoring: "warning",
    failed: "danger",
  };

  function pct(sig) {
    return sig && sig.max !== null && sig.max !== undefined ? sig.max.toFixed(0) + " %" : "–";
  }

  function label(s) {
    return s.user + (s.server_name ? "/" + s.server_name : "");
  }

  function action(s, text, cls, run) {
    var b = JHS.el("button", { type: "button", class: "btn btn-xs btn-sm py-0 " + cls, "data-action": text }, text);
    b.addEventListener("click", function () {
      b.disabled = true;
      run()
        .then(function (msg) {
          JHS.notify(alerts, "success", label(s) + ": " + msg);
        })
        .catch(function (e) {
          JHS.notify(alerts, "danger", label(s) + ": " + (e.message || e));
        })
        .finally(function () {
          b.disabled = false;
          refresh();
        });
    });
    return b;
  }

  function operation(s, verb) {
    return JHS.api("POST", JHS.serverPath(s.user, s.server_name) + "/" + verb)
      .then(JHS.waitOperation)
      .then(function (op) {
        if (op.status !== "succeeded") throw new Error(verb + " failed: " + (op.message || op.status));
        return verb === "suspend" ? "suspended" : "resumed";
      });
  }

  function row(s) {
    var tr = JHS.el("tr", { "data-user": s.user, "data-server-name": s.server_name, "data-state": s.state });
    var req = s.requests || {};
    var u = s.utilisation || {};
    var mem = u.memory_ratio_of_request;
    var ck = s.checkpoint;
    var kr = s.keep_running;
    var err = s.last_error;
    var cells = [
      s.user,
      s.server_name || "(default)",
      null,
      pct(u.cpu_percent_of_request) + " of " + (req.cpu !== undefined && req.cpu !== null ? req.cpu + " CPU" : "?"),
      req.gpu ? pct(u.gpu_percent) + " of " + req.gpu + " GPU" : "–",
      mem !== null && mem !== undefined ? (100 * mem).toFixed(0) + " % of " + JHS.humanSize(req.memory) : "–",
      s.state === "running" ? JHS.duration(s.idle_seconds) : "–",
      ck ? JHS.humanSize(ck.size) + ", " + JHS.ago(ck.created)
        : s.estimated_checkpoint_bytes !== null && s.estimated_checkpoint_bytes !== undefined
          ? "≈ " + JHS.humanSize(s.estimated_checkpoint_bytes) + " (estimate)" : "–",
      kr ? (kr.effective_until ? "until " + new Date(kr.effective_until).toLocaleString() : "yes") : "–",
      null,
      null,
    ];
    cells.forEach(function (c, i) {
      var td = JHS.el("td", {}, c === null ? undefined : c);
      if (i === 2) {
        td.append(JHS.el("span", { class: "badge text-bg-" + (STATE_CLASS[s.state] || "secondary") }, s.state));
        if (s.warning) td.append(JHS.el("span", { class: "ms-1 small text-warning", title: s.warning.message }, "⚠ suspends " + new Date(s.warning.suspend_at).toLocaleTimeString()));
      }
      if (i === 4 && s.gpu_capability) {
        // Whether this server's GPUs let it be suspended (its node can checkpoint them, legacy
        // device mode, host memory to stage its GPU memory); if not it is left running, and
        // the reason says why.
        var gc = s.gpu_capability;
        td.append(JHS.el("span", {
          class: "ms-1 small jhs-gpu-capability " + (gc.capable ? "text-success" : "text-danger"),
          title: gc.reason,
        }, (gc.capable ? "✓ suspendable" : "✗ left running: " + gc.reason) + (gc.simulated ? " (simulated)" : "")));
      }
      if (i === 9) {
        td.className = "jhs-error small";
        if (err) {
          td.textContent = err.operation + ": " + err.message;
          if (err.detail && err.detail !== err.message) td.title = err.detail;
        } else {
          td.textContent = "–";
        }
      }
      if (i === 10) {
        var g = JHS.el("div", { class: "d-flex gap-1" });
        if (s.state === "running") {
          g.append(action(s, "suspend", "btn-warning", function () {
            return operation(s, "suspend");
          }));
          g.append(action(s, kr ? "allow suspend" : "exempt", "btn-outline-secondary", function () {
            return JHS.api("PUT", JHS.serverPath(s.user, s.server_name) + "/keep-running", { enabled: !kr }).then(function () {
              return kr ? "may be suspended again" : "kept running (exempt)";
            });
          }));
        }
        if (ck && (s.state === "suspended" || s.state === "failed")) {
          g.append(action(s, "resume", "btn-primary", function () {
            return operation(s, "resume");
          }));
          g.append(action(s, "discard", "btn-outline-danger", function () {
            return JHS.confirm("Discard the saved session of " + label(s) + "? Its kernels are lost; its volume is kept.", "Discard").then(function (ok) {
              if (!ok) throw new Error("discard cancelled");
              return JHS.api("DELETE", JHS.serverPath(s.user, s.server_name) + "/checkpoint").then(function (r) {
                return r.message || "discarded";
              });
            });
          }));
        }
        td.append(g);
      }
      tr.append(td);
    });
    return tr;
  }

  function render() {
    var u = userFilter.value.trim().toLowerCase();
    var st = stateFilter.value;
    var shown = servers.filter(function (s) {
      return (!u || s.user.toLowerCase().indexOf(u) >= 0) && (!st || s.state === st);
    });
    tbody.textContent = "";
    if (!shown.length) {
      var tr = JHS.el("tr");
      tr.append(JHS.el("td", { colspan: "11", class: "text-body-secondary" }, servers.length ? "No server matches the filters." : "No servers."));
      tbody.append(tr);
    }
    shown.forEach(function (s) {
      tbody.append(row(s));
    });
  }

  function summarise(data) {
    var cpu = 0, memory = 0, gpu = 0, suspended = 0, running = 0;
    servers.forEach(function (s) {
      if (s.state === "suspended") {
        suspended++;
        var r = s.requests || {};
        cpu += r.cpu || 0;
        memory += r.memory || 0;
        gpu += r.gpu || 0;
      }
      if (s.state === "running") running++;
    });
    document.getElementById("jhs-reclaimed-cpu").textContent = cpu.toFixed(1) + " cores";
    document.getElementById("jhs-reclaimed-mem").textContent = JHS.humanSize(memory);
    document.getElementById("jhs-reclaimed-gpu").textContent = String(gpu);
    document.getElementById("jhs-counts").textContent = suspended + " / " + running;
    var asOf = "as of " + new Date(data.as_of).toLocaleTimeString();
    if (data.metrics && !data.metrics.ok) asOf += " — metrics unusable: " + data.metrics.reason;
    document.getElementById("jhs-as-of").textContent = asOf;
  }

  var refreshing = false;
  function refresh() {
    if (refreshing) return;
    refreshing = true;
    JHS.api("GET", "servers")
      .then(function (data) {
        servers = data.servers || [];
        render();
        summarise(data);
        document.body.setAttribute("data-jhs-ready", "true");
      })
      .catch(function (e) {
        tbody.textContent = "";
        var tr = JHS.el("tr");
        tr.append(JHS.el("td", { colspan: "11", class: "text-danger" }, "Could not list the servers: " + e.message));
        tbody.append(tr);
        document.body.setAttribute("data-jhs-ready", "error");
      })
      .finally(function () {
        refreshing = false;
      });
  }

  // ---- charts (uPlot, served by this service) ------------------------------------------------

  var CHARTS = [
    { id: "jhs-chart-cpu", series: [["cpu_reserved", "reserved", "#6c757d"], ["cpu_used", "used", "#0d6efd"]] },
    { id: "jhs-chart-gpu", series: [["gpu_reserved", "reserved", "#6c757d"], ["gpu_used", "used", "#198754"]] },
    { id: "jhs-chart-reclaimed", series: [["reclaimed_cpu", "CPU cores", "#0dcaf0"], ["reclaimed_gpus", "GPUs", "#198754"]] },
    { id: "jhs-chart-suspensions", series: [["suspensions", "suspensions / 5 min", "#fd7e14"], ["restores", "restores / 5 min", "#6f42c1"]] },
    { id: "jhs-chart-hours", increase: "jhs-hours-total", series: [["reclaimed_gpu_hours", "GPU-hours", "#198754"], ["reclaimed_core_hours", "core-hours", "#0dcaf0"]] },
  ];
  var plots = {};

  // The service's running totals restart with it: plot the increase since the range's start,
  // where a drop is a restart after which the total counts from zero again.
  function increaseSinceStart(pts) {
    var total = 0, last = null;
    return pts.map(function (p) {
      if (p[1] !== null && last !== null) total += p[1] >= last ? p[1] - last : p[1];
      if (p[1] !== null) last = p[1];
      return [p[0], total];
    });
  }

  function chart(spec, data) {
    var box = document.getElementById(spec.id);
    var times = null;
    var cols = spec.series.map(function (s) {
      var pts = data.series[s[0]] || [];
      if (spec.increase) pts = increaseSinceStart(pts);
      if (!times && pts.length) times = pts.map(function (p) { return p[0]; });
      return pts;
    });
    if (plots[spec.id]) {
      plots[spec.id].destroy();
      delete plots[spec.id];
    }
    box.textContent = "";
    if (!times) {
      var why = (data.errors || []).filter(function (e) {
        return spec.series.some(function (s) { return e.indexOf(s[0] + ":") === 0; });
      });
      box.append(JHS.el("div", { class: "jhs-chart-empty" }, why.length ? "Prometheus: " + why.join("; ") : "No data in Prometheus for this range (is the service's /metrics scraped?)."));
      return;
    }
    if (spec.increase) {
      document.getElementById(spec.increase).textContent = "(over this range: " + spec.series.map(function (s, i) {
        var pts = cols[i];
        return (pts.length ? pts[pts.length - 1][1] : 0).toFixed(1) + " " + s[1];
      }).join(", ") + ")";
    }
    var aligned = [times].concat(cols.map(function (pts) {
      var m = {};
      pts.forEach(function (p) { m[p[0]] = p[1]; });
      return times.map(function (t) { return t in m ? m[t] : null; });
    }));
    var opts = {
      width: Math.max(300, box.clientWidth || 500),
      height: 200,
      series: [{}].concat(spec.series.map(function (s) {
        return { label: s[1], stroke: s[2], width: 2 };
      })),
      axes: [{}, { size: 50 }],
    };
    plots[spec.id] = new window.uPlot(opts, aligned, box);
  }

  function loadCharts() {
    var minutes = document.getElementById("jhs-range").value;
    var names = [];
    CHARTS.forEach(function (c) {
      c.series.forEach(function (s) { names.push(s[0]); });
    });
    JHS.api("GET", "metrics/range?minutes=" + minutes + "&series=" + names.join(","))
      .then(function (data) {
        CHARTS.forEach(function (c) { chart(c, data); });
      })
      .catch(function (e) {
        JHS.notify(alerts, "danger", "Could not load the charts: " + e.message);
      });
  }

  userFilter.addEventListener("input", render);
  stateFilter.addEventListener("change", render);
  document.getElementById("jhs-range").addEventListener("change", loadCharts);
  refresh();
  loadCharts();
  setInterval(refresh, 10000);
  setInterval(loadCharts, 60000);
})();
