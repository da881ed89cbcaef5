// The account pages: send the form as JSON and show the server's message.
(function () {
  "use strict";

  function show(el, text, ok) {
    el.textContent = text;
    el.className = ok ? "ok" : "error";
  }

  function fromFragment(form) {
    // Reset links carry token and email in the fragment, which never reaches a server.
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    ["token", "email"].forEach(function (name) {
      var input = form.querySelector("#" + name);
      if (input && params.get(name)) { input.value = params.get(name); }
    });
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.pathname);
    }
  }

  function errorText(body, status) {
    if (body && body.errors && body.errors.length) {
      return body.errors.map(function (e) { return e.field + ": " + e.message; }).join("; ");
    }
    if (body && body.message) { return body.message; }
    return "The request failed (HTTP " + status + ").";
  }

  function wire(form) {
    var result = document.getElementById("result");
    var button = form.querySelector("button[type=submit]");
    if (form.id === "reset-form") { fromFragment(form); }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = {};
      Array.prototype.forEach.call(form.elements, function (el) {
        if (el.name && el.name !== "confirm") { data[el.name] = el.value; }
      });
      var confirm = form.querySelector("#confirm");
      var password = data.password !== undefined ? data.password : data.newPassword;
      if (confirm && confirm.value !== password) {
        show(result, "The two passwords are not the same.", false);
        return;
      }
      if (data.displayName === "") { delete data.displayName; }
      button.disabled = true;
      show(result, "Please wait…", true);
      fetch(form.getAttribute("data-endpoint"), {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(data),
        credentials: "same-origin"
      }).then(function (response) {
        return response.json().catch(function () { return null; }).then(function (body) {
          if (response.ok) {
            show(result, (body && body.message) || "Done.", true);
            if (form.id !== "forgot-form") { form.reset(); }
          } else {
            show(result, errorText(body, response.status), false);
          }
        });
      }).catch(function () {
        show(result, "The server could not be reached.", false);
      }).then(function () { button.disabled = false; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-endpoint]"), wire);
  });
})();
