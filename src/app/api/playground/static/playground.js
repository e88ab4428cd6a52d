// flowgate playground: one WebSocket to /api/v1/chat/{flow_id}[/{feature}], frames as the
// chat protocol defines them. Plain script, no dependencies, no request to any other host.
// The token stays in its input: it is sent only as the socket URL's `t` (a browser cannot set
// headers on a WebSocket) and is never written to the page's URL, storage or frame log.
"use strict";

(() => {
  const MAX_ENTRIES = 500; // transcript entries kept; older ones are dropped
  const MAX_LOG = 200; // frame log lines kept
  const MAX_LOGGED_CHARS = 2000; // per frame log line
  const MAX_TURNS = 100; // answer bubbles remembered for streaming into

  const $ = (id) => document.getElementById(id);
  const ui = {
    flowId: $("flow-id"),
    token: $("token"),
    chatId: $("chat-id"),
    versionId: $("version-id"),
    feature: $("feature"),
    connect: $("connect"),
    disconnect: $("disconnect"),
    message: $("message"),
    send: $("send"),
    stop: $("stop"),
    history: $("history"),
    resume: $("resume"),
    raw: $("raw"),
    state: $("state"),
    closeInfo: $("close-info"),
    transcript: $("transcript"),
    frameLog: $("frame-log"),
    resumeInfo: $("resume-info"),
  };

  let socket = null;
  let target = null; // "flow|feature|chat": what the resume position belongs to
  // What `resume` asks for: the last persisted message id, and the last turn and its last seq.
  const seen = { afterId: null, turnId: null, afterSeq: null };
  const answers = new Map(); // turn_id -> {el, text, status} of its answer bubble
  const pendingReads = []; // "history" | "resume", in the order sent: labels `history` frames

  // ---- transcript ----------------------------------------------------------------------------

  function append(el) {
    ui.transcript.appendChild(el);
    while (ui.transcript.childElementCount > MAX_ENTRIES) {
      ui.transcript.firstElementChild.remove();
    }
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    return el;
  }

  function entry(kind, meta, text) {
    const el = document.createElement("div");
    el.className = "entry " + kind;
    const metaEl = document.createElement("div");
    metaEl.className = "meta";
    metaEl.textContent = meta;
    const textEl = document.createElement("div");
    textEl.className = "text";
    textEl.textContent = text;
    el.append(metaEl, textEl);
    return { el, meta: metaEl, text: textEl };
  }

  function note(text) {
    append(entry("note", "", text).el);
  }

  function answerFor(frame) {
    const key = frame.turn_id || "";
    let answer = answers.get(key);
    if (!answer) {
      const parts = entry("answer", "answer · ", "");
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = "streaming";
      parts.meta.appendChild(status);
      parts.el.dataset.turnId = key;
      parts.el.dataset.status = "streaming";
      answer = { el: parts.el, text: parts.text, status };
      answers.set(key, answer);
      while (answers.size > MAX_TURNS) answers.delete(answers.keys().next().value);
      append(parts.el);
    }
    return answer;
  }

  function setStatus(answer, status) {
    const value = status || "unknown";
    answer.status.textContent = value;
    answer.el.dataset.status = value;
  }

  function showHistory(frame) {
    const label = pendingReads.shift() || "history";
    const messages = Array.isArray(frame.messages) ? frame.messages.slice() : [];
    messages.sort((a, b) => (a.message_id ?? 0) - (b.message_id ?? 0));
    const parts = entry(
      "history",
      `${label}: ${messages.length} message(s)${frame.has_more ? ", more before" : ""}`,
      messages.length ? "" : "(none)",
    );
    parts.el.dataset.kind = label;
    const list = document.createElement("ol");
    for (const m of messages) {
      const item = document.createElement("li");
      const who = m.is_bot ? "bot" : "you";
      const status = m.status ? ` [${m.status}]` : "";
      item.textContent = `#${m.message_id} ${who}${status}: ${m.message ?? ""}`;
      item.dataset.messageId = String(m.message_id);
      list.appendChild(item);
    }
    parts.el.appendChild(list);
    append(parts.el);
  }

  function onFrame(frame, raw) {
    track(frame);
    switch (frame.type) {
      case "begin": {
        answers.delete(frame.turn_id || ""); // a replayed turn gets a fresh bubble
        const q = entry("question", "you", frame.message ?? "");
        q.el.dataset.turnId = frame.turn_id || "";
        append(q.el);
        break;
      }
      case "start":
        answerFor(frame);
        break;
      case "stream":
        answerFor(frame).text.textContent += frame.message ?? "";
        break;
      case "end": {
        const answer = answerFor(frame);
        answer.text.textContent = frame.message ?? "";
        setStatus(answer, frame.status);
        break;
      }
      case "close": {
        const answer = answers.get(frame.turn_id || "");
        if (answer) answer.el.dataset.closed = "true";
        break;
      }
      case "history":
        showHistory(frame);
        break;
      case "error": {
        const retry = frame.retry_after != null ? ` (retry after ${frame.retry_after} s)` : "";
        const e = entry("error", `error: ${frame.code}${retry}`, frame.message ?? "");
        e.el.dataset.code = frame.code ?? "";
        append(e.el);
        if (frame.code === "resume_unavailable") {
          const i = pendingReads.indexOf("resume"); // no `history` frame follows for it
          if (i >= 0) pendingReads.splice(i, 1);
        }
        break;
      }
      case "pong":
        note("pong");
        break;
      default: // feature replies ({"result": ..}, {"translated_text": ..}) and anything new
        append(entry("raw", "frame", raw).el);
    }
  }

  // ---- resume position -----------------------------------------------------------------------

  function seeMessageId(id) {
    if (Number.isInteger(id) && (seen.afterId === null || id > seen.afterId)) seen.afterId = id;
  }

  function track(frame) {
    seeMessageId(frame.message_id);
    if (frame.type === "history" && Array.isArray(frame.messages)) {
      for (const m of frame.messages) seeMessageId(m.message_id);
    }
    if (typeof frame.turn_id === "string" && frame.turn_id) {
      if (frame.turn_id !== seen.turnId) {
        seen.turnId = frame.turn_id;
        seen.afterSeq = null;
      }
      // A joined stream frame (first_seq..seq) counts as seen up to its seq, its last piece.
      if (Number.isInteger(frame.seq) && (seen.afterSeq === null || frame.seq > seen.afterSeq)) {
        seen.afterSeq = frame.seq;
      }
    }
    showResumePosition();
  }

  function resetPosition() {
    seen.afterId = null;
    seen.turnId = null;
    seen.afterSeq = null;
    showResumePosition();
  }

  function resumeFrame() {
    const frame = { action: "resume", after_id: seen.afterId ?? 0 };
    if (seen.turnId !== null) {
      frame.turn_id = seen.turnId;
      if (seen.afterSeq !== null) frame.after_seq = seen.afterSeq;
    }
    return frame;
  }

  function showResumePosition() {
    const r = resumeFrame();
    ui.resumeInfo.textContent =
      `resume: after_id=${r.after_id}` +
      (r.turn_id !== undefined ? ` turn_id=${r.turn_id}` : "") +
      (r.after_seq !== undefined ? ` after_seq=${r.after_seq}` : "");
  }

  // ---- socket --------------------------------------------------------------------------------

  function logFrame(direction, data) {
    const item = document.createElement("li");
    const text = typeof data === "string" ? data : JSON.stringify(data);
    item.textContent = direction + " " + text.slice(0, MAX_LOGGED_CHARS);
    ui.frameLog.appendChild(item);
    while (ui.frameLog.childElementCount > MAX_LOG) ui.frameLog.firstElementChild.remove();
  }

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    const open = state === "open";
    for (const b of [ui.send, ui.stop, ui.history, ui.resume]) b.disabled = !open;
    ui.disconnect.disabled = !(open || state === "connecting");
  }

  function socketUrl() {
    const flow = ui.flowId.value.trim();
    const feature = ui.feature.value.trim() || "chat";
    let path = "/api/v1/chat/" + encodeURIComponent(flow);
    if (feature !== "chat") path += "/" + encodeURIComponent(feature);
    const params = new URLSearchParams();
    const token = ui.token.value.trim();
    if (token) params.set("t", token);
    const chatId = ui.chatId.value.trim();
    if (chatId) params.set("chat_id", chatId);
    const versionId = ui.versionId.value.trim();
    if (versionId) params.set("version_id", versionId);
    const query = params.toString();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${path}${query ? "?" + query : ""}`;
    const shown = url.replace(/([?&]t=)[^&]*/, "$1[redacted]");
    return { url, shown, key: `${flow}|${feature}|${chatId}` };
  }

  function connect() {
    if (!ui.flowId.value.trim()) {
      note("flow id is required");
      ui.flowId.focus();
      return;
    }
    if (socket) disconnect();
    const { url, shown, key } = socketUrl();
    if (key !== target) {
      target = key;
      resetPosition();
    }
    pendingReads.length = 0;
    ui.closeInfo.textContent = "";
    delete ui.closeInfo.dataset.code;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      ui.closeInfo.textContent = `cannot connect: ${error.message}`;
      return;
    }
    socket = ws;
    setState("connecting", "connecting…");
    note("connecting to " + shown);
    ws.onopen = () => {
      if (ws !== socket) return;
      setState("open", "connected");
    };
    ws.onmessage = (event) => {
      if (ws !== socket) return;
      logFrame("←", event.data);
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        append(entry("raw", "frame (not JSON)", String(event.data)).el);
        return;
      }
      if (frame && typeof frame === "object") onFrame(frame, event.data);
      else append(entry("raw", "frame", String(event.data)).el);
    };
    ws.onclose = (event) => {
      const text = `closed: ${event.code} ${event.reason} (wasClean: ${event.wasClean})`;
      logFrame("×", text);
      if (ws !== socket) return;
      socket = null;
      ui.closeInfo.textContent = text;
      ui.closeInfo.dataset.code = String(event.code);
      note(text);
      if (event.code === 1012 || event.code === 4008) note("reconnect, then Resume");
      setState("closed", "not connected");
    };
  }

  function disconnect() {
    if (socket) socket.close(1000, "closed by the playground");
  }

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      note("not connected");
      return false;
    }
    socket.send(JSON.stringify(frame));
    logFrame("→", frame);
    return true;
  }

  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes); // randomUUID needs a secure context; this does not
    return "pg-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function sendMessage() {
    const text = ui.message.value;
    if (!text.trim()) return;
    let frame;
    if (ui.raw.checked) {
      try {
        frame = JSON.parse(text);
      } catch (error) {
        note("not JSON: " + error.message);
        return;
      }
    } else {
      frame = { inputs: { input: text }, client_msg_id: randomId() };
    }
    if (send(frame)) ui.message.value = "";
  }

  $("connection").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  ui.disconnect.addEventListener("click", disconnect);
  ui.send.addEventListener("click", sendMessage);
  ui.stop.addEventListener("click", () => send({ action: "stop" }));
  ui.history.addEventListener("click", () => {
    if (send({ action: "history" })) pendingReads.push("history");
  });
  ui.resume.addEventListener("click", () => {
    if (send(resumeFrame())) pendingReads.push("resume");
  });
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  setState("idle", "not connected");
  showResumePosition();
})();
