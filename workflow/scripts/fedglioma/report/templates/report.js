/* fedglioma standalone report: sets data-images-ok (k/m) and data-js-errors (n) on the root element; tests/browser.py reads them. */
(function () {
  var errors = 0, root = document.documentElement;
  root.setAttribute("data-js-errors", "0");
  window.addEventListener("error", function () { errors += 1; root.setAttribute("data-js-errors", String(errors)); },
                          true);
  window.addEventListener("load", function () {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok += 1; } else { imgs[i].setAttribute("data-broken", "1"); }
    }
    root.setAttribute("data-images-ok", ok + "/" + imgs.length);
  });
})();
