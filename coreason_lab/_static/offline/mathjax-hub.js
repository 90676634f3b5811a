// The widget manager typesets a widget's math (an HTMLMath, a description with $…$) through
// MathJax 2's queue, `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`, whenever
// `window.MathJax` exists. MathJax 3 has no Hub: this one queues the same request on MathJax 3's
// startup promise, so a widget's math is typeset too and its view does not fail to render.
(function () {
  "use strict";
  var mj = window.MathJax;
  mj.Hub = {
    Queue: function () {
      Array.prototype.forEach.call(arguments, function (call) {
        if (!Array.isArray(call) || call[0] !== "Typeset") return;
        var elements = call[2] ? [call[2]] : undefined;
        mj.startup.promise = mj.startup.promise.then(function () {
          return mj.typesetPromise(elements);
        });
      });
    },
  };
})();
