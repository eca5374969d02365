// m3edge dashboard: live refresh of the worklist table. No framework, no build step.
"use strict";

(function () {
  function refreshWorklist(body) {
    var url = body.getAttribute("data-refresh-url");
    var interval = parseInt(body.getAttribute("data-refresh-ms"), 10) || 5000;
    var total = document.getElementById("worklist-total");
    var stamp = document.getElementById("refreshed-at");
    var problem = document.getElementById("refresh-problem");

    function tick() {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" }, redirect: "manual" })
        .then(function (response) {
          if (response.type === "opaqueredirect" || response.status === 401) {
            throw new Error("your session has ended: reload the page to log in again");
          }
          if (!response.ok) { throw new Error("refresh failed (HTTP " + response.status + ")"); }
          if (total && response.headers.get("X-Total-Count") !== null) {
            total.textContent = response.headers.get("X-Total-Count");
          }
          return response.text();
        })
        .then(function (html) {
          body.innerHTML = html;  // server-rendered, autoescaped by the same template as the first page
          if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
          if (problem) { problem.hidden = true; }
        })
        .catch(function (error) {
          if (problem) { problem.textContent = error.message; problem.hidden = false; }
        });
    }
    window.setInterval(tick, interval);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.getElementById("worklist-rows");
    if (body) { refreshWorklist(body); }
  });
})();
