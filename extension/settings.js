// Settings shared by the service worker, the popup and the options page (all trusted extension contexts).
// They live in chrome.storage.local, which the service worker closes to content scripts, so the API key
// never reaches a page or a content script.

export const DEFAULTS = Object.freeze({
  apiUrl: "http://127.0.0.1:8080", // `scanner serve` in embedded mode
  apiKey: "",
  threshold: null, // null: the server's calibrated `flagged`; a number: flag when the combined score >= it
  paused: false,
  disabledSites: [], // host names; a listed host also covers its subdomains
});

// Hosts granted in the manifest's host_permissions; any other API origin is requested at set-up.
const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost"]);

export async function readSettings() {
  const stored = await chrome.storage.local.get(Object.keys(DEFAULTS));
  return normalizeSettings({ ...DEFAULTS, ...stored });
}

export function normalizeSettings(raw) {
  const threshold = raw.threshold === "" || raw.threshold == null ? null : Number(raw.threshold);
  return {
    apiUrl: String(raw.apiUrl || DEFAULTS.apiUrl).trim().replace(/\/+$/, ""),
    apiKey: String(raw.apiKey || "").trim(),
    threshold: Number.isFinite(threshold) ? threshold : null,
    paused: Boolean(raw.paused),
    disabledSites: Array.isArray(raw.disabledSites)
      ? [...new Set(raw.disabledSites.map(normalizeSite).filter(Boolean))]
      : [],
  };
}

// "https://Shop.Example/path" or "shop.example" -> "shop.example"; null when it is not a host.
export function normalizeSite(text) {
  const value = String(text || "").trim().toLowerCase();
  if (!value) return null;
  try {
    const host = new URL(value.includes("://") ? value : `http://${value}`).hostname;
    return host || null;
  } catch {
    return null;
  }
}

// The site (host name) of an http(s) page; null for anything else.
export function siteOf(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.hostname.toLowerCase() : null;
  } catch {
    return null;
  }
}

export function isSiteDisabled(settings, pageUrl) {
  const site = siteOf(pageUrl);
  return site !== null && settings.disabledSites.some((s) => site === s || site.endsWith(`.${s}`));
}

// A usable API URL: absolute http(s), no credentials, query or fragment.
export function validApiUrl(text) {
  try {
    const url = new URL(String(text).trim());
    return (url.protocol === "http:" || url.protocol === "https:") && !url.username && !url.password && !url.search
      && !url.hash;
  } catch {
    return false;
  }
}

export function isLocalApi(apiUrl) {
  try {
    const url = new URL(apiUrl);
    return url.protocol === "http:" && LOCAL_HOSTS.has(url.hostname);
  } catch {
    return false;
  }
}

// The optional host permission that covers an API URL (every port of its host).
export function originPattern(apiUrl) {
  const url = new URL(apiUrl);
  return `${url.protocol}//${url.hostname}/*`;
}

// Flagged under the user's threshold override when there is one, else the server's calibrated decision.
export function isFlagged(verdict, threshold) {
  if (!verdict) return false;
  if (threshold != null && typeof verdict.score === "number") return verdict.score >= threshold;
  return verdict.flagged === true;
}
