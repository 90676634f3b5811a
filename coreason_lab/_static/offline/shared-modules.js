// Widgets of one kind (plotly figures) carry the same JavaScript module; the exported page
// stores it once (script[data-coreason-esm]) and each widget's `_esm` names it as
// "coreason-esm:<n>". Before the widget manager reads the state (at window load), every such
// name becomes a one-line module re-exporting the shared one from a blob: URL.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var urls = {};
  document.querySelectorAll("script[data-coreason-esm]").forEach(function (el) {
    var code = JSON.parse(el.textContent);
    var blob = new Blob([code], { type: "text/javascript" });
    urls[el.getAttribute("data-coreason-esm")] = URL.createObjectURL(blob);
  });
  var selector = 'script[type="application/vnd.jupyter.widget-state+json"]';
  document.querySelectorAll(selector).forEach(function (el) {
    var saved = JSON.parse(el.textContent);
    Object.keys(saved.state).forEach(function (id) {
      var state = saved.state[id].state || {};
      var esm = state._esm;
      if (typeof esm === "string" && esm.indexOf("coreason-esm:") === 0) {
        var url = urls[esm.slice("coreason-esm:".length)];
        state._esm = 'export { default } from "' + url + '"; export * from "' + url + '";';
      }
    });
    el.textContent = JSON.stringify(saved);
  });
});
