// The dsocr web page: uploads a file to POST /v1/ocr as a stream of server-sent events, shows
// the text as it is generated, then each page's image with its layout boxes beside the rendered
// markdown (hovering a block highlights its box, and back). Markdown goes through marked, then
// DOMPurify: the model's output is untrusted text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, pages: [], current: 0, doc: null, markdown: "", controller: null, name: "result" };

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  $("drop-text").textContent = `${file.name} (${Math.max(1, Math.round(file.size / 1024))} KiB)`;
  $("run").disabled = false;
  showError("");
}

function markdownHtml(text) {
  const html = window.marked.parse(text || "", { gfm: true, breaks: false });
  return window.DOMPurify.sanitize(html);
}

/** What an error answer says, with a hint for the kinds a person can act on. */
async function errorText(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON */ }
  switch (response.status) {
    case 401: $("key-label").parentElement.open = true; return `API key needed: ${message}`;
    case 413: return `Too large: ${message}`;
    case 415: return `Unsupported file: ${message}`;
    case 429: {
      const after = response.headers.get("Retry-After");
      return `The server is busy${after ? `; try again in ${after} s` : ""}: ${message}`;
    }
    case 503: return `The server is not taking requests: ${message}`;
    case 504: return `Timed out: ${message}`;
    default: return message;
  }
}

function resetResult() {
  state.pages = [];
  state.current = 0;
  state.doc = null;
  state.markdown = "";
  $("live").textContent = "";
  $("markdown").replaceChildren();
  $("overlay").replaceChildren();
  $("page-image").removeAttribute("src");
  for (const id of ["download-mmd", "download-json"]) {
    const a = $(id);
    if (a.href) URL.revokeObjectURL(a.href);
    a.removeAttribute("href");
  }
  $("result").hidden = false;
}

async function run(event) {
  event.preventDefault();
  if (!state.file) return;
  resetResult();
  showError("");
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("task", $("task").value);
  form.append("mode", $("mode").value);
  form.append("stream", "true");
  form.append("page_images", "true");
  for (const [id, field] of [["pages", "pages"], ["max-tokens", "max_new_tokens"], ["ngram-size", "ngram_size"], ["ngram-window", "ngram_window"]]) {
    const value = $(id).value.trim();
    if (value) form.append(field, value);
  }
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  state.controller = new AbortController();
  $("run").disabled = true;
  $("cancel").disabled = false;
  setStatus(`Uploading ${state.file.name}…`);
  const started = performance.now();
  try {
    const response = await fetch("/v1/ocr", { method: "POST", body: form, headers, signal: state.controller.signal });
    if (!response.ok) {
      showError(await errorText(response));
      setStatus("");
      return;
    }
    await readEvents(response, started);
  } catch (e) {
    if (e.name === "AbortError") setStatus("Cancelled.");
    else { showError(`The request failed: ${e.message}`); setStatus(""); }
  } finally {
    state.controller = null;
    $("run").disabled = !state.file;
    $("cancel").disabled = true;
  }
}

/** Reads `event: name` / `data: json` blocks from the response body. */
async function readEvents(response, started) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(name, JSON.parse(data.join("\n")), started);
    }
  }
}

function handle(name, data, started) {
  switch (name) {
    case "document":
      state.name = data.name || "result";
      setStatus(`${data.kind === "pdf" ? `PDF, ${data.pages} page(s)` : "Image"}: generating…`);
      break;
    case "page_started":
      $("live").textContent += `${$("live").textContent ? "\n\n" : ""}--- page ${data.page} ---\n`;
      setStatus(`Generating page ${data.page} of ${data.pages}…`);
      break;
    case "text":
      $("live").textContent += data.text;
      $("live").scrollTop = $("live").scrollHeight;
      if (!state.pages.length) showTab("live");
      break;
    case "retrying":
      $("live").textContent += `\n[${data.finish_reason} after ${data.tokens} tokens: retrying in base mode]\n`;
      break;
    case "page":
      state.pages.push(data);
      if (state.pages.length === 1) { showTab("rendered"); showPage(0); } else updateNav();
      break;
    case "page_failed":
      state.pages.push({ page: data.page, error: data.error, blocks: [], markdown: "" });
      if (state.pages.length === 1) showPage(0); else updateNav();
      break;
    case "done":
      finish(data, started);
      break;
    case "error":
      showError(data.error ? data.error.message : "the request failed");
      setStatus("");
      break;
    default:
      break;
  }
}

function finish(data, started) {
  state.doc = data.document;
  state.markdown = data.markdown;
  const blob = (text, type) => URL.createObjectURL(new Blob([text], { type }));
  const mmd = $("download-mmd");
  mmd.href = blob(data.markdown, "text/markdown");
  mmd.download = `${state.name}.mmd`;
  const json = $("download-json");
  json.href = blob(JSON.stringify(data.document, null, 2), "application/json");
  json.download = `${state.name}.json`;
  const pages = data.document.pages;
  const tokens = pages.reduce((n, p) => n + (p.generated_tokens || 0), 0);
  const flagged = pages.filter((p) => !p.error && !p.complete).length;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  let text = `Done: ${pages.length} page(s), ${tokens} tokens in ${seconds} s.`;
  if (flagged) text += ` ${flagged} page(s) ended without EOS (token limit or repetition): check them.`;
  setStatus(text);
}

function updateNav() {
  const n = state.pages.length;
  const page = state.pages[state.current];
  $("page-label").textContent = page ? `page ${page.page}${n > 1 ? ` (${state.current + 1} of ${n})` : ""}` : "";
  $("prev").disabled = state.current <= 0;
  $("next").disabled = state.current >= n - 1;
}

function showPage(index) {
  state.current = index;
  const page = state.pages[index];
  updateNav();
  const img = $("page-image");
  const overlay = $("overlay");
  const md = $("markdown");
  overlay.replaceChildren();
  md.replaceChildren();
  if (page.error) {
    img.removeAttribute("src");
    const p = document.createElement("p");
    p.className = "failed";
    p.textContent = `This page failed: ${page.error}`;
    md.append(p);
    return;
  }
  if (page.image) img.src = page.image;
  if (!page.blocks.length) {
    const div = document.createElement("div");
    div.className = "block";
    div.innerHTML = markdownHtml(page.markdown);
    md.append(div);
  }
  for (const block of page.blocks) {
    const div = document.createElement("div");
    div.className = "block";
    div.dataset.order = block.order;
    div.title = block.label;
    div.innerHTML = block.text ? markdownHtml(block.text) : `<em>[${block.label}]</em>`;
    md.append(div);
    for (const [x1, y1, x2, y2] of block.pixel_boxes) {
      const box = document.createElement("div");
      box.className = "box";
      box.dataset.order = block.order;
      box.style.left = `${(100 * x1) / page.width}%`;
      box.style.top = `${(100 * y1) / page.height}%`;
      box.style.width = `${(100 * Math.max(1, x2 - x1)) / page.width}%`;
      box.style.height = `${(100 * Math.max(1, y2 - y1)) / page.height}%`;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = block.label;
      box.append(label);
      overlay.append(box);
    }
  }
  for (const el of [...overlay.children, ...md.children]) {
    el.addEventListener("mouseenter", () => highlight(el.dataset.order, el.classList.contains("box")));
    el.addEventListener("mouseleave", () => highlight(null, false));
  }
}

function highlight(order, scroll) {
  for (const el of document.querySelectorAll(".box, .block")) {
    el.classList.toggle("hl", order !== null && order !== undefined && el.dataset.order === String(order));
  }
  if (scroll && order !== null) {
    const block = document.querySelector(`.block[data-order="${order}"]`);
    if (block) block.scrollIntoView({ block: "nearest" });
  }
}

function showTab(which) {
  $("markdown").hidden = which !== "rendered";
  $("live").hidden = which !== "live";
  $("tab-rendered").classList.toggle("active", which === "rendered");
  $("tab-live").classList.toggle("active", which === "live");
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", run);
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("prev").addEventListener("click", () => state.current > 0 && showPage(state.current - 1));
  $("next").addEventListener("click", () => state.current < state.pages.length - 1 && showPage(state.current + 1));
  $("tab-rendered").addEventListener("click", () => showTab("rendered"));
  $("tab-live").addEventListener("click", () => showTab("live"));
});
