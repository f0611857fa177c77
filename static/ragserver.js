// The chat and search pages' behaviour, as event listeners: the Content-Security-Policy
// allows no inline script (htmx's hx-on attributes would need eval).
"use strict";

// Chat: clear the last error when a question is sent; after the answer starts, empty the
// form; if the server refused the question, show its message (our own escaped fragment).
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "ask") document.getElementById("form-error").replaceChildren();
});
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (form.id !== "ask") return;
  const slot = document.getElementById("form-error");
  if (event.detail.successful) {
    form.reset();
    form.question.focus();
  } else if (event.detail.xhr && event.detail.xhr.status) {
    slot.innerHTML = event.detail.xhr.responseText;
  } else {
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = "The server could not be reached; your question was not sent.";
    slot.replaceChildren(p);
  }
});

// Search: value= follows what is typed, so the page htmx snapshots for Back keeps the query,
// and 4xx/5xx result fragments (a query too long, too many searches) are shown, not dropped.
document.addEventListener("input", (event) => {
  if (event.target.id === "q") event.target.setAttribute("value", event.target.value);
});
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.target && event.detail.target.id === "results" && event.detail.xhr.status >= 400) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
