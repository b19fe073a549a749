// meter-gateway status page: fetch the server-rendered fragment every couple of seconds and
// swap it in. Read-only; nothing is sent but GET requests to this same server.
(function () {
  "use strict";
  var main = document.getElementById("status");
  var live = document.getElementById("live");
  var every = parseInt(document.body.getAttribute("data-refresh-ms"), 10) || 2000;
  var open = {};

  function rememberOpen() {
    open = {};
    main.querySelectorAll("details").forEach(function (d, i) {
      var card = d.closest("[data-uplink]");
      open[card ? card.getAttribute("data-uplink") : "#" + i] = d.open;
    });
  }

  function restoreOpen() {
    main.querySelectorAll("details").forEach(function (d, i) {
      var card = d.closest("[data-uplink]");
      var key = card ? card.getAttribute("data-uplink") : "#" + i;
      if (open[key]) d.open = true;
    });
  }

  function tick() {
    if (document.hidden) { setTimeout(tick, every); return; }
    fetch("fragment", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        rememberOpen();
        main.innerHTML = html;
        restoreOpen();
        live.textContent = "live";
        live.className = "";
      })
      .catch(function (e) {
        live.textContent = "connection lost (" + e.message + "), retrying";
        live.className = "lost";
      })
      .then(function () { setTimeout(tick, every); });
  }

  setTimeout(tick, every);
})();
