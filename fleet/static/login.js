// The token sign-in page. A link https://FLEET/login#cet_... signs in at once: the token is in
// the fragment, which the browser never sends to the fleet (nor to its logs or a proxy's). It is
// put into the form, removed from the address bar and the history, and the form is submitted.
(function () {
  "use strict";
  var hash = window.location.hash;
  if (!hash) { return; }
  history.replaceState(null, "", window.location.pathname + window.location.search);
  var token = hash.slice(1);
  var form = document.getElementById("token-signin");
  var field = document.getElementById("token");
  if (!form || !field || token.indexOf("cet_") !== 0) { return; }
  field.value = token;
  form.submit();
})();
