"use strict";
(function () {
  var link = document.getElementById("download");
  var out = document.getElementById("state");
  var messages = {
    created: "Ready. Download the profile with the button above, then install it.",
    profile_downloaded: "Profile downloaded. Install it in Settings (iPhone, iPad) or System Settings (Mac).",
    certificate_issued: "The device received its certificate. Finishing the enrollment…",
    enrolled: "Enrolled. This device is now managed"
  };
  function show(state, text) {
    out.setAttribute("data-state", state);
    out.textContent = text;
  }
  function poll(url) {
    fetch(url, { cache: "no-store" }).then(function (r) {
      if (r.status === 404) {
        show("error", "This enrollment session has expired. Reload the page to start again.");
        return null;
      }
      return r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status));
    }).then(function (s) {
      if (!s) { return; }
      if (s.expired && s.state === "created") {
        show("error", "This enrollment session has expired. Reload the page to start again.");
        return;
      }
      var text = messages[s.state] || s.state;
      if (s.state === "enrolled") {
        text += s.device_id ? " (" + s.device_id + ")." : ".";
      }
      show(s.state, text);
      if (s.state !== "enrolled") { setTimeout(function () { poll(url); }, 3000); }
    }).catch(function () {
      setTimeout(function () { poll(url); }, 10000);
    });
  }
  fetch("/enroll/session", { method: "POST", cache: "no-store" }).then(function (r) {
    return r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status));
  }).then(function (s) {
    link.setAttribute("href", s.profile_url);
    show("created", messages.created);
    poll(s.status_url);
  }).catch(function () {
    show("error", "The enrollment status is not available right now; the download still works.");
  });
})();
