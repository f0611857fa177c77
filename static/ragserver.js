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

// Chat: Enter asks, Shift+Enter starts a new line. Not while an input method is composing
// (Enter picks the candidate there), and not for an empty question. requestSubmit() fires
// the submit event, so htmx sends it as if Ask was pressed (and the browser checks it).
document.addEventListener("keydown", (event) => {
  const box = event.target;
  if (box.id !== "question" || event.key !== "Enter" || event.shiftKey) return;
  if (event.isComposing || event.keyCode === 229) return;  // 229: Safari's composing Enter
  event.preventDefault();
  if (!box.value.trim()) return;
  if (box.form.requestSubmit) box.form.requestSubmit();
  else box.form.querySelector("button[type=submit]").click();
});

// Chat: an example question fills in the form, to be edited or sent.
document.addEventListener("click", (event) => {
  const example = event.target.closest("button.example");
  if (!example) return;
  const box = document.getElementById("question");
  box.value = example.dataset.question;
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
});

// Chat: "Copy answer" puts the answer's Markdown on the clipboard. Where there is no
// clipboard (plain http, a frame without clipboard-write), select the answer as shown.
const COPY_LABEL_MS = 2000;

function showCopyLabel(button, label, ms) {
  button.dataset.label = button.dataset.label || button.textContent;
  button.textContent = label;
  clearTimeout(button.labelTimer);
  button.labelTimer = setTimeout(() => { button.textContent = button.dataset.label; }, ms);
}

function selectAnswer(button) {
  const rendered = button.closest(".rendered");
  const range = document.createRange();
  range.setStart(rendered, 0);
  range.setEndBefore(button.closest(".answer-tools"));  // the text, not the buttons
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  showCopyLabel(button, "Press Ctrl+C", 3 * COPY_LABEL_MS);  // time to read it and press
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  if (!navigator.clipboard || !navigator.clipboard.writeText) {
    selectAnswer(button);
    return;
  }
  navigator.clipboard.writeText(button.dataset.copy).then(
    () => showCopyLabel(button, "Copied", COPY_LABEL_MS),
    () => selectAnswer(button));
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
