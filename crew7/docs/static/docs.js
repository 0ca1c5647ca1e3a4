// Starts Swagger UI on /docs (crew7/docs/views.py). A file of its own, not an inline
// script: the page's Content-Security-Policy allows scripts from the app only.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge would send the document to a remote service.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
