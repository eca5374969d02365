// m3edge: what the OHIF Viewer's index.html set in two inline scripts, moved here (scripts/install-viewer takes
// them out) so the viewer's Content-Security-Policy needs no 'unsafe-inline'. It runs before anything else.
window.PUBLIC_URL = "/viewer/";
function browserImportFunction(moduleUrl) {
  return import(moduleUrl);
}
// OHIF's first-visit tour of its demo viewer would cover the images: marked as shown for m3edge's readers.
try {
  var shown = JSON.parse(window.localStorage.getItem("shownTours") || "[]");
  if (shown.indexOf("basicViewerTour") < 0) {
    shown.push("basicViewerTour");
    window.localStorage.setItem("shownTours", JSON.stringify(shown));
  }
} catch (ignored) {
  // no localStorage (a private window that forbids it): the tour shows, nothing else changes
}
