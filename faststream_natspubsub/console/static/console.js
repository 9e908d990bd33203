// natspubsub operations console: progressive enhancement only. Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Confirmation dialogs: links that would open the confirmation page open it in place.
  for (const link of document.querySelectorAll("a[data-dialog]")) {
    const dialog = document.getElementById(link.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") continue;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      dialog.showModal();
    });
  }
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog")?.close());
  }

  // One submission per form: a double click sends nothing twice (the server checks too).
  for (const form of document.querySelectorAll("form[data-once]")) {
    form.addEventListener("submit", (event) => {
      if (form.dataset.sent) {
        event.preventDefault();
        return;
      }
      form.dataset.sent = "1";
      for (const button of form.querySelectorAll("button[type=submit]")) {
        button.disabled = true;
        button.textContent = "Working…";
      }
    });
  }

  // A running action: follow its progress, then show the final page.
  const job = document.querySelector("[data-job-poll]");
  if (job) {
    const url = job.dataset.jobPoll;
    const set = (id, value) => {
      const element = document.getElementById(id);
      if (element) element.textContent = value == null ? "-" : Number(value).toLocaleString("en");
    };
    const poll = async () => {
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
        if (!response.ok) throw new Error(String(response.status));
        const state = await response.json();
        const bar = document.getElementById("job-progress");
        if (bar && state.total) {
          bar.max = state.total;
          bar.value = state.processed;
        }
        set("job-succeeded", state.succeeded);
        set("job-failed", state.failed);
        set("job-skipped", state.skipped);
        set("job-total", state.total);
        if (!state.running) {
          window.location.reload();
          return;
        }
      } catch (error) {
        // Keep trying: the page itself still shows the last known state.
      }
      window.setTimeout(poll, 500);
    };
    window.setTimeout(poll, 300);
  }
});
