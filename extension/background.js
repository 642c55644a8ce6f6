// The service worker: the only part of the extension that talks to the scanner API and holds the key.
//
// Content scripts send the URLs (or, for blob:/data: images, the bytes) of the visible images of their page;
// this worker batches them from all tabs into POST /v1/scans, follows queued scans with GET /v1/scans/{id},
// caches verdicts by image URL, and sends each tab the verdicts of its images.

import {
  isFlagged,
  isSiteDisabled,
  readSettings,
  siteOf,
  validApiUrl,
} from "./settings.js";

const MAX_BATCH = 32; // image URLs per request
const FLUSH_MS = 200; // a batch leaves at most this long after its first image
const MAX_BATCH_BYTES = 8 * 1024 * 1024; // uploaded bytes per multipart request
const MAX_IMAGE_BYTES = 16 * 1024 * 1024; // the server's default cap on one image
const POLL_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 10000];
const POLL_LIMIT_MS = 120_000;
const RETRIES = 4; // after the first attempt: 0.5 s, 1 s, 2 s, 4 s (or what Retry-After says)
const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 30_000;
const REQUEST_TIMEOUT_MS = 30_000;
const PROBE_TIMEOUT_MS = 4000;
const CACHE_MAX = 500; // verdicts kept in memory and in chrome.storage.session
const CACHE_KEY = "verdictCache";
const MENU_ID = "scan-image";
const SHA256 = /^[0-9a-f]{64}$/i;
// The server refuses to fetch a URL it may not or cannot reach: a loopback, private or development site, a port
// other than 80/443, a host only this browser resolves, an image behind the visitor's login.  The browser can
// read the image (it is on the page, and the extension has host access), so it sends the bytes instead.
const SEND_BYTES_ON = new Set(["blocked_address", "blocked_port", "dns_failure", "connection_failed", "http_status"]);

// --- errors this worker did not catch (a test reads them; nothing should ever land here) --------------------

const uncaught = [];
self.addEventListener("error", (event) => uncaught.push(String(event.message || event.error)));
self.addEventListener("unhandledrejection", (event) => uncaught.push(String(event.reason)));

function report(err) {
  console.error("robust-scanner:", err);
}

// --- settings -------------------------------------------------------------------------------------------------

let settingsPromise = null;

function settings() {
  settingsPromise ??= readSettings();
  return settingsPromise;
}

// Content scripts must not read chrome.storage.local (it holds the key); the pages never can.
if (chrome.storage.local.setAccessLevel) {
  chrome.storage.local.setAccessLevel({ accessLevel: "TRUSTED_CONTEXTS" }).catch(report);
}

chrome.storage.onChanged.addListener((changes, area) => {
  if (area !== "local") return;
  settingsPromise = null;
  if (changes.apiUrl || changes.apiKey) {
    apiStatus = { state: "unknown", detail: "", at: 0 };
  }
  if (changes.apiUrl) {
    cache.clear();
    saveCacheSoon();
  }
  if (changes.paused || changes.disabledSites) {
    broadcast({ type: "settings-changed" });
  }
  if (changes.threshold) {
    redeliverAll().catch(report);
  }
});

async function broadcast(message) {
  const tabs = await chrome.tabs.query({});
  await Promise.all(tabs.map((tab) => chrome.tabs.sendMessage(tab.id, message).catch(() => {})));
}

// A tab's page may scan when scanning is not paused, the site is not disabled and the page is http(s).
function pageAllowed(current, pageUrl) {
  if (current.paused) return { allowed: false, reason: "paused" };
  if (!siteOf(pageUrl)) return { allowed: false, reason: "unsupported_page" };
  if (isSiteDisabled(current, pageUrl)) return { allowed: false, reason: "site_disabled" };
  return { allowed: true, reason: "" };
}

// --- API status (for the popup) -------------------------------------------------------------------------------

let apiStatus = { state: "unknown", detail: "", at: 0 };

function setApiStatus(state, detail = "") {
  apiStatus = { state, detail, at: Date.now() };
}

async function currentStatus(probe) {
  const current = await settings();
  if (current.paused) return { state: "paused", detail: "Scanning is paused." };
  if (!current.apiKey) return { state: "unauthorized", detail: "No API key: set one in the options." };
  if (probe) {
    try {
      await apiFetch(current, "/v1/me", {}, { retries: 0, timeoutMs: PROBE_TIMEOUT_MS });
    } catch {
      // apiFetch has set the status
    }
  }
  return { state: apiStatus.state, detail: apiStatus.detail };
}

// --- the API client -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(kind, status, problem, message) {
    super(message);
    this.kind = kind; // "unreachable" | "unauthorized" | "rate_limited" | "server_error" | "problem"
    this.status = status;
    this.problem = problem;
  }

  // The problem document's code when the API sent one, else the kind.
  get code() {
    return this.problem?.code || (this.kind === "problem" ? `http_${this.status}` : this.kind);
  }

  // Nothing was learnt about the images: they may be asked for again later.
  get retryable() {
    return this.kind !== "problem";
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoff(attempt) {
  const base = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt);
  return base * (0.8 + Math.random() * 0.4);
}

function retryAfterMs(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.min(60_000, Math.max(0, seconds * 1000));
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.min(60_000, Math.max(0, date - Date.now()));
}

async function readProblem(response) {
  try {
    const body = await response.json();
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON
  }
  return { code: `http_${response.status}`, detail: response.statusText || "", status: response.status };
}

// One API call with polite retries: 429 (after Retry-After), 5xx and network errors with exponential back-off.
// 401/403 and other 4xx are not retried.  Keeps apiStatus up to date (unless `track` is false: the options
// page's test of settings that are not saved yet).
async function apiFetch(connection, path, init = {}, options = {}) {
  const { retries = RETRIES, timeoutMs = REQUEST_TIMEOUT_MS, track = true } = options;
  const setStatus = track ? setApiStatus : () => {};
  const base = connection.apiUrl.replace(/\/+$/, "");
  const headers = new Headers(init.headers || {});
  headers.set("Accept", "application/json");
  if (connection.apiKey) headers.set("Authorization", `Bearer ${connection.apiKey}`);
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(`${base}${path}`, {
        ...init,
        headers,
        credentials: "omit",
        cache: "no-store",
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const detail = `Cannot reach ${base}: ${err.name === "TimeoutError" ? "no answer" : err.message}`;
      setStatus("unreachable", attempt < retries ? `${detail} (retrying)` : detail);
      if (attempt < retries) {
        await sleep(backoff(attempt));
        continue;
      }
      throw new ApiError("unreachable", 0, null, detail);
    }
    if (response.status === 429 || response.status >= 500) {
      if (attempt < retries) {
        await response.body?.cancel().catch(() => {});
        await sleep(retryAfterMs(response) ?? backoff(attempt));
        continue;
      }
      const problem = await readProblem(response);
      const kind = response.status === 429 ? "rate_limited" : "server_error";
      const detail = `${problem.code || kind}: ${problem.detail || `HTTP ${response.status}`}`;
      if (kind === "server_error") setStatus("unreachable", `The API answers with errors: ${detail}`);
      throw new ApiError(kind, response.status, problem, detail);
    }
    if (response.status === 401 || response.status === 403) {
      const problem = await readProblem(response);
      const detail = `${problem.code}: ${problem.detail}`;
      setStatus("unauthorized", detail);
      throw new ApiError("unauthorized", response.status, problem, detail);
    }
    setStatus("ok");
    if (!response.ok) {
      const problem = await readProblem(response);
      throw new ApiError("problem", response.status, problem, `${problem.code}: ${problem.detail}`);
    }
    return response;
  }
}

// --- the verdict cache: image URL -> result, in memory and in chrome.storage.session -------------------------

const cache = new Map(); // insertion order = age; hits are moved to the end
let cacheLoaded = null;
let cacheSaveTimer = null;

function loadCache() {
  cacheLoaded ??= chrome.storage.session
    .get(CACHE_KEY)
    .then((stored) => {
      for (const [url, result] of stored[CACHE_KEY] || []) {
        if (!cache.has(url)) cache.set(url, result);
      }
    })
    .catch(report);
  return cacheLoaded;
}

function cacheGet(url) {
  const hit = cache.get(url);
  if (hit) {
    cache.delete(url);
    cache.set(url, hit);
  }
  return hit;
}

function cachePut(url, result) {
  cache.delete(url);
  cache.set(url, result);
  while (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value);
  saveCacheSoon();
}

function saveCacheSoon() {
  clearTimeout(cacheSaveTimer);
  cacheSaveTimer = setTimeout(() => {
    chrome.storage.session.set({ [CACHE_KEY]: [...cache.entries()] }).catch(report);
  }, 500);
}

// --- per-tab summaries (for the popup) --------------------------------------------------------------------------

// tabId -> {pageUrl, site, images: Map(url -> "pending"|"done"|"failed"), flagged: Set(url), results: Map(url -> result)}
const tabs = new Map();

function tabRecord(tabId, pageUrl) {
  let record = tabs.get(tabId);
  if (!record || (pageUrl && record.pageUrl !== pageUrl)) {
    const site = siteOf(pageUrl) || "";
    record = { pageUrl: pageUrl || "", site, images: new Map(), flagged: new Set(), results: new Map() };
    tabs.set(tabId, record);
  }
  return record;
}

chrome.tabs.onRemoved.addListener((tabId) => tabs.delete(tabId));

async function tabUrl(tabId) {
  try {
    return (await chrome.tabs.get(tabId)).url || "";
  } catch {
    return ""; // no such tab, or a page the extension may not see
  }
}

async function summary(tabId, probe) {
  const current = await settings();
  const record = tabs.get(tabId);
  const pageUrl = record?.pageUrl || (await tabUrl(tabId));
  const counts = { scanned: 0, pending: 0, errors: 0 };
  for (const state of record?.images.values() || []) {
    if (state === "done") counts.scanned += 1;
    else if (state === "failed") counts.errors += 1;
    else counts.pending += 1;
  }
  const known = [...(record?.results.values() || [])];
  return {
    pageUrl,
    site: siteOf(pageUrl) || "",
    ...counts,
    flagged: record?.flagged.size || 0,
    falseFlags: known.filter((result) => result.falseFlag).length,
    refusals: refusalsOf(known),
    paused: current.paused,
    siteDisabled: isSiteDisabled(current, pageUrl),
    threshold: current.threshold,
    api: await currentStatus(probe),
  };
}

// Every refusal of the page, counted by reason, for the popup: "Errors 10" alone explains nothing.
function refusalsOf(results) {
  const byCode = new Map();
  for (const result of results) {
    if (result.state !== "failed") continue;
    const code = result.error?.code || "error";
    const entry = byCode.get(code) || { code, message: result.error?.message || "", count: 0, example: result.url };
    entry.count += 1;
    byCode.set(code, entry);
  }
  return [...byCode.values()].sort((a, b) => b.count - a.count);
}

// --- batching ---------------------------------------------------------------------------------------------------

// In flight: url -> {url, bytes, mime, pageUrl, waiters: Map("tab:frame" -> {tabId, frameId})}
const inflight = new Map();
let queue = []; // entries waiting for the next flush
let flushTimer = null;

function waiterKey(tabId, frameId) {
  return `${tabId}:${frameId}`;
}

function validItem(item) {
  if (!item || typeof item.url !== "string" || item.url.length > 65536) return false;
  if (/^https?:/i.test(item.url)) return item.url.length <= 4096;
  // blob: and data: images cannot be fetched by the server: the content script sends their bytes.
  return /^(blob|data):/i.test(item.url) && typeof item.bytes === "string"
    && item.bytes.length <= Math.ceil(MAX_IMAGE_BYTES / 3) * 4;
}

async function enqueue(items, tabId, frameId, pageUrl, immediate) {
  await loadCache();
  const current = await settings();
  const record = tabRecord(tabId, pageUrl);
  const hits = [];
  for (const item of items) {
    if (!validItem(item)) continue;
    const url = item.url;
    record.images.set(url, record.images.get(url) === "done" ? "done" : "pending");
    const cached = /^https?:/i.test(url) ? cacheGet(url) : null;
    if (cached) {
      hits.push(cached);
      continue;
    }
    const key = waiterKey(tabId, frameId);
    const running = inflight.get(url);
    if (running) {
      running.waiters.set(key, { tabId, frameId });
      continue;
    }
    const entry = {
      url,
      bytes: item.bytes || null,
      mime: typeof item.mime === "string" ? item.mime : "",
      pageUrl,
      waiters: new Map([[key, { tabId, frameId }]]),
      settled: false,
    };
    inflight.set(url, entry);
    queue.push(entry);
  }
  if (hits.length) deliver(hits, [{ tabId, frameId }], current);
  if (queue.length >= MAX_BATCH || (immediate && queue.length)) {
    flush();
  } else if (queue.length && flushTimer === null) {
    flushTimer = setTimeout(flush, FLUSH_MS);
  }
}

function flush() {
  clearTimeout(flushTimer);
  flushTimer = null;
  const entries = queue;
  queue = [];
  const byPage = new Map();
  for (const entry of entries) {
    if (!byPage.has(entry.pageUrl)) byPage.set(entry.pageUrl, []);
    byPage.get(entry.pageUrl).push(entry);
  }
  for (const [pageUrl, group] of byPage) {
    const urls = group.filter((entry) => !entry.bytes);
    const uploads = group.filter((entry) => entry.bytes);
    for (let i = 0; i < urls.length; i += MAX_BATCH) {
      submit(pageUrl, urls.slice(i, i + MAX_BATCH)).catch(report);
    }
    let chunk = [];
    let size = 0;
    for (const entry of uploads) {
      if (chunk.length && (chunk.length >= MAX_BATCH || size + entry.bytes.length > MAX_BATCH_BYTES)) {
        submit(pageUrl, chunk).catch(report);
        chunk = [];
        size = 0;
      }
      chunk.push(entry);
      size += entry.bytes.length;
    }
    if (chunk.length) submit(pageUrl, chunk).catch(report);
  }
}

function decodeBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function extensionFor(mime) {
  const known = { "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "image/avif": ".avif" };
  return known[mime] || "";
}

function scanRequest(pageUrl, entries) {
  const page = siteOf(pageUrl) ? pageUrl : null;
  if (!entries[0].bytes) {
    return {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ page_url: page, image_urls: entries.map((e) => e.url), source: "extension" }),
    };
  }
  const form = new FormData();
  if (page) form.append("page_url", page);
  form.append("source", "extension");
  // Where each uploaded file came from: the page's URL for bytes read instead of a refused fetch; null for
  // blob:/data: URLs, which name nothing outside this page.
  form.append("image_urls", JSON.stringify(entries.map((entry) => (entry.fromUrl ? entry.url : null))));
  entries.forEach((entry, i) => {
    const mime = entry.mime || "application/octet-stream";
    form.append("image", new Blob([decodeBase64(entry.bytes)], { type: mime }), `image-${i}${extensionFor(mime)}`);
  });
  return { method: "POST", body: form };
}

async function submit(pageUrl, entries) {
  const current = await settings();
  if (!pageAllowed(current, pageUrl).allowed) {
    // Paused (or the site disabled) between the content script's check and now: send nothing.
    settle(entries, entries.map(() => failure("paused", "Scanning is paused.")), current);
    return;
  }
  let scan;
  try {
    scan = await (await apiFetch(current, "/v1/scans", scanRequest(pageUrl, entries))).json();
  } catch (err) {
    settle(entries, entries.map(() => failureOf(err)), current);
    return;
  }
  settleScan(scan, entries, current);
  const started = Date.now();
  for (let poll = 0; scan.status !== "done"; poll += 1) {
    if (Date.now() - started > POLL_LIMIT_MS) {
      const open = entries.filter((entry) => !entry.settled);
      settle(open, open.map(() => failure("timeout", "No verdict after two minutes.")), current);
      return;
    }
    await sleep(POLL_DELAYS_MS[Math.min(poll, POLL_DELAYS_MS.length - 1)]);
    chrome.runtime.getPlatformInfo().catch(() => {}); // an extension call keeps the worker alive while polling
    try {
      scan = await (await apiFetch(current, `/v1/scans/${encodeURIComponent(scan.id)}`)).json();
    } catch (err) {
      if (err instanceof ApiError && (err.kind === "unreachable" || err.kind === "server_error")) continue;
      const open = entries.filter((entry) => !entry.settled);
      settle(open, open.map(() => failureOf(err)), current);
      return;
    }
    settleScan(scan, entries, await settings());
  }
}

function failure(code, message, retryable = true) {
  return { state: "failed", error: { code, message }, retryable };
}

function failureOf(err) {
  return err instanceof ApiError ? failure(err.code, err.message, err.retryable) : failure("error", String(err));
}

function settleScan(scan, entries, current) {
  const done = [];
  const results = [];
  (scan.items || []).forEach((item, index) => {
    const entry = entries[Number.isInteger(item.position) ? item.position : index];
    if (!entry || entry.settled || item.state === "pending") return;
    if (item.state === "failed" && SEND_BYTES_ON.has(item.error?.code) && !entry.bytes) {
      entry.settled = true; // this scan is done with it; the upload takes over (and settles it)
      resendAsBytes(entry, item.error).catch(report);
      return;
    }
    const verdict = item.verdict
      ? {
        label: item.verdict.label,
        confidence: item.verdict.confidence,
        score: item.verdict.score,
        threshold: item.verdict.threshold,
        flagged: item.verdict.flagged,
        scores: item.verdict.scores || {},
      }
      : null;
    done.push(entry);
    results.push({
      state: item.state,
      sha256: item.sha256 || null,
      verdict,
      error: item.error || null,
      retryable: false,
      scanId: scan.id,
      falseFlag: Boolean(item.false_flag),
    });
  });
  settle(done, results, current);
}

async function resendAsBytes(entry, refusal) {
  let image;
  try {
    image = await readImage(entry.url);
  } catch (err) {
    const message = `${refusal.message || refusal.code}; the extension could not read the image either: ${err.message}`;
    settle([entry], [failure(refusal.code, message, false)], await settings());
    return;
  }
  const upload = { ...entry, bytes: image.bytes, mime: image.mime, fromUrl: true, settled: false };
  inflight.set(entry.url, upload);
  queue.push(upload);
  if (flushTimer === null) flushTimer = setTimeout(flush, FLUSH_MS);
}

// The image as this browser gets it (with the visitor's cookies, as the page did), base64-encoded.
async function readImage(url) {
  const response = await fetch(url, { credentials: "include", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const buffer = await response.arrayBuffer();
  if (!buffer.byteLength || buffer.byteLength > MAX_IMAGE_BYTES) throw new Error("no usable image bytes");
  return { bytes: encodeBase64(new Uint8Array(buffer)), mime: response.headers.get("Content-Type") || "" };
}

function encodeBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function settle(entries, results, current) {
  const byWaiter = new Map();
  entries.forEach((entry, i) => {
    const result = { ...results[i], url: entry.url };
    entry.settled = true;
    if (inflight.get(entry.url) === entry) inflight.delete(entry.url);
    if (result.state === "done" && /^https?:/i.test(entry.url)) cachePut(entry.url, result);
    for (const [key, waiter] of entry.waiters) {
      if (!byWaiter.has(key)) byWaiter.set(key, { waiter, results: [] });
      byWaiter.get(key).results.push(result);
    }
  });
  for (const { waiter, results: list } of byWaiter.values()) deliver(list, [waiter], current);
}

// Sends verdicts to the tabs that asked, with `flagged` decided under the current threshold.
function deliver(results, waiters, current) {
  const shaped = results.map((result) => ({
    ...result,
    // A flag this tenant called false is shown as such, never as a flag again.
    flagged: result.state === "done" && !result.falseFlag && isFlagged(result.verdict, current.threshold),
    thresholdOverride: current.threshold,
  }));
  for (const { tabId, frameId } of waiters) {
    const record = tabs.get(tabId);
    if (record) {
      for (const result of shaped) {
        if (result.retryable) {
          record.images.delete(result.url);
        } else {
          record.images.set(result.url, result.state);
          record.results.set(result.url, result);
        }
        if (result.flagged) record.flagged.add(result.url);
        else record.flagged.delete(result.url);
      }
    }
    if (tabId < 0) continue;
    if (record) showCount(tabId, record);
    chrome.tabs.sendMessage(tabId, { type: "verdicts", results: shaped }, { frameId }).catch(() => {});
  }
}

// The toolbar icon counts the tab's flagged images (red) or, with none, its refused ones (grey).
function showCount(tabId, record) {
  const refused = [...record.images.values()].filter((state) => state === "failed").length;
  const text = record.flagged.size ? String(record.flagged.size) : refused ? String(refused) : "";
  const color = record.flagged.size ? "#b3261e" : "#5f6368";
  chrome.action.setBadgeText({ tabId, text }).catch(() => {});
  chrome.action.setBadgeBackgroundColor({ tabId, color }).catch(() => {});
}

// The threshold changed: every tab gets its known verdicts again, decided under the new threshold.
async function redeliverAll() {
  const current = await settings();
  for (const [tabId, record] of tabs) {
    const known = [...record.results.values()];
    if (known.length) deliver(known, [{ tabId, frameId: 0 }], current);
  }
}

// --- feedback ---------------------------------------------------------------------------------------------------

async function sendFeedback(sha256, pageUrl) {
  if (!SHA256.test(String(sha256))) return { ok: false, message: "Not an image this extension scanned." };
  const current = await settings();
  try {
    const response = await apiFetch(current, `/v1/images/${sha256.toLowerCase()}/feedback`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "false_flag", page_url: siteOf(pageUrl) ? pageUrl : null }),
    }, { retries: 2 });
    const body = await response.json();
    await markFalseFlag(sha256.toLowerCase());
    return { ok: true, id: body.id };
  } catch (err) {
    return { ok: false, message: err.message };
  }
}

// The cache and every tab learn the false flag at once: a reload must not bring the flag back.
async function markFalseFlag(sha256) {
  for (const [url, result] of cache) {
    if (result.sha256 === sha256) cache.set(url, { ...result, falseFlag: true });
  }
  saveCacheSoon();
  const current = await settings();
  for (const [tabId, record] of tabs) {
    const changed = [...record.results.values()].filter((result) => result.sha256 === sha256);
    if (changed.length) deliver(changed.map((result) => ({ ...result, falseFlag: true })), [{ tabId, frameId: 0 }], current);
  }
}

// --- the options page's connection test --------------------------------------------------------------------

async function testConnection(apiUrl, apiKey) {
  if (!validApiUrl(apiUrl)) return { ok: false, kind: "invalid", detail: "The API URL must be an http(s) URL." };
  const connection = { apiUrl: String(apiUrl).trim(), apiKey: String(apiKey || "").trim() };
  try {
    const probe = { retries: 0, timeoutMs: PROBE_TIMEOUT_MS, track: false };
    const health = await (await apiFetch({ ...connection, apiKey: "" }, "/healthz", {}, probe)).json();
    if (!connection.apiKey) {
      return { ok: false, kind: "unauthorized", code: "missing_key", detail: "The API answers; now set a key.", health };
    }
    const me = await (await apiFetch(connection, "/v1/me", {}, probe)).json();
    return { ok: true, me, health };
  } catch (err) {
    if (err instanceof ApiError) {
      return { ok: false, kind: err.kind, status: err.status, code: err.code, detail: err.problem?.detail || err.message };
    }
    return { ok: false, kind: "error", detail: String(err) };
  }
}

// --- the context menu --------------------------------------------------------------------------------------

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.removeAll(() => {
    chrome.contextMenus.create({ id: MENU_ID, title: "Scan this image", contexts: ["image"] }, () => {
      if (chrome.runtime.lastError) report(chrome.runtime.lastError.message);
    });
  });
});

chrome.contextMenus.onClicked.addListener((info, tab) => {
  if (info.menuItemId === MENU_ID) scanFromMenu(info, tab).catch(report);
});

// "Scan this image": the content script of the frame finds the image (reading blob: bytes itself) and asks
// for it at once; without a content script (a page loaded before the extension) the URL goes straight out.
async function scanFromMenu(info, tab) {
  const tabId = tab?.id ?? -1;
  const frameId = info.frameId ?? 0;
  const pageUrl = info.pageUrl || tab?.url || "";
  const srcUrl = info.srcUrl || "";
  const verdict = pageAllowed(await settings(), pageUrl);
  if (!verdict.allowed) {
    const text = verdict.reason === "paused"
      ? "Image scanning is paused. Resume it from the toolbar button."
      : "Image scanning is off on this page.";
    if (tabId >= 0) await chrome.tabs.sendMessage(tabId, { type: "notice", text }, { frameId }).catch(() => {});
    return { ok: false, reason: verdict.reason };
  }
  if (tabId >= 0) {
    const reply = await chrome.tabs.sendMessage(tabId, { type: "scan-now", url: srcUrl }, { frameId })
      .catch(() => null);
    if (reply?.ok) return { ok: true };
  }
  if (!/^https?:/i.test(srcUrl)) return { ok: false, reason: "unreachable_image" };
  await enqueue([{ url: srcUrl }], tabId, frameId, pageUrl, true);
  return { ok: true };
}

// --- messages -----------------------------------------------------------------------------------------------

const EXTENSION_ORIGIN = chrome.runtime.getURL("");

function fromExtensionPage(sender) {
  return sender.id === chrome.runtime.id && typeof sender.url === "string" && sender.url.startsWith(EXTENSION_ORIGIN);
}

function fromContentScript(sender) {
  return sender.id === chrome.runtime.id && sender.tab && typeof sender.url === "string"
    && !sender.url.startsWith(EXTENSION_ORIGIN);
}

async function handleContent(message, sender) {
  const tabId = sender.tab.id;
  const frameId = sender.frameId ?? 0;
  const pageUrl = frameId === 0 ? sender.url : sender.tab.url || sender.url;
  const current = await settings();
  const verdict = pageAllowed(current, pageUrl);
  switch (message.type) {
    case "page-state":
      if (message.initial && frameId === 0) tabs.delete(tabId);
      if (verdict.allowed) tabRecord(tabId, pageUrl);
      return { active: verdict.allowed, reason: verdict.reason };
    case "scan":
      // The double check: the content script asks only when active, but settings may just have changed.
      if (!verdict.allowed || !Array.isArray(message.items)) return { accepted: false, active: verdict.allowed };
      await enqueue(message.items.slice(0, 256), tabId, frameId, pageUrl, Boolean(message.immediate));
      return { accepted: true, active: true };
    case "feedback":
      return sendFeedback(message.sha256, pageUrl);
    default:
      return { error: "unknown message" };
  }
}

async function handleExtensionPage(message) {
  switch (message.type) {
    case "summary":
      return summary(Number(message.tabId), Boolean(message.probe));
    case "status":
      return currentStatus(Boolean(message.probe));
    case "test-connection":
      return testConnection(message.apiUrl, message.apiKey);
    default:
      return { error: "unknown message" };
  }
}

chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
  if (!message || typeof message.type !== "string") return false;
  let work;
  if (fromExtensionPage(sender)) work = handleExtensionPage(message);
  else if (fromContentScript(sender)) work = handleContent(message, sender);
  else return false;
  work.then(sendResponse, (err) => {
    report(err);
    sendResponse({ error: String(err) });
  });
  return true;
});

// For debugging from the service worker's console (and for the tests): no secrets in here.
globalThis.robustScanner = {
  summary,
  status: currentStatus,
  scanFromMenu,
  uncaught,
  cacheSize: () => cache.size,
};
