// The live page's script: plain JavaScript, no framework, no build step.
//
//   chat     POST v1/chat/completions with stream: true; the answer arrives as Server-Sent
//            Events, "data: {json}" lines separated by a blank line, read with a ReadableStream
//   engine   GET v1/engine/state every 500 ms, drawn into the panel
//
// URLs are relative, so the page also works behind a proxy that serves it under a prefix.

"use strict";

const POLL_MS = 500;
const $ = (id) => document.getElementById(id);

let modelName = null; // the served model, learnt from the first state poll
let history = []; // the conversation so far, sent whole each time (the prefix cache reuses it)
let controller = null; // aborts the streaming answer ("Stop")

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// ---- engine panel ---------------------------------------------------------------------------

async function refreshEngine() {
  try {
    const response = await fetch("v1/engine/state", { headers: headers() });
    const state = await response.json();
    if (!response.ok) throw new Error(state.error ? state.error.message : response.statusText);
    drawEngine(state);
    $("engine-status").textContent = "live";
  } catch (err) {
    $("engine-status").textContent = `no state: ${err.message}`;
  } finally {
    setTimeout(refreshEngine, POLL_MS);
  }
}

function drawEngine(s) {
  modelName = s.model;
  $("model-name").textContent = s.model;
  const bar = $("kv-bar");
  bar.setAttribute("aria-valuemax", s.kv_pages_total);
  bar.setAttribute("aria-valuenow", s.kv_pages_used);
  bar.setAttribute("aria-valuetext", `${s.kv_pages_used} of ${s.kv_pages_total} pages used`);
  const percent = s.kv_pages_total ? (100 * s.kv_pages_used) / s.kv_pages_total : 0;
  $("kv-used").style.width = `${percent}%`;
  $("kv-text").textContent =
    `${s.kv_pages_used} used · ${s.kv_pages_free} free · ${s.kv_pages_total} pages ` +
    `of ${s.page_size} tokens`;
  $("running").textContent = s.running_requests;
  $("waiting").textContent = s.waiting_requests;
  $("tokens-per-second").textContent = s.tokens_per_second.toFixed(1);
  $("hit-rate").textContent = `${(100 * s.prefix_cache_hit_rate).toFixed(1)} %`;
  $("tree-nodes").textContent = s.radix_tree_nodes;
  $("cached-pages").textContent = s.cached_pages;
  $("total-requests").textContent = s.total_requests;
}

// ---- chat -----------------------------------------------------------------------------------

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const who = document.createElement("span");
  who.className = "role";
  who.textContent = role === "user" ? "You" : "Model";
  const body = document.createElement("p");
  body.className = "content";
  body.textContent = text;
  div.append(who, body);
  $("messages").append(div);
  scrollToEnd();
  return body;
}

function scrollToEnd() {
  const log = $("messages");
  log.scrollTop = log.scrollHeight;
}

// Yields each parsed "data:" payload of an SSE response until "data: [DONE]".
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice("data: ".length);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  $("prompt").value = "";
  const answer = addMessage("assistant", "");
  answer.classList.add("streaming");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("chat-status").textContent = "generating…";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: modelName,
        messages: history,
        max_tokens: Number($("max-tokens").value),
        temperature: Number($("temperature").value),
        stream: true,
      }),
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    let finish = null;
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice && choice.delta.content) {
        answer.textContent += choice.delta.content;
        scrollToEnd();
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
    }
    $("chat-status").textContent = `done (${finish})`;
  } catch (err) {
    $("chat-status").textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
  } finally {
    // A stopped answer stays in the conversation as far as it got; a turn with no answer (an
    // error) is dropped, so that the next message does not send it again.
    if (answer.textContent) history.push({ role: "assistant", content: answer.textContent });
    else history.pop();
    answer.classList.remove("streaming");
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", send);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", () => {
    history = [];
    $("messages").replaceChildren();
    $("chat-status").textContent = "";
  });
  // Enter sends, Shift+Enter starts a new line, as in most chat boxes.
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  refreshEngine();
});
