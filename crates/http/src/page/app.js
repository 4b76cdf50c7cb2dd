// The Backing Image page: the table follows the server's status stream (SSE), the dialogs
// call the JSON API. Plain JavaScript, no build step. The bearer token lives in
// sessionStorage only (no cookies), asked for when the server answers 401.
"use strict";

const API = "/api/v1";
const UPLOAD_CHUNK = 8 * 1024 * 1024;
const $ = (sel) => document.querySelector(sel);

let images = [];
let secrets = [];

// ---- status fields, read defensively (bifs's flat status, or Longhorn's per-disk map) ----
function diskStatus(b) {
  const st = b.status || {};
  const map = st.diskFileStatusMap;
  if (map && typeof map === "object") {
    const files = Object.values(map);
    if (files.length) return files[0];
  }
  return st;
}
function stateOf(b) {
  return diskStatus(b).state || (b.status && b.status.state) || "pending";
}
function progressOf(b) {
  const p = diskStatus(b).progress;
  return typeof p === "number" ? p : (b.status && b.status.progress) || 0;
}
function messageOf(b) {
  return diskStatus(b).message || (b.status && b.status.message) || "";
}
function secretOf(b) {
  const st = b.status || {};
  const name = st.secret || (b.spec && b.spec.secret) || "";
  const ns = st.secretNamespace || (b.spec && b.spec.secretNamespace) || "";
  return name ? { name, namespace: ns || "default" } : null;
}
function sizeOf(b) {
  const st = b.status || {};
  return st.size || diskStatus(b).size || 0;
}
function params(b) {
  return (b.spec && b.spec.sourceParameters) || {};
}

function human(bytes) {
  if (!bytes) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${bytes} B` : `${v < 10 ? v.toFixed(1) : v.toFixed(0)} ${units[u]}`;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// ---- views: where each view of an image is served ----
function viewUrl(mode, name, secret) {
  const n = encodeURIComponent(name);
  if (secret) {
    return `/views/${mode}/${encodeURIComponent(secret.namespace)}/${encodeURIComponent(secret.name)}/${n}`;
  }
  return `/views/${mode}/${n}`;
}
function viewsOf(b) {
  const s = secretOf(b);
  const out = [
    { label: "Ignore (as stored)", url: viewUrl("ignore", b.metadata.name) },
    { label: "Raw (qcow2 expanded)", url: viewUrl("raw", b.metadata.name) },
  ];
  if (s) {
    out.push({ label: `Decrypt with ${s.namespace}/${s.name}`, url: viewUrl("decrypt", b.metadata.name, s) });
  } else {
    for (const sec of secrets) {
      out.push({ label: `Encrypt with ${sec.namespace}/${sec.name}`, url: viewUrl("encrypt", b.metadata.name, sec) });
    }
  }
  return out;
}

// ---- API calls, with the token ----
function token() { return sessionStorage.getItem("bifs-token") || ""; }

function askToken() {
  const d = $("#token-dialog");
  $("#token-input").value = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => {
      if (d.returnValue === "ok" && $("#token-input").value) {
        sessionStorage.setItem("bifs-token", $("#token-input").value.trim());
        resolve(true);
      } else resolve(false);
    }, { once: true });
    d.showModal();
  });
}

// fetch that adds the token, and on 401 asks for it once and retries.
async function call(url, opts = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = Object.assign({}, opts.headers || {});
    if (token()) headers["Authorization"] = `Bearer ${token()}`;
    const resp = await fetch(url, Object.assign({}, opts, { headers }));
    if (resp.status === 401 && attempt === 0) {
      sessionStorage.removeItem("bifs-token");
      if (await askToken()) continue;
    }
    let body = null;
    const text = await resp.text();
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
    if (!resp.ok) {
      const err = new Error((body && body.message) || `${resp.status} ${resp.statusText}`);
      err.status = resp.status;
      err.body = body;
      throw err;
    }
    return body;
  }
  throw new Error("a token is required for this change");
}

// ---- the table ----
function render() {
  const tbody = $("#images tbody");
  tbody.replaceChildren();
  $("#empty").hidden = images.length > 0;
  for (const b of images) tbody.append(row(b));
  refreshCloneSources();
}

function row(b) {
  const name = b.metadata.name;
  const state = stateOf(b);
  const secret = secretOf(b);
  const nameCell = el("td", { class: "name" },
    secret ? el("span", { class: "lock", title: "Encrypted", "aria-label": "Encrypted", role: "img" }) : null,
    el("button", { type: "button", class: "link", onclick: () => showDetail(name) }, name));
  const stateCell = el("td", { class: "state" }, el("span", { class: `badge ${state}` }, state));
  if (state === "in-progress" || state === "pending") {
    const p = progressOf(b);
    stateCell.append(el("progress", { max: 100, value: p, "aria-label": `${name} progress`, title: `${p}%` }));
  }
  if (state === "failed" && messageOf(b)) stateCell.title = messageOf(b);
  const from = b.spec && b.spec.sourceType ? b.spec.sourceType : "-";
  const fromDetail = from === "download" ? params(b).url : from === "clone" ? params(b)["backing-image"] : "";
  const ops = el("div", { class: "ops" });
  if (state === "ready") {
    const menu = el("details", { class: "menu" }, el("summary", {}, "Download"),
      el("ul", {}, ...viewsOf(b).map((v) => el("li", {}, el("a", { href: v.url, download: name }, v.label)))));
    ops.append(menu);
    ops.append(el("button", { type: "button", onclick: () => openCreate({ clone: name }) }, "Clone"));
  }
  ops.append(el("button", { type: "button", onclick: () => confirmDelete(name) }, "Delete"));
  return el("tr", { "data-name": name, "data-state": state },
    nameCell,
    stateCell,
    el("td", {}, human(sizeOf(b))),
    el("td", {}, human((b.status || {}).virtualSize)),
    el("td", { title: fromDetail || "" }, from, fromDetail ? el("div", { class: "hint" }, fromDetail) : null),
    el("td", {}, secret ? `${secret.namespace}/${secret.name}` : ""),
    el("td", {}, ops));
}

function showPageError(msg) {
  const p = $("#page-error");
  p.textContent = msg || "";
  p.hidden = !msg;
}

// ---- live updates ----
// Server-Sent Events read with fetch (EventSource cannot send the Authorization header).
function onList(data) {
  if (data.error) { showPageError(data.error); return; }
  images = data.items || [];
  render();
  const open = $("#detail-dialog");
  if (open.open && open.dataset.name) fillDetail(open.dataset.name);
}

function live(on, text) {
  $("#live").textContent = text;
  $("#live").classList.toggle("on", on);
}

async function connect() {
  for (;;) {
    try {
      const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
      const resp = await fetch(`${API}/events`, { headers });
      if (resp.status === 401) {
        live(false, "token needed");
        sessionStorage.removeItem("bifs-token");
        if (!(await askToken())) return;
        continue;
      }
      if (!resp.ok || !resp.body) throw new Error(`${resp.status}`);
      live(true, "live");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message", data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "backingimages" && data.length) onList(JSON.parse(data.join("\n")));
        }
      }
    } catch (_) { /* reconnect below */ }
    live(false, "reconnecting…");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- detail ----
function showDetail(name) {
  const d = $("#detail-dialog");
  d.dataset.name = name;
  fillDetail(name);
  d.showModal();
}

function fillDetail(name) {
  const b = images.find((x) => x.metadata.name === name);
  const dl = $("#detail-list");
  dl.replaceChildren();
  $("#detail-title").textContent = `Backing Image ${name}`;
  if (!b) { dl.append(el("dt", {}, "State"), el("dd", {}, "deleted")); return; }
  const st = b.status || {};
  const add = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v === "" || v === undefined ? "-" : v));
  add("Name", name);
  add("UUID", st.uuid || "");
  add("State", el("span", { class: `badge ${stateOf(b)}` }, stateOf(b)));
  add("Created From", (b.spec && b.spec.sourceType) || "");
  for (const [k, v] of Object.entries(params(b))) add(`Parameter ${k}`, el("code", {}, v));
  const expected = (b.spec && b.spec.checksum) || st.expectedChecksum || "";
  const current = st.checksum || st.currentChecksum || "";
  add("Expected SHA512 Checksum", expected ? el("code", {}, expected) : "(none given: the first checksum is taken)");
  add("Current SHA512 Checksum", current ? el("code", {}, current) : "");
  const failedCheck = /checksum mismatch/.test(messageOf(b));
  if (current && (!expected || expected.toLowerCase() === current)) add("Checksum", el("span", { class: "verified" }, "Verified"));
  else if (failedCheck || (expected && current)) add("Checksum", el("span", { class: "mismatch" }, "Failed"));
  const secret = secretOf(b);
  add("Secret", secret ? `${secret.namespace}/${secret.name}` : "");
  add("Actual Size", human(sizeOf(b)));
  add("Virtual Size", human(st.virtualSize));
  if (messageOf(b)) add("Message", el("span", { class: "mismatch" }, messageOf(b)));
  if (stateOf(b) === "ready") {
    const url = new URL(viewUrl("ignore", name), location.href).href;
    add("URL for a Longhorn BackingImage", el("code", {}, url));
    add("Checksum file", el("a", { href: `${viewUrl("ignore", name)}.sha512` }, `${url}.sha512`));
    for (const v of viewsOf(b)) add(`Download: ${v.label}`, el("a", { href: v.url, download: name }, new URL(v.url, location.href).href));
  }
}

// ---- delete ----
function confirmDelete(name) {
  const d = $("#confirm-dialog");
  $("#confirm-title").textContent = `Delete ${name}`;
  $("#confirm-text").textContent = `Are you sure you want to delete backing image ${name}?`;
  d.addEventListener("close", async () => {
    if (d.returnValue !== "ok") return;
    try {
      await call(`${API}/backingimages/${encodeURIComponent(name)}`, { method: "DELETE" });
      showPageError("");
    } catch (e) { showPageError(e.message); }
  }, { once: true });
  d.returnValue = "";
  d.showModal();
}

// ---- the create dialog ----
function refreshCloneSources() {
  const sel = $("#bi-clone-source");
  const keep = sel.value;
  const ready = images.filter((b) => stateOf(b) === "ready").map((b) => b.metadata.name);
  sel.replaceChildren(...ready.map((n) => el("option", { value: n }, n)));
  if (ready.includes(keep)) sel.value = keep;
}

function fillSecrets() {
  const names = [...new Set(secrets.map((s) => s.name))];
  $("#bi-secret").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  fillNamespaces();
}
function fillNamespaces() {
  const name = $("#bi-secret").value;
  const nss = secrets.filter((s) => s.name === name).map((s) => s.namespace);
  $("#bi-secret-namespace").replaceChildren(...nss.map((n) => el("option", { value: n }, n)));
}

function showFields() {
  const src = $("#bi-source").value;
  const keyed = $("#bi-encryption").value !== "ignore";
  for (const f of document.querySelectorAll("#create-form .field[data-for]")) {
    let show = f.dataset.for.split(" ").includes(src);
    if (f.hasAttribute("data-keyed")) show = show && keyed;
    f.hidden = !show;
  }
}

function createError(msg) {
  const p = $("#create-error");
  p.textContent = msg || "";
  p.hidden = !msg;
}

function openCreate(preset = {}) {
  const form = $("#create-form");
  form.reset();
  createError("");
  $("#upload-progress").hidden = true;
  $("#upload-text").textContent = "";
  refreshCloneSources();
  fillSecrets();
  if (preset.clone) {
    $("#bi-source").value = "clone";
    $("#bi-clone-source").value = preset.clone;
  }
  showFields();
  $("#create-ok").disabled = false;
  $("#create-dialog").showModal();
  $("#bi-name").focus();
}

function manifest(name, spec) {
  return { apiVersion: "longhorn.io/v1beta2", kind: "BackingImage", metadata: { name }, spec };
}

async function submitCreate(ev) {
  ev.preventDefault();
  createError("");
  const name = $("#bi-name").value.trim();
  const src = $("#bi-source").value;
  const checksum = $("#bi-checksum").value.trim();
  $("#create-ok").disabled = true;
  try {
    if (src === "upload") {
      const file = $("#bi-file").files[0];
      if (!file) throw new Error("File: choose a file to upload");
      await upload(name, file, checksum);
    } else {
      const spec = { sourceType: src, sourceParameters: {} };
      if (src === "download") {
        spec.sourceParameters.url = $("#bi-url").value.trim();
        if (checksum) spec.checksum = checksum;
      } else {
        spec.sourceParameters["backing-image"] = $("#bi-clone-source").value;
        const enc = $("#bi-encryption").value;
        spec.sourceParameters.encryption = enc;
        if (enc !== "ignore") {
          spec.sourceParameters.secret = $("#bi-secret").value;
          spec.sourceParameters["secret-namespace"] = $("#bi-secret-namespace").value;
        }
      }
      await call(`${API}/backingimages`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(manifest(name, spec)),
      });
    }
    $("#create-dialog").close("ok");
  } catch (e) {
    createError(e.message);
  } finally {
    $("#create-ok").disabled = false;
  }
}

// Resumable: asks the server how much it holds, sends the rest in chunks.
async function upload(name, file, checksum) {
  const bar = $("#upload-progress");
  const text = $("#upload-text");
  bar.hidden = false;
  const path = `${API}/uploads/${encodeURIComponent(name)}`;
  let { offset } = await call(path);
  if (offset > file.size) offset = 0;
  for (;;) {
    bar.value = file.size ? Math.floor((offset * 100) / file.size) : 0;
    text.textContent = `${human(offset)} of ${human(file.size)}`;
    const end = Math.min(offset + UPLOAD_CHUNK, file.size);
    const q = new URLSearchParams({ offset, size: file.size });
    if (checksum) q.set("checksum", checksum);
    let r;
    try {
      r = await call(`${path}?${q}`, { method: "PUT", body: file.slice(offset, end) });
    } catch (e) {
      if (e.status === 409 && e.body && typeof e.body.offset === "number") { offset = e.body.offset; continue; }
      throw e;
    }
    if (r && r.complete === false) { offset = r.offset; continue; }
    bar.value = 100;
    text.textContent = `${human(file.size)} uploaded`;
    return r;
  }
}

async function loadSecrets() {
  try {
    const r = await call(`${API}/secrets`);
    secrets = (r && r.items) || [];
    return true;
  } catch (e) {
    showPageError(e.message);
    live(false, "offline");
    return e.status !== 401;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#create-button").addEventListener("click", () => openCreate());
  $("#create-cancel").addEventListener("click", () => $("#create-dialog").close("cancel"));
  $("#create-form").addEventListener("submit", submitCreate);
  $("#bi-source").addEventListener("change", showFields);
  $("#bi-encryption").addEventListener("change", showFields);
  $("#bi-secret").addEventListener("change", fillNamespaces);
  $("#detail-close").addEventListener("click", () => $("#detail-dialog").close());
  // A Download menu closes when focus or a click goes elsewhere.
  document.addEventListener("click", (ev) => {
    for (const d of document.querySelectorAll("details.menu[open]")) if (!d.contains(ev.target)) d.open = false;
  });
  if (await loadSecrets()) connect();
});
