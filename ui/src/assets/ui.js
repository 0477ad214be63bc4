// capstan's dashboard: live regions and log tails. Markup comes rendered and escaped from
// the server; log text is only ever set as text.
"use strict";
(function () {
  function live() {
    var url = document.body.getAttribute("data-live");
    var region = document.getElementById("live");
    var status = document.getElementById("status");
    if (!url || !region || typeof EventSource === "undefined") return;
    var es = new EventSource(url);
    es.addEventListener("open", function () { if (status) status.className = "status on"; });
    es.addEventListener("error", function () { if (status) status.className = "status off"; });
    es.addEventListener("update", function (e) {
      region.innerHTML = e.data;
      region.setAttribute("data-updated", String(Date.now()));
    });
  }
  function logs() {
    var pre = document.getElementById("log");
    if (!pre || !window.fetch) return;
    var src = pre.getAttribute("data-src");
    var limit = 200000;
    fetch(src).then(function (resp) {
      if (!resp.ok || !resp.body) {
        return resp.text().then(function (t) { pre.textContent = t || ("log: HTTP " + resp.status); });
      }
      var reader = resp.body.getReader();
      var decoder = new TextDecoder();
      pre.textContent = "";
      function next() {
        return reader.read().then(function (r) {
          if (r.done) return;
          var text = pre.textContent + decoder.decode(r.value, { stream: true });
          if (text.length > limit) text = text.slice(text.length - limit);
          pre.textContent = text;
          pre.scrollTop = pre.scrollHeight;
          return next();
        });
      }
      return next();
    }).catch(function (e) { pre.textContent = "log: " + e; });
  }
  document.addEventListener("DOMContentLoaded", function () { live(); logs(); });
})();
