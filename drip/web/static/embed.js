// drip's signup form on the author's own site (the embed in /admin/embed and the README).
// Without this script the form posts to drip and the reader lands on drip's thank-you
// page. With it, the form posts JSON to the same address (the site must be listed in
// DRIP_CORS_ORIGINS) and the answer is shown in place. If that cannot be done (the
// site not allowed, drip unreachable, an old browser), the plain post goes ahead.
(function () {
  function setup(form) {
    var zone = form.querySelector('[name="timezone"]');
    if (zone && !zone.value) {
      try { zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
    }
    var source = form.querySelector('[name="source"]');
    if (source && !source.value) { source.value = window.location.pathname; }
    var out = form.querySelector("[data-drip-message]");
    var button = form.querySelector('[type="submit"]');
    function say(text) { if (out) { out.textContent = text; } }

    form.addEventListener("submit", function (event) {
      if (!window.fetch || !window.JSON) { return; }
      event.preventDefault();
      var data = {};
      Array.prototype.forEach.call(form.elements, function (field) {
        if (!field.name) { return; }
        data[field.name] = field.type === "checkbox" ? field.checked : field.value;
      });
      if (button) { button.disabled = true; }
      fetch(form.action, {
        method: "POST",
        mode: "cors",
        credentials: "omit",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(data)
      }).then(function (response) {
        return response.json().then(function (body) {
          return { status: response.status, body: body };
        });
      }).then(function (answer) {
        if (button) { button.disabled = false; }
        if (answer.status === 202) {
          form.reset();
          if (source && !source.value) { source.value = window.location.pathname; }
          say(answer.body.message || "Thank you. Please check your inbox.");
        } else if (answer.body && answer.body.errors) {
          var errors = answer.body.errors, lines = [];
          for (var key in errors) { if (errors.hasOwnProperty(key)) { lines.push(errors[key]); } }
          say(lines.join(" "));
        } else {
          form.submit();
        }
      }, function () {
        form.submit();  // not allowed from this site, or drip unreachable: post it plainly
      });
    });
  }
  var forms = document.querySelectorAll("form[data-drip]");
  for (var i = 0; i < forms.length; i++) { setup(forms[i]); }
})();
