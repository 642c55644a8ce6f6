// The content script: finds the images a person sees, asks the service worker for their verdicts, and draws a
// badge over each flagged one.  It never talks to the API itself and never sees the API key.  Clean images are
// left untouched: no attribute, class or wrapper is ever added to a page's own elements.
(() => {
  "use strict";

  const MIN_SIZE = 50; // rendered CSS pixels, both sides
  const DEBOUNCE_MS = 150;
  const MAX_WAIT_MS = 1000; // a page that keeps mutating still sends its batch
  const MAX_BYTES = 16 * 1024 * 1024;
  const ANSWER_WAIT_MS = 150_000; // a request unanswered this long (the service worker restarted) may be repeated
  const BADGE_TAG = "robust-scanner-badge";
  const NOTICE_TAG = "robust-scanner-notice";

  let active = false; // the service worker says this page may be scanned (not paused, site not disabled)
  const visible = new WeakSet(); // images intersecting the viewport, per the IntersectionObserver
  const urlOf = new WeakMap(); // image -> the URL it was last matched under
  const imagesByUrl = new Map(); // url -> Set of images showing it
  const results = new Map(); // url -> the service worker's result
  const requested = new Map(); // url -> when it was sent; not answered yet
  const aliases = new Map(); // short stand-in sent for a long data: URL -> the URL
  let aliasCount = 0;
  const explicit = new Set(); // urls scanned with "Scan this image": their result is shown even when clean
  const badges = new Map(); // image -> badge
  let pending = new Map(); // url -> item, waiting for the debounce
  let debounceTimer = null;
  let firstPendingAt = 0;

  const isImage = (node) => node instanceof HTMLImageElement;
  const inPageBytes = (url) => /^(blob|data):/i.test(url);

  async function ask(message) {
    try {
      return await chrome.runtime.sendMessage(message);
    } catch {
      return null; // the extension was reloaded or removed: this script is an orphan and stays quiet
    }
  }

  // --- finding images --------------------------------------------------------------------------------------

  const intersection = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        visible.add(entry.target);
        evaluate(entry.target);
      } else {
        visible.delete(entry.target);
      }
    }
  });

  function collect(node) {
    if (node.nodeType !== Node.ELEMENT_NODE || node.localName === BADGE_TAG || node.localName === NOTICE_TAG) return;
    if (isImage(node)) intersection.observe(node);
    else for (const img of node.querySelectorAll("img")) intersection.observe(img);
  }

  const mutations = new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === "childList") {
        record.addedNodes.forEach(collect);
        if (record.removedNodes.length && badges.size) scheduleReposition();
      } else if (isImage(record.target)) {
        intersection.observe(record.target);
        evaluate(record.target); // when already loaded; otherwise its load event comes back here
      } else if (record.target.localName === "source" && record.target.parentElement?.localName === "picture") {
        for (const img of record.target.parentElement.querySelectorAll("img")) evaluate(img);
      }
    }
    if (badges.size) scheduleReposition();
  });

  // A new src/srcset (lazy loading, responsive images) is judged once the image has loaded.
  document.addEventListener("load", (event) => {
    if (isImage(event.target)) evaluate(event.target);
  }, true);

  function evaluate(img) {
    if (!active || !visible.has(img) || !img.isConnected) return;
    if (!img.complete || img.naturalWidth === 0) return; // not loaded (or broken): the load event comes back
    const url = img.currentSrc || img.src;
    if (!url || !/^(https?:|blob:|data:image\/)/i.test(url)) return;
    const rect = img.getBoundingClientRect();
    if (rect.width < MIN_SIZE || rect.height < MIN_SIZE) return; // icons, spacers, trackers
    track(img, url);
    if (results.has(url)) {
      apply(img, results.get(url));
    } else if (!pending.has(url) && !(Date.now() - requested.get(url) < ANSWER_WAIT_MS)) { // (undefined: false)
      queueImage(url);
    }
  }

  function track(img, url) {
    const previous = urlOf.get(img);
    if (previous === url) return;
    if (previous !== undefined) {
      imagesByUrl.get(previous)?.delete(img);
      removeBadge(img); // the image shows something else now
    }
    urlOf.set(img, url);
    if (!imagesByUrl.has(url)) imagesByUrl.set(url, new Set());
    imagesByUrl.get(url).add(img);
  }

  // --- sending --------------------------------------------------------------------------------------------

  function queueImage(url, immediate = false) {
    if (inPageBytes(url)) {
      // The server cannot fetch blob:/data: URLs: read the bytes here, in the page's origin.
      pending.set(url, null); // reserved while reading
      readBytes(url).then(
        (item) => {
          if (pending.has(url)) pending.set(url, item);
          schedule(immediate);
        },
        () => pending.delete(url),
      );
      return;
    }
    pending.set(url, { url });
    schedule(immediate);
  }

  async function readBytes(url) {
    const response = await fetch(url);
    const blob = await response.blob();
    if (blob.size === 0 || blob.size > MAX_BYTES) throw new Error("unusable image bytes");
    const dataUrl = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
    const item = { url, bytes: dataUrl.slice(dataUrl.indexOf(",") + 1), mime: blob.type || "" };
    if (url.length > 1024) {
      // A long data: URL travels as a short stand-in; the bytes say it all.
      aliasCount += 1;
      item.alias = `data:image/x-robust-scanner-ref;n=${aliasCount}`;
      aliases.set(item.alias, url);
    }
    return item;
  }

  function schedule(immediate) {
    const now = Date.now();
    if (!firstPendingAt) firstPendingAt = now;
    clearTimeout(debounceTimer);
    const wait = immediate ? 0 : Math.max(0, Math.min(DEBOUNCE_MS, firstPendingAt + MAX_WAIT_MS - now));
    debounceTimer = setTimeout(() => sendPending(immediate), wait);
  }

  async function sendPending(immediate) {
    const items = [];
    for (const [url, item] of pending) {
      if (item) {
        items.push(item);
        pending.delete(url);
      }
    }
    firstPendingAt = pending.size ? Date.now() : 0;
    if (!items.length) return;
    if (!active) return; // paused or disabled meanwhile: nothing leaves; a resume looks again
    const now = Date.now();
    for (const item of items) requested.set(item.url, now);
    const wire = items.map((item) => (item.alias ? { ...item, url: item.alias, alias: undefined } : item));
    const reply = await ask({ type: "scan", items: wire, immediate });
    if (!reply?.accepted) {
      for (const item of items) requested.delete(item.url);
      if (reply && reply.active === false) setActive(false);
    }
  }

  // --- verdicts ------------------------------------------------------------------------------------------

  function onVerdicts(list) {
    for (const answer of list || []) {
      if (typeof answer?.url !== "string") continue;
      const result = aliases.has(answer.url) ? { ...answer, url: aliases.get(answer.url) } : answer;
      requested.delete(result.url);
      if (result.retryable) {
        results.delete(result.url); // nothing known about the image: a later look may ask again
        continue;
      }
      results.set(result.url, result);
      const showing = imagesByUrl.get(result.url) || new Set();
      for (const img of showing) {
        if (!img.isConnected) showing.delete(img); // gone from the page: forget it
        else if (urlOf.get(img) === result.url) apply(img, result);
      }
    }
  }

  function apply(img, result) {
    if (!active) return;
    if (result.state === "done" && result.flagged) showBadge(img, result, "flagged");
    else if (result.state === "done" && result.falseFlag) showBadge(img, result, "falseflag");
    else if (result.state === "failed") showBadge(img, result, "failed"); // a refusal is never silent
    else if (explicit.has(result.url)) showBadge(img, result, "clean");
    else removeBadge(img);
  }

  // --- badges ---------------------------------------------------------------------------------------------

  const BADGE_CSS = `
    :host { all: initial; }
    .wrap { position: relative; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
    .badge {
      box-sizing: border-box; display: flex; align-items: center; justify-content: center;
      width: var(--size); height: var(--size); margin: 0; padding: 0; border: 2px solid #fff; border-radius: 50%;
      background: #b3261e; color: #fff; font: 700 calc(var(--size) * 0.6)/1 system-ui, sans-serif;
      cursor: pointer; box-shadow: 0 1px 4px rgba(0, 0, 0, 0.5);
    }
    .badge.clean { background: #1e6b34; }
    .badge.failed { background: #5f6368; }
    .badge.falseflag { background: #3c4043; }
    .badge:focus-visible { outline: 3px solid #1a73e8; outline-offset: 2px; }
    .details {
      position: absolute; top: calc(var(--size) + 6px); right: 0; width: 270px; max-width: 80vw;
      box-sizing: border-box; padding: 10px 12px; border-radius: 8px; background: #202124; color: #f1f3f4;
      box-shadow: 0 4px 16px rgba(0, 0, 0, 0.4); text-align: left; white-space: normal;
    }
    .details[hidden] { display: none; }
    .details.to-right { right: auto; left: 0; }
    .details.above { top: auto; bottom: calc(var(--size) + 6px); }
    .details h2 { margin: 0 0 6px; font-size: 14px; font-weight: 700; color: #fff; }
    .details dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 0 0 6px; }
    .details dt { color: #bdc1c6; }
    .details dd { margin: 0; }
    .details ul { margin: 2px 0 8px; padding-left: 18px; }
    .why { margin: 0; color: #bdc1c6; }
    .false-flag {
      margin-top: 4px; padding: 4px 10px; border: 1px solid #8ab4f8; border-radius: 4px; background: transparent;
      color: #8ab4f8; font: inherit; cursor: pointer;
    }
    .false-flag:focus-visible { outline: 2px solid #8ab4f8; outline-offset: 2px; }
    .false-flag:disabled { opacity: 0.6; cursor: default; }
    .feedback { margin: 6px 0 0; min-height: 1em; }
  `;

  const fmt = (value) => (typeof value === "number" ? value.toFixed(2) : "n/a");

  // A null label: the image is not one of the robust model's classes (rather than a wrong class name).
  const labelText = (label) => label || "no confident class";
  const MEANING = "Score above the threshold: the perturbation detectors find this image unlike ordinary images. "
    + "Label: the robust model's class, or no confident class.";
  const TITLES = {
    flagged: "Possibly adversarial image",
    clean: "No sign of manipulation",
    falseflag: "Reported as a false flag",
  };

  function describe(result, kind) {
    const verdict = result.verdict || {};
    if (kind === "failed") {
      const reason = result.error?.code || "error";
      return { label: "Image could not be scanned", aria: `Image could not be scanned: ${reason}` };
    }
    const title = TITLES[kind];
    return { label: title, aria: `${title}: label ${labelText(verdict.label)}, score ${fmt(verdict.score)}` };
  }

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function buildDetails(result, kind) {
    const verdict = result.verdict || {};
    const { label } = describe(result, kind);
    const panel = el("div", { className: "details", id: "details", role: "group", "aria-label": label });
    panel.hidden = true;
    panel.append(el("h2", { text: label }));
    if (kind === "failed") {
      panel.append(el("p", { className: "why", text: `${result.error?.code || "error"}: ${result.error?.message || ""}` }));
      return panel;
    }
    const threshold = result.thresholdOverride ?? verdict.threshold;
    const rows = [
      ["Label", labelText(verdict.label)],
      ["Score", fmt(verdict.score)],
      ["Threshold", `${fmt(threshold)}${result.thresholdOverride != null ? " (yours)" : ""}`],
    ];
    const dl = el("dl");
    for (const [name, value] of rows) dl.append(el("dt", { text: name }), el("dd", { text: String(value) }));
    panel.append(dl, el("p", { className: "why", text: MEANING }));
    if (kind === "falseflag") {
      panel.append(el("p", { className: "feedback", text: "Your team reported this image as a false flag." }));
    }
    const scores = Object.entries(verdict.scores || {}).sort((a, b) => b[1] - a[1]);
    panel.append(el("p", { className: "why", text: "Why: the detector scores (higher = more likely perturbed)" }));
    panel.append(el("ul", {}, scores.map(([name, value]) => el("li", { text: `${name}: ${fmt(value)}` }))));
    if (kind === "flagged" && result.sha256) {
      const button = el("button", { type: "button", className: "false-flag", text: "This is a false flag" });
      const status = el("p", { className: "feedback", role: "status", "aria-live": "polite" });
      button.addEventListener("click", async (event) => {
        event.stopPropagation();
        button.disabled = true;
        status.textContent = "Sending…";
        const reply = await ask({ type: "feedback", sha256: result.sha256 });
        if (reply?.ok) {
          status.textContent = "Reported as a false flag. Thank you.";
        } else {
          button.disabled = false;
          status.textContent = `Could not send: ${reply?.message || "the extension is unavailable"}`;
        }
      });
      panel.append(button, status);
    }
    return panel;
  }

  function showBadge(img, result, kind) {
    const signature = `${result.url}|${kind}|${result.thresholdOverride}`;
    if (badges.get(img)?.signature === signature) return;
    removeBadge(img);
    const host = document.createElement(BADGE_TAG);
    const style = host.style;
    for (const [name, value] of [["all", "initial"], ["position", "absolute"], ["top", "0"], ["left", "0"],
      ["z-index", "2147483647"], ["display", "block"], ["width", "0"], ["height", "0"], ["overflow", "visible"],
      ["pointer-events", "none"], ["contain", "none"]]) {
      style.setProperty(name, value, "important");
    }
    const root = host.attachShadow({ mode: "open" }); // a shadow root: page CSS cannot reach the badge
    const { aria } = describe(result, kind);
    const button = el("button", {
      type: "button", className: `badge ${kind}`, "aria-label": aria, "aria-expanded": "false",
      "aria-controls": "details", title: aria,
    });
    button.textContent = { flagged: "!", clean: "✓", falseflag: "✓", failed: "?" }[kind];
    const details = buildDetails(result, kind);
    const wrap = el("div", { className: "wrap" }, [button, details]);
    wrap.style.pointerEvents = "auto";
    root.append(el("style", { text: BADGE_CSS }), wrap);

    let pinned = false;
    const open = (value) => {
      details.hidden = !value;
      button.setAttribute("aria-expanded", String(value));
      if (!value) return;
      // Open towards the side with room: leftwards by default, rightwards near the left edge, above near the bottom.
      const at = button.getBoundingClientRect();
      details.classList.toggle("to-right", at.right < details.offsetWidth + 8);
      const below = window.innerHeight - at.bottom;
      details.classList.toggle("above", below < details.offsetHeight + 12 && at.top > below);
    };
    button.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      pinned = !pinned;
      open(pinned);
    });
    wrap.addEventListener("mouseenter", () => open(true));
    wrap.addEventListener("mouseleave", () => open(pinned));
    button.addEventListener("focus", () => open(true));
    wrap.addEventListener("focusout", (event) => {
      if (!wrap.contains(event.relatedTarget)) open(pinned);
    });
    wrap.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        pinned = false;
        open(false);
        button.focus();
      }
    });

    const badge = { host, wrap, signature, size: 0 };
    badges.set(img, badge);
    resizeObserver.observe(img);
    (document.documentElement || document.body).append(host);
    position(img, badge);
  }

  function removeBadge(img) {
    const badge = badges.get(img);
    if (!badge) return;
    badge.host.remove();
    badges.delete(img);
    resizeObserver.unobserve(img);
  }

  function removeAllBadges() {
    for (const img of [...badges.keys()]) removeBadge(img);
  }

  // Over the image's top-right corner, sized to the image within bounds.
  function position(img, badge) {
    if (!img.isConnected) {
      removeBadge(img);
      return;
    }
    const rect = img.getBoundingClientRect();
    const style = badge.host.style;
    if (rect.width === 0 || rect.height === 0) {
      style.setProperty("display", "none", "important");
      return;
    }
    const size = Math.round(Math.max(20, Math.min(32, Math.min(rect.width, rect.height) * 0.2)));
    if (size !== badge.size) {
      badge.size = size;
      badge.wrap.style.setProperty("--size", `${size}px`);
    }
    const inset = 4;
    const x = rect.right + window.scrollX - size - inset;
    const y = rect.top + window.scrollY + inset;
    style.setProperty("display", "block", "important");
    style.setProperty("transform", `translate(${Math.round(x)}px, ${Math.round(y)}px)`, "important");
  }

  let repositionFrame = 0;
  function scheduleReposition() {
    if (repositionFrame) return;
    repositionFrame = requestAnimationFrame(() => {
      repositionFrame = 0;
      for (const [img, badge] of [...badges]) position(img, badge);
    });
  }
  const resizeObserver = new ResizeObserver(scheduleReposition);
  window.addEventListener("scroll", () => badges.size && scheduleReposition(), { capture: true, passive: true });
  window.addEventListener("resize", () => badges.size && scheduleReposition(), { passive: true });

  // --- a short notice (only after the person used the context menu) -----------------------------------------

  function showNotice(text) {
    const host = document.createElement(NOTICE_TAG);
    for (const [name, value] of [["all", "initial"], ["position", "fixed"], ["right", "16px"], ["bottom", "16px"],
      ["z-index", "2147483647"], ["display", "block"]]) {
      host.style.setProperty(name, value, "important");
    }
    const root = host.attachShadow({ mode: "open" });
    root.append(
      el("style", {
        text: `p { margin: 0; padding: 10px 14px; border-radius: 8px; background: #202124; color: #fff;
          font: 13px/1.4 system-ui, sans-serif; box-shadow: 0 4px 16px rgba(0, 0, 0, 0.4); }`,
      }),
      el("p", { role: "status", text }),
    );
    (document.documentElement || document.body).append(host);
    setTimeout(() => host.remove(), 6000);
  }

  // --- "Scan this image" from the context menu ----------------------------------------------------------

  function scanNow(url) {
    if (!active || !url) return { ok: false };
    explicit.add(url);
    for (const img of document.querySelectorAll("img")) {
      if ((img.currentSrc || img.src) === url) track(img, url);
    }
    if (results.has(url)) {
      onVerdicts([results.get(url)]);
    } else {
      results.delete(url);
      requested.delete(url);
      queueImage(url, true);
    }
    return { ok: true };
  }

  // --- state from the service worker -------------------------------------------------------------------------

  function setActive(next) {
    if (next === active) return;
    active = next;
    if (!active) {
      clearTimeout(debounceTimer);
      pending = new Map();
      firstPendingAt = 0;
      removeAllBadges();
      return;
    }
    for (const img of document.querySelectorAll("img")) evaluate(img);
  }

  async function refreshState(initial = false) {
    const state = await ask({ type: "page-state", initial });
    setActive(Boolean(state?.active));
  }

  chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
    if (sender.id !== chrome.runtime.id || !message) return false;
    switch (message.type) {
      case "verdicts":
        onVerdicts(message.results);
        return false;
      case "settings-changed":
        refreshState();
        return false;
      case "scan-now":
        sendResponse(scanNow(message.url));
        return false;
      case "notice":
        showNotice(String(message.text || ""));
        return false;
      default:
        return false;
    }
  });

  mutations.observe(document.documentElement, {
    childList: true,
    subtree: true,
    attributes: true,
    attributeFilter: ["src", "srcset"],
  });
  collect(document.documentElement);
  refreshState(true);
})();
