// m3edge: what the OHIF Viewer's index.html set in two inline scripts, moved here (scripts/install-viewer takes
// them out) so the viewer's Content-Security-Policy needs no 'unsafe-inline'. It runs before anything else.
window.PUBLIC_URL = "/viewer/";
function browserImportFunction(moduleUrl) {
  return import(moduleUrl);
}
