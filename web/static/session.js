// Session page: poll the status and transcript JSON endpoints while the session is open.
// Every piece of user text goes into the DOM through textContent, never innerHTML.
(function () {
  "use strict";
  const STATUS_MS = 1500;
  const TRANSCRIPT_MS = 2000;
  const progress = document.getElementById("progress");
  const transcript = document.getElementById("transcript");
  if (!progress || !transcript) return;
  let open = progress.dataset.open === "true";
  let after = Number(transcript.dataset.after || "0");

  const endForm = document.getElementById("end-form");
  if (endForm) {
    endForm.addEventListener("submit", (ev) => {
      if (!window.confirm("End this session and close the room?")) ev.preventDefault();
    });
  }

  async function getJSON(url) {
    const res = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!res.ok) throw new Error(res.status + " " + url);
    return res.json();
  }

  function renderSteps(steps) {
    steps.forEach((step, i) => {
      const el = progress.querySelector('[data-step="' + step.key + '"]');
      if (!el) return;
      el.className = "step " + step.state;
      const badge = el.querySelector(".b");
      badge.textContent = step.state === "done" ? "✓" : step.state === "failed" ? "!" : step.state === "todo" ? String(i + 1) : "";
    });
  }

  function renderStatus(data) {
    const s = data.session;
    const pill = document.querySelector("#status-pill .pill");
    if (pill) { pill.className = "pill " + s.status; pill.textContent = s.status; }
    renderSteps(data.progress);
    const err = document.getElementById("status-error");
    if (err) { err.hidden = !s.error; err.textContent = s.error || ""; }
    const join = document.getElementById("join-link");
    if (join) join.hidden = !s.is_open;
    const dur = document.getElementById("stat-duration");
    if (dur && s.duration_seconds != null) {
      const t = Math.floor(s.duration_seconds);
      dur.textContent = Math.floor(t / 60) + "m " + String(t % 60).padStart(2, "0") + "s";
    }
    if (open && !s.is_open) {
      open = false;
      // The back office finalizes the session: reload once to show summary, usage and exports.
      window.setTimeout(() => window.location.reload(), 800);
    }
  }

  function addLine(line) {
    const row = document.createElement("div");
    row.className = "msg " + (line.speaker === "agent" ? "agent" : "user");
    row.dataset.line = String(line.id);
    const av = document.createElement("div");
    av.className = "av";
    av.textContent = line.speaker === "agent" ? "AI" : "U";
    const body = document.createElement("div");
    const meta = document.createElement("div");
    meta.className = "meta";
    const when = line.started_at ? new Date(line.started_at).toISOString().slice(11, 19) : "";
    meta.textContent = (line.speaker === "agent" ? "Agent" : "Caller") + " · " + when + (line.interrupted ? " · interrupted" : "");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = line.text;
    body.append(meta, bubble);
    row.append(av, body);
    const empty = document.getElementById("transcript-empty");
    if (empty) empty.hidden = true;
    const stick = transcript.scrollTop + transcript.clientHeight >= transcript.scrollHeight - 24;
    transcript.insertBefore(row, empty);
    if (stick) transcript.scrollTop = transcript.scrollHeight;
  }

  async function pollStatus() {
    try { renderStatus(await getJSON(progress.dataset.statusUrl)); } catch (e) { /* retry next tick */ }
    if (open) window.setTimeout(pollStatus, STATUS_MS);
  }

  async function pollTranscript() {
    try {
      const data = await getJSON(transcript.dataset.url + "?after=" + after);
      for (const line of data.lines) {
        if (line.id > after) { addLine(line); after = line.id; }
      }
    } catch (e) { /* retry next tick */ }
    const note = document.getElementById("live-note");
    if (note) note.hidden = !open;
    if (open) window.setTimeout(pollTranscript, TRANSCRIPT_MS);
  }

  if (open) { pollStatus(); pollTranscript(); }
})();
