// m3edge dashboard: keyboard shortcuts of the study page and the review confirmation. No framework, no build step.
// a: approve, e: edit the narrative, r: write the reason to reject (Ctrl+Enter there rejects), n: next study awaiting
// review; on the confirmation page Esc goes back (Enter confirms: the button has the focus). Keys typed into a field
// are left alone.
"use strict";

(function () {
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function click(id) {
    var element = document.getElementById(id);
    if (element) { element.click(); return true; }
    return false;
  }

  function focus(id) {
    var element = document.getElementById(id);
    if (element) { element.focus(); return true; }
    return false;
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.metaKey) { return; }
    if (event.ctrlKey && event.key === "Enter" && event.target && event.target.id === "comment-editor") {
      if (click("reject")) { event.preventDefault(); }
      return;
    }
    if (event.ctrlKey) { return; }
    if (event.key === "Escape" && document.getElementById("confirm-form")) {
      if (click("back")) { event.preventDefault(); }
      return;
    }
    if (typing(event.target)) { return; }
    var done = false;
    if (event.key === "a") { done = click("approve"); }
    else if (event.key === "e") { done = focus("narrative-editor"); }
    else if (event.key === "r") { done = focus("comment-editor"); }
    else if (event.key === "n") { done = click("next-study"); }
    else if (event.key === "/") { done = focus("worklist-search"); }
    if (done) { event.preventDefault(); }
  });
})();
