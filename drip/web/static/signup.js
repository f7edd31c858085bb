// Fill the hidden time zone so lessons arrive in the reader's morning, and move
// focus to the error summary so screen readers announce what to fix.
(function () {
  var zone = document.getElementById("timezone");
  if (zone && !zone.value) {
    try { zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
  }
  var summary = document.getElementById("error-summary");
  if (summary) { summary.focus(); }
})();
