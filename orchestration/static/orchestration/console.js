// Refreshes the console on the admin index in place: fetches the dashboard body (rendered
// on the server, charts included) from its JSON endpoint and swaps it in. No library.
(function () {
  "use strict";
  var root = document.getElementById("console-dashboard");
  if (!root || !window.fetch) {
    return;
  }
  var url = root.getAttribute("data-refresh-url");
  var seconds = parseInt(root.getAttribute("data-refresh-seconds"), 10) || 15;
  var toggle = document.getElementById("console-autorefresh");
  var state = document.getElementById("console-refresh-state");
  var busy = false;

  function clock() {
    return new Date().toTimeString().slice(0, 8);
  }

  function refresh() {
    if (busy || document.hidden || (toggle && !toggle.checked)) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        document.getElementById("console-body").innerHTML = data.html;
        state.textContent = "updated " + clock();
        root.setAttribute("data-refreshed", data.figures.generatedAt);
      })
      .catch(function (error) {
        state.textContent = "refresh failed at " + clock() + ": " + error.message;
      })
      .then(function () {
        busy = false;
      });
  }

  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
