// The toolbar popup: the current page's summary, the API status, pause and "disable on this site".
import { normalizeSite, readSettings } from "./settings.js";

const $ = (id) => document.getElementById(id);

const STATUS_TEXT = {
  ok: "API: ok — connected",
  unreachable: "API: unreachable",
  unauthorized: "API: unauthorized — check the key in the settings",
  paused: "API: paused — nothing is sent",
  unknown: "API: not checked yet",
};

let tabId = null;
let site = "";

async function currentTabId() {
  const fromQuery = new URLSearchParams(location.search).get("tab"); // popup.html?tab=ID (tests, debugging)
  if (fromQuery !== null) return Number(fromQuery);
  const [tab] = await chrome.tabs.query({ active: true, currentWindow: true });
  return tab ? tab.id : -1;
}

async function refresh(probe = false) {
  const summary = await chrome.runtime.sendMessage({ type: "summary", tabId, probe });
  if (!summary || summary.error) return;
  site = summary.site;
  $("site").textContent = site || "This page cannot be scanned.";
  $("scanned").textContent = summary.scanned;
  $("flagged").textContent = summary.flagged;
  $("errors").textContent = summary.errors;
  $("pending").textContent = summary.pending;
  $("false-flags").textContent = summary.falseFlags;
  showRefusals(summary.refusals || []);
  const status = $("api-status");
  const state = summary.api.state;
  status.dataset.state = state;
  const detail = summary.api.detail && state !== "ok" ? ` (${summary.api.detail})` : "";
  const text = `${STATUS_TEXT[state] || `API: ${state}`}${detail}`;
  if (status.textContent !== text) status.textContent = text;
  $("paused").checked = summary.paused;
  $("site-disabled").checked = summary.siteDisabled;
  $("site-disabled").disabled = !site;
}

$("paused").addEventListener("change", async (event) => {
  await chrome.storage.local.set({ paused: event.target.checked });
  await refresh(true);
});

$("site-disabled").addEventListener("change", async (event) => {
  const host = normalizeSite(site);
  if (!host) return;
  const { disabledSites } = await readSettings();
  const next = event.target.checked
    ? [...new Set([...disabledSites, host])]
    : disabledSites.filter((s) => s !== host && !host.endsWith(`.${s}`));
  await chrome.storage.local.set({ disabledSites: next });
  await refresh();
});

// Each reason an image was not scanned, with how many: the count alone explains nothing.
function showRefusals(refusals) {
  const list = $("refusals");
  const lines = refusals.map((r) => `${r.count} × ${r.code}${r.message ? `: ${r.message}` : ""}`);
  if (lines.join("\n") === [...list.children].map((li) => li.textContent).join("\n")) return;
  list.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
}

$("open-options").addEventListener("click", () => chrome.runtime.openOptionsPage());
$("open-dashboard").addEventListener("click", async () => {
  const { apiUrl } = await readSettings();
  await chrome.tabs.create({ url: `${apiUrl}/dashboard` });
});

tabId = await currentTabId();
await refresh(true);
let ticks = 0;
setInterval(() => {
  ticks += 1;
  refresh(ticks % 10 === 0).catch(() => {}); // counts every second, the API itself every ten
}, 1000);
