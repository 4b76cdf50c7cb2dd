// The Backing Image page: the table follows the server's status stream (SSE), the dialogs
// call the JSON API. Plain JavaScript, no build step. The bearer token lives in
// sessionStorage only (no cookies), asked for when the server answers 401.
"use strict";

const API = "/api/v1";
const UPLOAD_CHUNK = 8 * 1024 * 1024;
const SECTOR = 512;
// longhorn-ui's dialog starts Minimum Number of Copies at the `default-replica-count` setting,
// whose default is 3 (CreateBackingImage.js: `parsedReplicas[initialDataEngine] ?? 3`).
const DEFAULT_MIN_COPIES = 3;
const $ = (sel) => document.querySelector(sel);

let images = [];
let secrets = [];
// Who the server is (GET /api/v1/node): its address for Longhorn and which views need a
// signed URL there (those that need the token).
let node = { advertiseUrl: null, signedViews: [] };

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
function tagsOf(list) {
  return Array.isArray(list) ? list.filter((t) => typeof t === "string" && t) : [];
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

// ---- YAML for showing a manifest (what `bifs get -o yaml` prints, without status) ----
const PLAIN = /^[A-Za-z0-9_/][A-Za-z0-9_./:@+-]*$/;
const LOOKS_TYPED = /^(true|false|yes|no|on|off|null|~|[-+]?[0-9.][0-9._eE+-]*)$/i;
function yamlScalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  const s = String(v);
  if (s === "") return "''";
  return PLAIN.test(s) && !LOOKS_TYPED.test(s) && !s.endsWith(":") ? s : JSON.stringify(s);
}
function yaml(v, indent = "") {
  const out = [];
  if (Array.isArray(v)) {
    for (const x of v) {
      if (x && typeof x === "object" && Object.keys(x).length) {
        const inner = yaml(x, indent + "  ").replace(/^\s+/, "");
        out.push(`${indent}- ${inner}`);
      } else out.push(`${indent}- ${yamlInline(x)}`);
    }
  } else {
    for (const [k, x] of Object.entries(v)) {
      const key = yamlScalar(k);
      if (x && typeof x === "object" && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        out.push(`${indent}${key}:`, yaml(x, Array.isArray(x) ? indent : indent + "  "));
      } else out.push(`${indent}${key}: ${yamlInline(x)}`);
    }
  }
  return out.join("\n");
}
function yamlInline(x) {
  if (Array.isArray(x)) return "[]";
  if (x && typeof x === "object") return "{}";
  return yamlScalar(x);
}
function manifestOf(b) {
  return { apiVersion: b.apiVersion, kind: b.kind, metadata: b.metadata, spec: b.spec };
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
  const name = b.metadata.name;
  const out = [
    { mode: "ignore", label: "Ignore (as stored)", url: viewUrl("ignore", name), secret: s },
    { mode: "raw", label: "Raw (qcow2 expanded)", url: viewUrl("raw", name), secret: null },
  ];
  if (s) {
    out.push({ mode: "decrypt", label: `Decrypt with ${s.namespace}/${s.name}`, url: viewUrl("decrypt", name, s), secret: null });
  } else {
    for (const sec of secrets) {
      out.push({ mode: "encrypt", label: `Encrypt with ${sec.namespace}/${sec.name}`, url: viewUrl("encrypt", name, sec), secret: sec });
    }
  }
  return out;
}

// An image of the disk that Longhorn's backing-image-manager made: listed, never changed.
function longhornManaged(b) {
  const a = (b.metadata && b.metadata.annotations) || {};
  return a["bifs/managed-by"] === "longhorn";
}

// ---- for Longhorn: the URL its download client can use, and a BackingImage manifest ----
function baseUrl() {
  return (node.advertiseUrl || location.origin).replace(/\/+$/, "");
}

// The view's URL for Longhorn, signed by the server when the view needs the token (Longhorn
// sends none): { url, expires } (expires in UNIX seconds, or null).
async function longhornUrl(v) {
  if (!node.signedViews.includes(v.mode)) return { url: baseUrl() + v.url, expires: null };
  const r = await call(`${API}/sign`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path: v.url }),
  });
  return { url: baseUrl() + r.path, expires: r.expires };
}

// The name Longhorn will know the downloaded image by: the image, and what the view made of it.
function longhornName(b, v) {
  const suffix = { ignore: "", raw: "-raw", encrypt: "-encrypted", decrypt: "-decrypted" }[v.mode];
  return (b.metadata.name + suffix).toLowerCase().replace(/[^a-z0-9_.-]/g, "-").slice(0, 40);
}

function longhornManifest(b, v, url, checksum) {
  const spec = { sourceType: "download", sourceParameters: { url } };
  if (checksum) spec.checksum = checksum;
  // Encrypted bytes say which Secret opens them (Longhorn reads "encrypted" from spec.secret).
  if (v.secret) { spec.secret = v.secret.name; spec.secretNamespace = v.secret.namespace; }
  return yaml({
    apiVersion: "longhorn.io/v1beta2", kind: "BackingImage",
    metadata: { name: longhornName(b, v), namespace: "longhorn-system" }, spec,
  });
}

async function showLonghorn(name, index) {
  const b = images.find((x) => x.metadata.name === name);
  const v = b && viewsOf(b)[index];
  if (!v) return;
  const d = $("#longhorn-dialog");
  $("#longhorn-title").textContent = `${v.label}: for Longhorn`;
  $("#longhorn-url").value = "…";
  $("#longhorn-note").textContent = "";
  $("#longhorn-manifest").textContent = "";
  $("#longhorn-error").hidden = true;
  d.showModal();
  try {
    const { url, expires } = await longhornUrl(v);
    $("#longhorn-url").value = url;
    $("#longhorn-note").textContent = expires
      ? `Signed: this view needs the token, which Longhorn cannot send. Anyone with this URL can read it until ${new Date(expires * 1000).toLocaleString()}.`
      : "Longhorn downloads it without a token.";
    $("#longhorn-manifest").textContent = longhornManifest(b, v, url, null) + "\n# (computing the checksum…)";
    const sum = await call(`${v.url}.sha512`);
    const checksum = String((sum && sum.message) || sum || "").trim();
    $("#longhorn-manifest").textContent = longhornManifest(b, v, url, /^[0-9a-f]{128}$/.test(checksum) ? checksum : null);
  } catch (e) {
    $("#longhorn-error").textContent = e.message;
    $("#longhorn-error").hidden = false;
  }
  $("#longhorn-url").select();
}

async function loadNode() {
  try {
    const r = await call(`${API}/node`);
    if (r) node = { advertiseUrl: r.advertiseUrl || null, signedViews: r.signedViews || [] };
  } catch (_) { /* keep the defaults: unsigned URLs on this page's own address */ }
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
// Rows are kept per name and replaced only when their image changed, so a status event for
// one image leaves the others (and the focus in them) alone.
const rowCache = new Map(); // name -> { tr, sig }

function render() {
  const tbody = $("#images tbody");
  $("#empty").hidden = images.length > 0;
  const secretsSig = JSON.stringify(secrets);
  const active = document.activeElement;
  const wanted = [];
  for (const b of images) {
    const name = b.metadata.name;
    const sig = JSON.stringify(b) + secretsSig;
    let c = rowCache.get(name);
    if (!c || c.sig !== sig) {
      const tr = row(b);
      // Focus inside a replaced row moves to the same control in the new one.
      if (c && c.tr.contains(active) && active.dataset.action) {
        const again = tr.querySelector(`[data-action="${active.dataset.action}"]`);
        if (again) queueMicrotask(() => again.focus());
      }
      c = { tr, sig };
      rowCache.set(name, c);
    }
    wanted.push(c.tr);
  }
  const names = new Set(images.map((b) => b.metadata.name));
  for (const n of [...rowCache.keys()]) if (!names.has(n)) rowCache.delete(n);
  // Only rows out of place move; the rest stay where they are.
  let at = tbody.firstChild;
  for (const tr of wanted) {
    if (tr === at) at = at.nextSibling;
    else tbody.insertBefore(tr, at);
  }
  while (at) { const next = at.nextSibling; at.remove(); at = next; }
  refreshCloneSources();
  refreshMenu();
}

function cell(label, attrs, ...children) {
  return el("td", Object.assign({ "data-label": label }, attrs || {}), ...children);
}

function row(b) {
  const name = b.metadata.name;
  const state = stateOf(b);
  const secret = secretOf(b);
  const nameCell = cell("Name", { class: "name" }, el("div", { class: "name-line" },
    secret ? el("span", { class: "lock", title: "Encrypted Backing Image", "aria-label": "Encrypted Backing Image", role: "img" }) : null,
    el("button", { type: "button", class: "link", "data-action": "detail", onclick: () => showDetail(name) }, name)));
  const stateCell = cell("State", { class: "state" }, el("span", { class: `badge ${state}` }, state));
  // The phase: `starting` while the key is prepared (its message names the KDF and cost:
  // seconds of Argon2, not a stuck 0%), then `in-progress` with the copy's percentage.
  if (state === "in-progress") {
    const p = progressOf(b);
    stateCell.append(el("progress", { max: 100, value: p, "aria-label": `${name} progress`, title: `${p}%` }));
    stateCell.append(el("div", { class: "row-message phase" }, `copying: ${p}%`));
  }
  const msg = messageOf(b);
  if (msg) stateCell.append(el("div", { class: `row-message${state === "failed" ? " failed" : state === "starting" ? " phase" : ""}`, title: msg }, msg));
  const managed = longhornManaged(b);
  if (managed) {
    nameCell.append(el("div", { class: "hint managed", title: "Made by Longhorn's backing-image-manager on this disk: bifs lists, serves and clones it, and never changes or deletes it." }, "managed by Longhorn"));
  }
  const from = b.spec && b.spec.sourceType ? b.spec.sourceType : "-";
  const fromDetail = from === "download" ? params(b).url : from === "clone" ? params(b)["backing-image"] : "";
  const ops = el("div", { class: "ops" });
  if (state === "ready") {
    ops.append(el("button", {
      type: "button", class: "menu-button", "data-action": "download", "aria-haspopup": "menu",
      "aria-expanded": "false", "aria-controls": "download-menu",
      onclick: () => toggleMenu(name),
      onkeydown: (ev) => menuButtonKey(ev, name),
    }, "Download"));
    ops.append(el("button", { type: "button", "data-action": "clone", onclick: () => openCreate({ clone: name }) }, "Clone"));
  }
  if (!managed) ops.append(el("button", { type: "button", "data-action": "delete", onclick: () => confirmDelete(name) }, "Delete"));
  return el("tr", { "data-name": name, "data-state": state },
    nameCell,
    stateCell,
    cell("Actual Size", { class: "size" }, human(sizeOf(b))),
    cell("Virtual Size", { class: "size" }, human((b.status || {}).virtualSize)),
    cell("Created From", { class: "from" }, from, fromDetail ? el("div", { class: "hint" }, fromDetail) : null),
    cell("Secret", { class: "secret" }, secret ? el("span", { class: "secret-name" }, secret.name) : "", secret ? el("div", { class: "hint" }, secret.namespace) : null),
    cell("Operation", { class: "operation" }, ops));
}

function showPageError(msg) {
  const p = $("#page-error");
  p.textContent = msg || "";
  p.hidden = !msg;
}

// ---- the Download menu (one, outside the table; WAI-ARIA menu button) ----
let menuFor = null; // the name of the image whose menu is open

function menuButtonOf(name) {
  const c = rowCache.get(name);
  return c ? c.tr.querySelector('[data-action="download"]') : null;
}
function menuItems() {
  return [...$("#download-menu").querySelectorAll('[role="menuitem"]')];
}

// Each view twice: its download (a link), then, after all of them, its URL and manifest for
// Longhorn (a dialog).
function fillMenu(b) {
  const menu = $("#download-menu");
  const views = viewsOf(b);
  const key = (x) => x.getAttribute("href") || x.dataset.longhorn;
  const want = views.map((v) => v.url).concat(views.map((v) => `longhorn:${v.url}`));
  if (menuItems().map(key).join("\n") === want.join("\n")) return;
  const focused = menuItems().indexOf(document.activeElement);
  const name = b.metadata.name;
  menu.replaceChildren(
    ...views.map((v) => el("a", {
      role: "menuitem", href: v.url, download: name, tabindex: "-1",
      onclick: () => closeMenu(true),
    }, v.label)),
    el("div", { class: "menu-heading", role: "presentation" }, "For Longhorn (URL and BackingImage manifest)"),
    ...views.map((v, i) => el("button", {
      type: "button", role: "menuitem", tabindex: "-1", "data-longhorn": `longhorn:${v.url}`,
      onclick: () => { closeMenu(true); showLonghorn(name, i); },
    }, `${v.label}…`)));
  if (focused >= 0) (menuItems()[focused] || menuItems()[0]).focus();
}

function openMenu(name, focusFirst) {
  const b = images.find((x) => x.metadata.name === name);
  const btn = menuButtonOf(name);
  if (!b || !btn) return;
  if (menuFor && menuFor !== name) closeMenu(false);
  menuFor = name;
  const menu = $("#download-menu");
  menu.replaceChildren();
  fillMenu(b);
  menu.setAttribute("aria-label", `Download ${name}`);
  menu.hidden = false;
  btn.setAttribute("aria-expanded", "true");
  placeMenu();
  if (focusFirst && menuItems().length) menuItems()[0].focus();
}

function closeMenu(focusButton) {
  if (!menuFor) return;
  const btn = menuButtonOf(menuFor);
  const hadFocus = $("#download-menu").contains(document.activeElement);
  menuFor = null;
  $("#download-menu").hidden = true;
  if (btn) {
    btn.setAttribute("aria-expanded", "false");
    if (focusButton || hadFocus) btn.focus();
  }
}

// Opening moves the focus to the first item (WAI-ARIA menu button), by mouse or keyboard,
// so the arrows and Esc work at once.
function toggleMenu(name) {
  if (menuFor === name) closeMenu(true);
  else openMenu(name, true);
}

// Below its button, right-aligned; above it when there is no room below; inside the window.
function placeMenu() {
  if (!menuFor) return;
  const btn = menuButtonOf(menuFor);
  const menu = $("#download-menu");
  if (!btn || !btn.isConnected) { closeMenu(false); return; }
  const r = btn.getBoundingClientRect();
  const margin = 8, gap = 4;
  menu.style.maxHeight = "";
  const w = menu.offsetWidth, h = menu.offsetHeight;
  const vw = document.documentElement.clientWidth, vh = window.innerHeight;
  let left = Math.min(r.right - w, vw - w - margin);
  left = Math.max(margin, left);
  let top = r.bottom + gap;
  if (top + h > vh - margin) {
    if (r.top - gap - h >= margin) top = r.top - gap - h;
    else {
      top = Math.max(margin, vh - margin - h);
      if (top + h > vh - margin) menu.style.maxHeight = `${vh - 2 * margin}px`;
    }
  }
  menu.style.left = `${Math.round(left)}px`;
  menu.style.top = `${Math.round(top)}px`;
}

// After a redraw: the open menu follows its (possibly new) button, or closes if its image
// is gone or no longer ready.
function refreshMenu() {
  if (!menuFor) return;
  const b = images.find((x) => x.metadata.name === menuFor);
  const btn = menuButtonOf(menuFor);
  if (!b || stateOf(b) !== "ready" || !btn) {
    const hadFocus = $("#download-menu").contains(document.activeElement);
    menuFor = null;
    $("#download-menu").hidden = true;
    if (hadFocus) $("#images").focus({ preventScroll: true });
    return;
  }
  btn.setAttribute("aria-expanded", "true");
  fillMenu(b);
  placeMenu();
}

function menuButtonKey(ev, name) {
  if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    ev.preventDefault();
    openMenu(name, false);
    const items = menuItems();
    if (items.length) (ev.key === "ArrowDown" ? items[0] : items[items.length - 1]).focus();
  } else if (ev.key === "Escape" && menuFor === name) {
    ev.preventDefault();
    closeMenu(true);
  }
}

function menuKey(ev) {
  const items = menuItems();
  const i = items.indexOf(document.activeElement);
  const go = (j) => { ev.preventDefault(); items[(j + items.length) % items.length].focus(); };
  switch (ev.key) {
    case "ArrowDown": go(i + 1); break;
    case "ArrowUp": go(i - 1); break;
    case "Home": go(0); break;
    case "End": go(items.length - 1); break;
    case "Escape": ev.preventDefault(); closeMenu(true); break;
    // Back on the button, so the browser's own Tab moves on from there.
    case "Tab": closeMenu(true); break;
    case " ": if (i >= 0) { ev.preventDefault(); items[i].click(); } break;
    default: break;
  }
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
  $("#detail-manifest").hidden = !b;
  if (!b) { dl.append(el("dt", {}, "State"), el("dd", {}, "deleted")); return; }
  const st = b.status || {};
  const spec = b.spec || {};
  const add = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v === "" || v === undefined ? "-" : v));
  const tags = (list, kind) => {
    const t = tagsOf(list);
    return t.length ? el("span", { class: "tags" }, ...t.map((x) => el("span", { class: `tag ${kind}` }, x))) : "";
  };
  add("Name", name);
  add("UUID", st.uuid || "");
  add("State", el("span", { class: `badge ${stateOf(b)}` }, stateOf(b)));
  if (messageOf(b)) add("Message", el("span", { class: stateOf(b) === "failed" ? "mismatch" : "" }, messageOf(b)));
  add("Created From", spec.sourceType || "");
  for (const [k, v] of Object.entries(params(b))) add(`Parameter ${k}`, el("code", {}, v));
  const expected = spec.checksum || st.expectedChecksum || "";
  const current = st.checksum || st.currentChecksum || "";
  add("Expected SHA512 Checksum", expected ? el("code", {}, expected) : "(none given: the first checksum is taken)");
  add("Current SHA512 Checksum", current ? el("code", {}, current) : "");
  const failedCheck = /doesn't match the file actual checksum|checksum mismatch/.test(messageOf(b));
  if (current && (!expected || expected.toLowerCase() === current)) add("Checksum", el("span", { class: "verified" }, "Verified"));
  else if (failedCheck || (expected && current)) add("Checksum", el("span", { class: "mismatch" }, "Failed"));
  const secret = secretOf(b);
  add("Secret", secret ? secret.name : "");
  add("Secret Namespace", secret ? secret.namespace : "");
  add("Minimum Number of Copies", spec.minNumberOfCopies === undefined ? "" : String(spec.minNumberOfCopies));
  add("Data Engine", spec.dataEngine || "");
  add("Node Tag", tags(spec.nodeSelector, "node"));
  add("Disk Tag", tags(spec.diskSelector, "disk"));
  add("Actual Size", human(sizeOf(b)));
  add("Virtual Size", human(st.virtualSize));
  if (longhornManaged(b)) add("Managed by", "Longhorn (backing-image-manager's files on this disk: bifs never changes or deletes them)");
  if (stateOf(b) === "ready") {
    const url = baseUrl() + viewUrl("ignore", name);
    add("URL for a Longhorn BackingImage", el("code", {}, url));
    add("Checksum file", el("a", { href: `${viewUrl("ignore", name)}.sha512` }, `${url}.sha512`));
    for (const v of viewsOf(b)) add(`Download: ${v.label}`, el("a", { href: v.url, download: name }, new URL(v.url, location.href).href));
  }
  $("#detail-manifest-text").textContent = yaml(manifestOf(b));
}

// ---- delete (longhorn-ui BackingImageActions.js: "Are you sure you want to delete …") ----
function confirmDelete(name) {
  const d = $("#confirm-dialog");
  $("#confirm-title").textContent = `Delete ${name}`;
  $("#confirm-text").textContent = `Are you sure you want to delete ${name} backing image?`;
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
  const have = [...sel.options].map((o) => o.value);
  if (have.join("\n") !== ready.join("\n")) {
    sel.replaceChildren(...ready.map((n) => el("option", { value: n }, n)));
    if (ready.includes(keep)) sel.value = keep;
    if ($("#create-dialog").open) updateManifestPreview();
  }
}

function fillSecretSuggestions() {
  const names = [...new Set(secrets.map((s) => s.name))];
  $("#secret-names").replaceChildren(...names.map((n) => el("option", { value: n })));
  fillNamespaceSuggestions();
  const tagSet = (key) => [...new Set(images.flatMap((b) => tagsOf((b.spec || {})[key])))].sort();
  $("#known-node-tags").replaceChildren(...tagSet("nodeSelector").map((t) => el("option", { value: t })));
  $("#known-disk-tags").replaceChildren(...tagSet("diskSelector").map((t) => el("option", { value: t })));
}
// The namespaces of the typed Secret (all known ones while it matches none).
function fillNamespaceSuggestions() {
  const name = $("#bi-secret").value.trim();
  let nss = secrets.filter((s) => s.name === name).map((s) => s.namespace);
  if (!nss.length) nss = secrets.map((s) => s.namespace);
  $("#secret-namespaces").replaceChildren(...[...new Set(nss)].map((n) => el("option", { value: n })));
}
// A known Secret name with a single namespace fills an empty Secret Namespace.
function secretChosen() {
  fillNamespaceSuggestions();
  const name = $("#bi-secret").value.trim();
  const ns = $("#bi-secret-namespace");
  const nss = [...new Set(secrets.filter((s) => s.name === name).map((s) => s.namespace))];
  if (!ns.value.trim() && nss.length === 1) {
    ns.value = nss[0];
    clearFieldError(ns);
  }
}

function keyedEncryption() {
  return ["encrypt", "decrypt", "rekey"].includes($("#bi-encryption").value);
}

function showFields() {
  const src = $("#bi-source").value;
  for (const f of document.querySelectorAll("#create-form [data-for]")) {
    f.hidden = !f.dataset.for.split(" ").includes(src);
  }
  // Export from a volume needs Longhorn's engine (see #volume-note): nothing to submit.
  $("#create-ok").disabled = src === "volume";
  $("#create-ok").title = src === "volume" ? "bifs cannot export a Longhorn volume" : "";
  updateManifestPreview();
}

// Per-field messages under the field (as Longhorn's form items), cleared when it is edited.
function fieldErrorEl(input) {
  const id = `${input.id}-error`;
  let p = document.getElementById(id);
  if (!p) {
    p = el("p", { id, class: "field-error", hidden: true });
    input.closest(".field").append(p);
  }
  return p;
}
function setFieldError(input, msg) {
  const p = fieldErrorEl(input);
  p.textContent = msg;
  p.hidden = false;
  input.setAttribute("aria-invalid", "true");
  const ids = new Set((input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean));
  ids.add(p.id);
  input.setAttribute("aria-describedby", [...ids].join(" "));
}
function clearFieldError(input) {
  const p = document.getElementById(`${input.id}-error`);
  if (p) p.hidden = true;
  input.removeAttribute("aria-invalid");
}
function clearAllErrors() {
  for (const i of document.querySelectorAll("#create-form [aria-invalid]")) clearFieldError(i);
  createError("");
}

// longhorn-ui's rules: required fields with its messages, a file of whole 512-byte sectors.
function validateCreate() {
  const src = $("#bi-source").value;
  const errors = [];
  for (const input of document.querySelectorAll("#create-form [data-required], #create-form [data-required-keyed]")) {
    if (input.closest("[hidden]")) continue;
    if (input.hasAttribute("data-required-keyed") && !keyedEncryption()) continue;
    const empty = input.type === "file" ? !input.files.length : !input.value.trim();
    if (empty) errors.push([input, input.dataset.required || input.dataset.requiredKeyed]);
  }
  if (src === "upload" && $("#bi-file").files.length && $("#bi-file").files[0].size % SECTOR !== 0) {
    errors.push([$("#bi-file"), "Must be a multiple of 512 bytes"]);
  }
  const copies = $("#bi-min-copies");
  if (copies.value.trim() && !(Number.isInteger(Number(copies.value)) && Number(copies.value) >= 1)) {
    errors.push([copies, "Must be a whole number, at least 1"]);
  }
  for (const [input, msg] of errors) setFieldError(input, msg);
  if (errors.length) errors[0][0].focus();
  return errors.length === 0;
}

function createError(msg) {
  const p = $("#create-error");
  p.textContent = msg || "";
  p.hidden = !msg;
}

function openCreate(preset = {}) {
  const form = $("#create-form");
  form.reset();
  clearAllErrors();
  $("#upload-progress").hidden = true;
  $("#upload-text").textContent = "";
  $("#create-manifest").open = false;
  refreshCloneSources();
  fillSecretSuggestions();
  $("#bi-min-copies").value = DEFAULT_MIN_COPIES;
  if (preset.clone) {
    $("#bi-source").value = "clone";
    $("#bi-clone-source").value = preset.clone;
  }
  showFields();
  $("#create-dialog").showModal();
  $("#bi-name").focus();
}

function tagList(text) {
  return [...new Set(text.split(",").map((t) => t.trim()).filter(Boolean))];
}

// The spec the dialog stands for, as longhorn-ui's genDataFromType builds it.
function specFromForm() {
  const src = $("#bi-source").value;
  const spec = { sourceType: src === "volume" ? "export-from-volume" : src, sourceParameters: {} };
  const checksum = $("#bi-checksum").value.trim();
  if (src === "download") {
    spec.sourceParameters.url = $("#bi-url").value.trim();
    if (checksum) spec.checksum = checksum;
  } else if (src === "upload") {
    if (checksum) spec.checksum = checksum;
  } else if (src === "clone") {
    spec.sourceParameters["backing-image"] = $("#bi-clone-source").value;
    spec.sourceParameters.encryption = $("#bi-encryption").value;
    const secret = $("#bi-secret").value.trim();
    const ns = $("#bi-secret-namespace").value.trim();
    if (secret) spec.sourceParameters.secret = secret;
    if (ns) spec.sourceParameters["secret-namespace"] = ns;
  } else if (src === "volume") {
    spec.sourceParameters["volume-name"] = $("#bi-volume").value.trim();
    spec.sourceParameters["export-type"] = $("#bi-export-type").value;
  }
  const copies = Number($("#bi-min-copies").value);
  if (Number.isInteger(copies) && copies > 0) spec.minNumberOfCopies = copies;
  spec.dataEngine = $("#bi-data-engine").value;
  spec.nodeSelector = tagList($("#bi-node-tags").value);
  spec.diskSelector = tagList($("#bi-disk-tags").value);
  return spec;
}

function manifest(name, spec) {
  return { apiVersion: "longhorn.io/v1beta2", kind: "BackingImage", metadata: { name }, spec };
}

function updateManifestPreview() {
  const spec = specFromForm();
  let text = yaml(manifest($("#bi-name").value.trim(), spec));
  if (spec.sourceType === "upload") text += "\n# the upload stores the file's bytes in place, as they come";
  $("#create-manifest-text").textContent = text;
}

// Any edit: the edited field's message and the server's last answer go (they were about
// what the form held before).
function onCreateInput(ev) {
  if (ev.target.id) clearFieldError(ev.target);
  createError("");
  if (ev.target.id === "bi-encryption" && !keyedEncryption()) {
    clearFieldError($("#bi-secret"));
    clearFieldError($("#bi-secret-namespace"));
  }
  updateManifestPreview();
}

async function submitCreate(ev) {
  ev.preventDefault();
  if ($("#bi-source").value === "volume") return;
  clearAllErrors();
  if (!validateCreate()) return;
  const name = $("#bi-name").value.trim();
  const spec = specFromForm();
  $("#create-ok").disabled = true;
  try {
    if (spec.sourceType === "upload") {
      await upload(name, $("#bi-file").files[0], spec);
    } else {
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
    $("#create-ok").disabled = $("#bi-source").value === "volume";
  }
}

// Resumable: the upload's id is kept per file (image name, file name, size, last change);
// with it the upload resumes at the offset the server holds, without it it starts at 0 (the
// server refuses to continue another client's upload). The spec fields travel in the query
// (the bytes are the body).
const UPLOAD_IDS = "bifs-upload-ids";

function uploadKey(name, file) {
  return JSON.stringify([name, file.name, file.size, file.lastModified]);
}

function uploadIds() {
  try { return JSON.parse(localStorage.getItem(UPLOAD_IDS) || "{}") || {}; } catch (_) { return {}; }
}

function keepUploadId(key, id) {
  const ids = uploadIds();
  if (id) ids[key] = id; else delete ids[key];
  try { localStorage.setItem(UPLOAD_IDS, JSON.stringify(ids)); } catch (_) { /* private mode */ }
}

// 32 hex digits: crypto.randomUUID needs a secure context, the page may be plain http.
function newUploadId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function upload(name, file, spec) {
  const bar = $("#upload-progress");
  const text = $("#upload-text");
  bar.hidden = false;
  const path = `${API}/uploads/${encodeURIComponent(name)}`;
  const key = uploadKey(name, file);
  let id = uploadIds()[key];
  let offset = 0;
  if (id) {
    ({ offset } = await call(path));
    if (offset > file.size) offset = 0;
  }
  // Chosen before the first byte (and kept), so a first request that breaks off resumes too.
  if (offset === 0) id = newUploadId();
  keepUploadId(key, id);
  for (;;) {
    bar.value = file.size ? Math.floor((offset * 100) / file.size) : 0;
    text.textContent = `${human(offset)} of ${human(file.size)}`;
    const end = Math.min(offset + UPLOAD_CHUNK, file.size);
    const q = new URLSearchParams({ offset, size: file.size, upload: id });
    if (spec.checksum) q.set("checksum", spec.checksum);
    if (spec.minNumberOfCopies) q.set("minNumberOfCopies", spec.minNumberOfCopies);
    q.set("dataEngine", spec.dataEngine);
    q.set("nodeSelector", spec.nodeSelector.join(","));
    q.set("diskSelector", spec.diskSelector.join(","));
    let r;
    try {
      r = await call(`${path}?${q}`, { method: "PUT", body: file.slice(offset, end) });
    } catch (e) {
      if (e.status === 409 && e.body && typeof e.body.offset === "number") { offset = e.body.offset; continue; }
      // Another client's upload, or this one is gone: the next attempt starts again at 0.
      if (e.status === 409 || e.status === 422) keepUploadId(key, null);
      throw e;
    }
    if (r && r.complete === false) { offset = r.offset; continue; }
    keepUploadId(key, null);
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
  $("#create-form").addEventListener("input", onCreateInput);
  $("#create-form").addEventListener("change", onCreateInput);
  $("#bi-source").addEventListener("change", showFields);
  $("#bi-secret").addEventListener("change", secretChosen);
  $("#bi-secret").addEventListener("input", fillNamespaceSuggestions);
  $("#detail-close").addEventListener("click", () => $("#detail-dialog").close());
  $("#longhorn-close").addEventListener("click", () => $("#longhorn-dialog").close());
  $("#download-menu").addEventListener("keydown", menuKey);
  // The menu closes on a click elsewhere; it follows its button when the page scrolls.
  document.addEventListener("click", (ev) => {
    if (!menuFor) return;
    const btn = menuButtonOf(menuFor);
    if (!$("#download-menu").contains(ev.target) && !(btn && btn.contains(ev.target))) closeMenu(false);
  });
  window.addEventListener("resize", placeMenu);
  document.addEventListener("scroll", placeMenu, true);
  if (await loadSecrets()) {
    await loadNode();
    connect();
  }
});
