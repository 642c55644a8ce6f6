// The options page: API URL and key (with a connection test), threshold, pause, and the per-site list.
import {
  isLocalApi,
  normalizeSettings,
  normalizeSite,
  originPattern,
  readSettings,
  validApiUrl,
} from "./settings.js";

const $ = (id) => document.getElementById(id);
const form = $("settings-form");

function show(output, state, text) {
  output.dataset.state = state;
  output.textContent = text;
}

function markInvalid(input, message) {
  input.setAttribute("aria-invalid", "true");
  input.focus();
  show($("save-result"), "error", message);
}

async function load() {
  const settings = await readSettings();
  $("api-url").value = settings.apiUrl;
  $("api-key").value = settings.apiKey;
  $("threshold").value = settings.threshold ?? "";
  $("paused").checked = settings.paused;
  $("disabled-sites").value = settings.disabledSites.join("\n");
}

// The form's values, or null after pointing at the first invalid field.
function readForm() {
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const apiUrl = $("api-url").value.trim();
  if (!validApiUrl(apiUrl)) {
    markInvalid($("api-url"), "The API URL must be an http:// or https:// address.");
    return null;
  }
  const thresholdText = $("threshold").value.trim();
  const threshold = thresholdText === "" ? null : Number(thresholdText);
  if (threshold !== null && !Number.isFinite(threshold)) {
    markInvalid($("threshold"), "The threshold is a number, or empty.");
    return null;
  }
  const lines = $("disabled-sites").value.split(/[\n,]+/).map((line) => line.trim()).filter(Boolean);
  const bad = lines.find((line) => !normalizeSite(line));
  if (bad) {
    markInvalid($("disabled-sites"), `"${bad}" is not a host name.`);
    return null;
  }
  return normalizeSettings({
    apiUrl,
    apiKey: $("api-key").value,
    threshold,
    paused: $("paused").checked,
    disabledSites: lines,
  });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const values = readForm();
  if (!values) return;
  if (!isLocalApi(values.apiUrl)) {
    // Asked while the click still counts as a user gesture: the first thing after the synchronous checks.
    const pattern = originPattern(values.apiUrl);
    let granted = false;
    try {
      granted = await chrome.permissions.request({ origins: [pattern] });
    } catch (err) {
      show($("save-result"), "error", `Could not ask for access to ${pattern}: ${err.message}`);
      return;
    }
    if (!granted) {
      show($("save-result"), "error", `Not saved: the extension needs your permission to reach ${pattern}.`);
      return;
    }
  }
  await chrome.storage.local.set(values);
  show($("save-result"), "ok", "Saved.");
});

$("test-connection").addEventListener("click", async () => {
  const output = $("test-result");
  show(output, "unknown", "Testing…");
  const reply = await chrome.runtime.sendMessage({
    type: "test-connection",
    apiUrl: $("api-url").value,
    apiKey: $("api-key").value,
  });
  if (reply?.ok) {
    const me = reply.me;
    show(output, "ok", `Connected: tenant ${me.tenant}, key "${me.name}" (${me.id}), scopes ${me.scopes.join(", ")}.`);
  } else if (reply?.kind === "unreachable") {
    show(output, "unreachable", `Unreachable: ${reply.detail}`);
  } else {
    const status = reply?.status ? ` (HTTP ${reply.status})` : "";
    show(output, "error", `Problem: ${reply?.code || reply?.kind || "error"}${status}: ${reply?.detail || "no answer"}`);
  }
});

for (const input of form.querySelectorAll("input, textarea")) {
  input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
}

await load();
document.documentElement.dataset.loaded = "true";
