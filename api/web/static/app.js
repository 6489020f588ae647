// Compute Share web console: the few behaviours plain HTML lacks. Every form still works
// without this file (uploads aside, which need it: the page says so in a <noscript>).
(function () {
  "use strict";

  function csrfToken() {
    // The same token htmx sends: the layout puts it in <body hx-headers>.
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
    } catch (e) {
      return "";
    }
  }

  // Copy buttons: data-copy="<id of an input or element>".
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined ? source.value : source.textContent;
    var status = button.closest("section, details, .panel");
    status = status ? status.querySelector(".copy-status") : null;
    function done(message) { if (status) status.textContent = message; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { done("Copied to the clipboard."); },
        function () { done("Copy failed: select the text and copy it."); }
      );
    } else if (source.select) {
      source.select();
      done(document.execCommand("copy") ? "Copied to the clipboard." : "Selected: press Ctrl+C.");
    }
  });

  // Confirmation for destructive buttons: <form data-confirm="sentence">.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  // (No submit-on-change for selects: arrow keys would navigate away on every step.
  // The org switcher and filters have their own Go / Filter buttons.)

  // Dataset upload: stream the file as the request body with a progress bar.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var url = form.getAttribute && form.getAttribute("data-upload");
    if (!url) return;
    event.preventDefault();
    var input = form.querySelector('input[type="file"]');
    var file = input && input.files && input.files[0];
    var section = form.closest("section");
    var status = section.querySelector(".upload-status");
    var box = section.querySelector(".upload-progress");
    var bar = box.querySelector("progress");
    var percent = box.querySelector(".upload-percent");
    if (!file) { status.textContent = "Choose a file first."; return; }
    var note = form.querySelector('[name="description"]');
    var query = "?filename=" + encodeURIComponent(file.name);
    if (note && note.value) query += "&description=" + encodeURIComponent(note.value);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", url + query);
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    var button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    box.hidden = false;
    status.classList.remove("error");
    status.textContent = "Uploading " + file.name + "…";
    xhr.upload.onprogress = function (e) {
      if (!e.lengthComputable) return;
      var p = Math.floor((e.loaded / e.total) * 100);
      bar.value = p;
      percent.textContent = p + "%";
    };
    xhr.onload = function () {
      button.disabled = false;
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = {}; }
      if (xhr.status === 200 || xhr.status === 201) {
        bar.value = 100;
        percent.textContent = "100%";
        status.textContent = (xhr.status === 201 ? "Uploaded as version " : "Same content as version ") +
          body.version + " (SHA-256 " + String(body.sha256).slice(0, 12) + "…). Reloading…";
        window.setTimeout(function () { window.location.reload(); }, 600);
      } else {
        status.classList.add("error");
        status.textContent = "Upload failed: " + (body.detail || ("HTTP " + xhr.status));
      }
    };
    xhr.onerror = function () {
      button.disabled = false;
      status.classList.add("error");
      status.textContent = "Upload failed: the connection was lost. Nothing was stored.";
    };
    xhr.send(file);
  });
})();
