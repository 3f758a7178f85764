// The playground: a chat with the served model through its OpenAI-compatible API, streamed.
// Plain browser JavaScript, no build step and no libraries: fetch() + ReadableStream read the
// Server-Sent Events of POST /v1/chat/completions as they arrive.
"use strict";

(function () {
  const ENDPOINT = "/v1/chat/completions";
  const $ = (id) => document.getElementById(id);
  const page = {
    model: $("model").textContent.trim(),
    conversation: $("conversation"),
    composer: $("composer"),
    question: $("question"),
    file: $("file"),
    urlKind: $("url-kind"),
    mediaUrl: $("media-url"),
    attachment: $("attachment"),
    attachmentName: $("attachment-name"),
    send: $("send"),
    stop: $("stop"),
    stats: $("stats"),
  };

  // The conversation so far, in OpenAI's message form: it is sent again with every question.
  let messages = [];
  // What the next question carries: {kind: "image" | "video", url, name}, from a file or a URL.
  let attached = null;
  let running = null; // the AbortController of the answer being streamed

  function setState(state) {
    document.body.dataset.state = state;
    page.send.disabled = state === "streaming";
    page.stop.disabled = state !== "streaming";
  }

  function showAttachment() {
    page.attachment.hidden = !attached;
    page.attachmentName.textContent = attached ? `${attached.kind}: ${attached.name}` : "";
  }

  function clearAttachment() {
    attached = null;
    page.file.value = "";
    page.mediaUrl.value = "";
    showAttachment();
  }

  // A file becomes a data URI, which the server's media loader takes like a URL.
  page.file.addEventListener("change", () => {
    const file = page.file.files[0];
    if (!file) return;
    const kind = file.type.startsWith("video/") ? "video" : "image";
    const reader = new FileReader();
    reader.onload = () => {
      attached = { kind, url: reader.result, name: file.name };
      page.mediaUrl.value = "";
      showAttachment();
    };
    reader.onerror = () => addMessage("assistant", `Could not read ${file.name}.`, { error: true });
    reader.readAsDataURL(file);
  });

  page.mediaUrl.addEventListener("input", () => {
    const url = page.mediaUrl.value.trim();
    page.file.value = "";
    attached = url ? { kind: page.urlKind.value, url, name: url } : null;
    showAttachment();
  });
  page.urlKind.addEventListener("change", () => {
    if (attached && !attached.url.startsWith("data:")) attached.kind = page.urlKind.value;
    showAttachment();
  });
  $("remove-attachment").addEventListener("click", clearAttachment);

  $("reset").addEventListener("click", () => {
    if (running) running.abort();
    messages = [];
    page.conversation.replaceChildren();
    page.stats.textContent = "";
    clearAttachment();
  });

  page.stop.addEventListener("click", () => running && running.abort());

  page.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      page.composer.requestSubmit();
    }
  });

  page.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = page.question.value.trim();
    if (!text || running) return;
    ask(text);
  });

  // One bubble; text goes in with textContent only, never as HTML.
  function addMessage(role, text, { media = null, error = false } = {}) {
    const bubble = document.createElement("div");
    bubble.className = `message ${role}` + (error ? " error" : "");
    if (media) bubble.append(mediaPreview(media));
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    bubble.append(body);
    page.conversation.append(bubble);
    bubble.scrollIntoView({ block: "end" });
    return bubble;
  }

  function mediaPreview(media) {
    if (media.kind === "image" && media.url.startsWith("data:")) {
      const image = document.createElement("img");
      image.src = media.url;
      image.alt = media.name;
      return image;
    }
    if (media.kind === "video" && media.url.startsWith("data:")) {
      const video = document.createElement("video");
      video.src = media.url;
      video.controls = true;
      video.muted = true;
      return video;
    }
    const link = document.createElement("span");
    link.className = "media-link";
    link.textContent = `${media.kind}: ${media.name}`;
    return link;
  }

  function userContent(text, media) {
    if (!media) return text;
    const part = media.kind === "video"
      ? { type: "video_url", video_url: { url: media.url } }
      : { type: "image_url", image_url: { url: media.url } };
    return [part, { type: "text", text }];
  }

  function requestHeaders() {
    // The CSRF token matters only to a signed-in admin, whose session the API also accepts.
    const csrf = document.querySelector("[name=csrfmiddlewaretoken]");
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrf.value };
    const key = $("api-key").value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  function requestBody() {
    const body = { model: page.model, messages, stream: true, stream_options: { include_usage: true } };
    const maxTokens = parseInt($("max-tokens").value, 10);
    const temperature = parseFloat($("temperature").value);
    if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
    if (Number.isFinite(temperature)) body.temperature = temperature;
    return body;
  }

  async function ask(text) {
    const media = attached;
    messages.push({ role: "user", content: userContent(text, media) });
    addMessage("user", text, { media });
    page.question.value = "";
    clearAttachment();

    const bubble = addMessage("assistant", "");
    const answer = bubble.querySelector(".text");
    const started = performance.now();
    const progress = { text: "", chunks: 0, firstTokenMs: null, usage: null, finishReason: null, requestId: "" };
    running = new AbortController();
    setState("streaming");
    document.body.dataset.chunks = "0";
    try {
      const response = await fetch(ENDPOINT, {
        method: "POST",
        headers: requestHeaders(),
        body: JSON.stringify(requestBody()),
        signal: running.signal,
      });
      progress.requestId = response.headers.get("X-Request-ID") || "";
      if (!response.ok) throw new Error(await errorMessage(response));
      await readEvents(response, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.usage) progress.usage = event.usage;
        const choice = event.choices && event.choices[0];
        if (!choice) return;
        if (choice.finish_reason) progress.finishReason = choice.finish_reason;
        const content = choice.delta && choice.delta.content;
        if (!content) return;
        if (progress.firstTokenMs === null) progress.firstTokenMs = performance.now() - started;
        progress.text += content;
        progress.chunks += 1;
        answer.textContent = progress.text;
        document.body.dataset.chunks = String(progress.chunks);
      });
      messages.push({ role: "assistant", content: progress.text });
      showStats(bubble, progress, performance.now() - started);
    } catch (error) {
      // The question stays on screen but leaves the history, so the conversation can go on.
      messages.pop();
      bubble.classList.add("error");
      const stopped = error.name === "AbortError";
      answer.textContent = progress.text + (stopped ? " [stopped]" : (progress.text ? "\n" : "") + error.message);
    } finally {
      running = null;
      setState("idle");
    }
  }

  async function errorMessage(response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || body.detail || message;
    } catch (ignored) {
      // not JSON: the status line says enough
    }
    if (response.status === 401) message += " (enter the server's API key under Settings)";
    return message;
  }

  // Server-Sent Events from a fetch() body: events end with a blank line; `data:` lines carry JSON,
  // and `data: [DONE]` ends OpenAI's stream.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }

  function showStats(bubble, progress, totalMs) {
    const usage = progress.usage;
    const parts = [];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (progress.firstTokenMs !== null) parts.push(`first token ${Math.round(progress.firstTokenMs)} ms`);
    parts.push(`total ${Math.round(totalMs)} ms`);
    if (usage && progress.firstTokenMs !== null && usage.completion_tokens > 1 && totalMs > progress.firstTokenMs) {
      const rate = (usage.completion_tokens - 1) / ((totalMs - progress.firstTokenMs) / 1000);
      parts.push(`${rate.toFixed(1)} tokens/s`);
    }
    if (progress.finishReason) parts.push(`finish: ${progress.finishReason}`);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = parts.join(" · ");
    if (progress.requestId) meta.title = `request ${progress.requestId}`;
    bubble.append(meta);
    page.stats.textContent = parts.join(" · ");
  }

  async function checkHealth() {
    const health = $("health");
    try {
      const body = await (await fetch("/health")).json();
      health.dataset.status = body.status;
      health.textContent = body.status === "healthy" ? `ready on ${body.device}` : body.status;
    } catch (error) {
      health.dataset.status = "down";
      health.textContent = "server unreachable";
    }
  }

  setState("idle");
  checkHealth();
})();
