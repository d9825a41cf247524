/* Stand-in for MathJax 2.7.5, which the theme's output renderer (thebe) loads although the
   book's math is rendered by KaTeX when the pages are built. It answers the calls thebe makes
   (Hub.Config, Hub.Queue of typeset and equation-number requests) and does nothing, so that
   no page asks a CDN for it (tools/offline_site.py). */
(function () {
  var noop = function () {};
  var mj = window.MathJax && window.MathJax.Hub ? window.MathJax : {};
  // Hub.Queue takes functions or [method, object, ...args] arrays, as MathJax 2 does.
  function run(item) {
    if (typeof item === "function") return item();
    if (!Array.isArray(item)) return;
    var f = item[0], obj = item[1];
    if (typeof f === "string") f = obj && obj[f];
    if (typeof f === "function") f.apply(obj, item.slice(2));
  }
  mj.Hub = mj.Hub || {
    Config: noop,
    Configured: noop,
    Typeset: function (node, callback) { if (typeof callback === "function") callback(); },
    Register: { StartupHook: noop, MessageHook: noop },
    Queue: function () { for (var i = 0; i < arguments.length; i++) run(arguments[i]); },
    processSectionDelay: 0,
  };
  mj.InputJax = mj.InputJax || { TeX: { resetEquationNumbers: noop } };
  mj.isReady = true;
  window.MathJax = mj;
})();
