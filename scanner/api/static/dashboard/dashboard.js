/* The reports dashboard.  The API key lives in sessionStorage (this tab only) and travels only in the
 * Authorization header.  Every value from the API enters the DOM through textContent or an attribute set by
 * the DOM API, never through innerHTML. */
"use strict";

(() => {
  const KEY_ITEM = "scanner.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const state = { cursor: null, filters: {}, objectUrls: [], rows: 0, shown: null };
  const NO_CLASS = "no confident class";
  const MEANING = "Score above the threshold: the perturbation detectors find this image unlike ordinary images. "
    + "Label: the robust model's class, or no confident class.";
  // A null label means the image is not one of the robust model's classes (not a wrong class name).
  const labelText = (label) => label || NO_CLASS;

  // --- the API ------------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(`${code}: ${detail}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_ITEM);

  async function api(path, key = apiKey(), init = {}) {
    const headers = { Authorization: `Bearer ${key}`, ...(init.headers || {}) };
    const response = await fetch(path, { ...init, headers, credentials: "omit" });
    if (!response.ok) {
      let problem = {};
      try { problem = await response.json(); } catch (_) { /* not a problem document */ }
      throw new ApiError(response.status, problem.code || `http_${response.status}`, problem.detail || response.statusText);
    }
    return response;
  }

  const apiJson = async (path, key) => (await api(path, key)).json();

  // --- small DOM helpers ----------------------------------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function safeLink(url) {
    if (typeof url !== "string" || !/^https?:\/\//i.test(url)) return el("span", url || "—");
    const link = el("a", url);
    link.href = url;
    link.rel = "noopener noreferrer nofollow";
    link.target = "_blank";
    return link;
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const score = (value) => (typeof value === "number" ? value.toFixed(3) : "—");

  function showError(node, err) {
    node.textContent = err instanceof ApiError ? `${err.detail} (${err.code})` : `Error: ${err.message}`;
    node.hidden = false;
  }

  // --- sign-in ------------------------------------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    $("signin-error").hidden = true;
    try {
      const me = await apiJson("/v1/me", key);
      sessionStorage.setItem(KEY_ITEM, key);
      input.value = "";
      enter(me);
    } catch (err) {
      sessionStorage.removeItem(KEY_ITEM);
      showError($("signin-error"), err);
      input.focus();
    }
  }

  function enter(me) {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    $("whoami").textContent = `${me.tenant} · key ${me.name}`;
    $("whoami").hidden = false;
    $("reports-title").focus();
    loadReport(true);
    loadAudits();
  }

  function signOut() {
    sessionStorage.removeItem(KEY_ITEM);
    releaseThumbnails();
    $("rows").replaceChildren();
    $("audit-list").replaceChildren();
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("whoami").hidden = true;
    $("signin").hidden = false;
    $("api-key").focus();
  }

  // --- the flagged report ---------------------------------------------------------------------------------------

  function readFilters() {
    const form = $("filters");
    const filters = {};
    for (const name of ["site", "label", "min_score", "false_flag"]) {
      const value = form.elements[name].value.trim();
      if (value) filters[name] = value;
    }
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      if (value) filters[name] = new Date(value).toISOString();
    }
    return filters;
  }

  function reportUrl(extra) {
    const params = new URLSearchParams({ ...state.filters, ...extra });
    return `/v1/reports/flagged?${params}`;
  }

  const pageSize = () => Number(document.body.dataset.pageSize) || 50;

  async function loadReport(fresh) {
    const error = $("error");
    error.hidden = true;
    if (fresh) {
      state.filters = readFilters();
      state.cursor = null;
      state.rows = 0;
      releaseThumbnails();
      $("rows").replaceChildren();
    }
    $("status").textContent = "Loading…";
    const extra = { limit: String(pageSize()) };
    if (state.cursor) extra.cursor = state.cursor;
    try {
      const page = await apiJson(reportUrl(extra));
      for (const row of page.items) $("rows").append(reportRow(row));
      sortRows();
      state.rows += page.items.length;
      state.cursor = page.next_cursor;
      $("empty").hidden = state.rows > 0;
      $("load-more").hidden = !state.cursor;
      $("status").textContent = `${state.rows} flagged image${state.rows === 1 ? "" : "s"} shown`;
    } catch (err) {
      $("status").textContent = "";
      showError(error, err);
    }
  }

  function reportRow(row) {
    const tr = el("tr");
    tr.dataset.sha256 = row.sha256;
    tr.dataset.score = String(row.score ?? "");
    tr.dataset.order = String(state.rows + $("rows").children.length);
    if (row.false_flag) tr.classList.add("false-flag");
    const thumb = el("img", null, "thumb");
    thumb.alt = `Thumbnail of image ${row.sha256.slice(0, 12)}`;
    thumb.width = 48;
    thumb.height = 48;
    loadThumbnail(thumb, row.sha256);
    const details = el("button", "Details", "row-details");
    details.type = "button";
    details.setAttribute("aria-label", `Details of image ${row.sha256.slice(0, 12)}`);
    details.addEventListener("click", () => showDetails(row.sha256));
    const label = el("span", labelText(row.label));
    if (row.false_flag) label.append(el("span", "confirmed false flag", "tag"));
    const cells = [
      thumb, imageName(row), label, el("span", score(row.score)), el("span", score(row.threshold)),
      el("span", row.site || "—"), safeLink(row.page_url), el("span", when(row.seen_at)), details,
    ];
    const classes = ["", "image-url", "label", "score", "threshold", "site", "page-url", "seen", ""];
    cells.forEach((child, i) => {
      const td = el("td", null, classes[i]);
      td.append(child);
      tr.append(td);
    });
    return tr;
  }

  // The image's own URL where it has one (people recognise it); its sha256 prefix otherwise.
  function imageName(row) {
    if (typeof row.image_url === "string" && /^https?:\/\//i.test(row.image_url)) {
      const link = safeLink(row.image_url);
      link.title = row.sha256;
      return link;
    }
    const sha = el("code", row.sha256.slice(0, 12));
    sha.title = row.sha256;
    return sha;
  }

  // "Highest score first" re-orders the rows loaded so far; "newest" restores the API's order.
  function sortRows() {
    const byScore = $("f-sort").value === "score";
    const rows = [...$("rows").children];
    const key = (tr) => (byScore ? -(Number(tr.dataset.score) || 0) : Number(tr.dataset.order));
    rows.sort((a, b) => key(a) - key(b));
    $("rows").append(...rows);
    $("flagged-caption").textContent = byScore ? "Flagged images, highest score first" : "Flagged images, newest sighting first";
  }

  async function loadThumbnail(img, sha256) {
    try {
      const blob = await (await api(`/v1/images/${encodeURIComponent(sha256)}/raw`)).blob();
      const url = URL.createObjectURL(blob);
      state.objectUrls.push(url);
      img.src = url;
    } catch (_) {
      img.alt = `No thumbnail for image ${sha256.slice(0, 12)}`;
    }
  }

  function releaseThumbnails() {
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
    state.objectUrls = [];
  }

  async function exportCsv() {
    const error = $("error");
    error.hidden = true;
    try {
      const blob = await (await api(reportUrl({ format: "csv", limit: "1000" }))).blob();
      const url = URL.createObjectURL(new Blob([blob], { type: "text/csv" }));
      const link = el("a");
      link.href = url;
      link.download = `flagged-${new Date().toISOString().slice(0, 10)}.csv`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      $("status").textContent = "CSV exported";
    } catch (err) {
      showError(error, err);
    }
  }

  // --- image details ----------------------------------------------------------------------------------------

  async function showDetails(sha256) {
    try {
      const image = await apiJson(`/v1/images/${encodeURIComponent(sha256)}`);
      state.shown = image.sha256;
      const verdict = image.verdicts[0] || {};
      const imageUrls = [...new Set(image.recent_sightings.map((s) => s.image_url).filter(Boolean))];
      const facts = $("details-facts");
      facts.replaceChildren();
      for (const [name, value] of [
        ["Image URL", imageUrls.length ? safeLink(imageUrls[0]) : "— (uploaded bytes)"],
        ["SHA-256", image.sha256], ["Format", `${image.format} ${image.width}×${image.height}`],
        ["Label", labelText(verdict.label)], ["Score", score(verdict.score)], ["Threshold", score(verdict.threshold)],
        ["In the model's classes", typeof verdict.in_domain === "number" ? score(verdict.in_domain) : "—"],
        ["Sightings", image.sightings], ["First seen", when(image.first_seen)], ["Last seen", when(image.last_seen)],
      ]) {
        const dd = el("dd");
        dd.append(value instanceof Node ? value : document.createTextNode(String(value)));
        facts.append(el("dt", name), dd);
      }
      $("details-meaning").textContent = MEANING;
      const scores = Object.entries(verdict.scores || {}).sort((a, b) => b[1] - a[1]);
      $("details-scores").replaceChildren(...scores.map(([name, value]) => el("li", `${name}: ${score(value)}`)));
      showPages(image.recent_sightings);
      showFeedback(Boolean(image.feedback && image.feedback.false_flag));
      loadThumbnail($("details-preview"), image.sha256);
      $("details-preview").alt = `Image ${image.sha256.slice(0, 12)}, enlarged`;
      $("details").hidden = false;
      $("details-title").focus();
    } catch (err) {
      showError($("error"), err);
    }
  }

  function showPages(sightings) {
    const pages = $("details-pages");
    pages.replaceChildren();
    for (const sighting of sightings) {
      const li = el("li");
      li.append(safeLink(sighting.page_url), el("span", ` · ${sighting.site || "—"} · ${when(sighting.seen_at)}`, "muted"));
      pages.append(li);
    }
    if (!sightings.length) pages.append(el("li", "No page recorded", "muted"));
  }

  function showFeedback(confirmed) {
    $("details-feedback").textContent = confirmed ? "Confirmed false flag: your team reported this image." : "";
    $("details-false-flag").disabled = confirmed;
    $("details-undo-false-flag").hidden = !confirmed;
    $("details-undo-false-flag").disabled = false;
  }

  // Undo a false-flag report (a click on the wrong row): the tenant's report is withdrawn and the row unmarked.
  async function undoFalseFlag() {
    const sha256 = state.shown;
    if (!sha256) return;
    $("details-undo-false-flag").disabled = true;
    try {
      await api(`/v1/images/${encodeURIComponent(sha256)}/feedback/false_flag`, apiKey(), { method: "DELETE" });
      showFeedback(false);
      $("details-feedback").textContent = "Report withdrawn: no longer marked as a false flag.";
      const row = [...$("rows").children].find((tr) => tr.dataset.sha256 === sha256);
      if (row) {
        row.classList.remove("false-flag");
        for (const tag of row.querySelectorAll("td.label .tag")) tag.remove();
      }
    } catch (err) {
      $("details-undo-false-flag").disabled = false;
      showError($("details-feedback"), err);
    }
  }

  async function reportFalseFlag() {
    const sha256 = state.shown;
    if (!sha256) return;
    $("details-false-flag").disabled = true;
    try {
      await api(`/v1/images/${encodeURIComponent(sha256)}/feedback`, apiKey(), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ kind: "false_flag" }),
      });
      showFeedback(true);
      const row = [...$("rows").children].find((tr) => tr.dataset.sha256 === sha256);
      if (row && !row.classList.contains("false-flag")) {
        row.classList.add("false-flag");
        row.querySelector("td.label").append(el("span", "confirmed false flag", "tag"));
      }
    } catch (err) {
      $("details-false-flag").disabled = false;
      showError($("details-feedback"), err);
    }
  }

  // --- audit history ----------------------------------------------------------------------------------------

  async function loadAudits() {
    const list = $("audit-list");
    list.replaceChildren();
    try {
      const audits = (await apiJson("/v1/audits")).items;
      $("audits-empty").hidden = audits.length > 0;
      for (const audit of audits) {
        const runs = (await apiJson(`/v1/audits/${encodeURIComponent(audit.id)}/runs`)).items;
        list.append(auditBlock(audit, runs.slice().reverse()));
      }
    } catch (err) {
      const message = el("p", null, "error");
      showError(message, err);
      list.append(message);
    }
  }

  function auditBlock(audit, runs) {
    const block = el("article", null, "audit");
    block.dataset.auditId = audit.id;
    block.append(el("h3", `${audit.name || audit.site} — ${audit.schedule}`));
    if (!runs.length) {
      block.append(el("p", "No runs yet.", "empty"));
      return block;
    }
    block.append(chart(audit, runs), runsTable(runs));
    return block;
  }

  function chart(audit, runs) {
    const width = 480, height = 160, left = 36, right = 12, top = 12, bottom = 28;
    const times = runs.map((run) => Date.parse(run.started_at));
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const most = Math.max(1, ...runs.map((run) => run.flagged));
    const counted = (run) => run.status === "done";  // a failed run found nothing to count: it is not "0 flagged"
    const x = (i) => (t1 > t0 ? left + ((times[i] - t0) / (t1 - t0)) * (width - left - right)
      : left + (runs.length === 1 ? (width - left - right) / 2 : (i / (runs.length - 1)) * (width - left - right)));
    const y = (value) => top + (1 - value / most) * (height - top - bottom);
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    root.setAttribute("aria-label", `Flagged images per run of ${audit.name || audit.site}: ` +
      runs.map((run) => `${when(run.started_at)} ${counted(run) ? run.flagged : runState(run)}`).join(", "));
    root.append(svg("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }));
    root.append(svg("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }));
    for (const value of [0, most]) {
      const label = svg("text", { x: left - 6, y: y(value) + 3, "text-anchor": "end" });
      label.textContent = String(value);
      root.append(label);
    }
    const points = runs.flatMap((run, i) => counted(run) ? [`${x(i).toFixed(1)},${y(run.flagged).toFixed(1)}`] : []);
    root.append(svg("polyline", { points: points.join(" "), class: "line" }));
    runs.forEach((run, i) => {
      const title = svg("title");
      if (counted(run)) {
        const dot = svg("circle", { cx: x(i).toFixed(1), cy: y(run.flagged).toFixed(1), r: 4, class: "run-point" });
        dot.dataset.flagged = String(run.flagged);
        title.textContent = `${when(run.started_at)}: ${run.flagged} flagged`;
        dot.append(title);
        root.append(dot);
        return;
      }
      // A failed (or unfinished) run: a cross on the time axis, above the counts' scale, with its reason.
      const cx = x(i), cy = top + 4, arm = 4;
      const mark = svg("path", {
        d: `M${cx - arm},${cy - arm}L${cx + arm},${cy + arm}M${cx - arm},${cy + arm}L${cx + arm},${cy - arm}`,
        class: `run-failed run-${run.status}`,
      });
      mark.dataset.status = run.status;
      mark.dataset.reason = run.error_code || "";
      title.textContent = `${when(run.started_at)}: ${runState(run)}`;
      mark.append(title);
      root.append(mark);
    });
    for (const i of runs.length > 1 ? [0, runs.length - 1] : [0]) {
      const anchor = i === 0 && runs.length > 1 ? "start" : "end";
      const label = svg("text", { x: x(i), y: height - 8, "text-anchor": anchor, class: "time" });
      label.textContent = axisTime(times[i], t1 - t0);
      root.append(label);
    }
    return root;
  }

  function runState(run) {
    if (run.status !== "failed") return run.status;
    return run.error_code ? `failed (${run.error_code})` : "failed";
  }

  // Runs minutes apart all fall on one date: the axis shows the time of day too (and seconds when needed).
  function axisTime(t, span) {
    const date = new Date(t);
    const clock = { hour: "2-digit", minute: "2-digit", ...(span < 120000 ? { second: "2-digit" } : {}) };
    return `${date.toLocaleDateString()} ${date.toLocaleTimeString([], clock)}`;
  }

  function runsTable(runs) {
    const table = el("table", null, "runs");
    table.append(el("caption", "Runs, oldest first"));
    const head = el("tr");
    for (const name of ["Started", "Status", "Pages", "Images", "Flagged", "Newly flagged", "Reason"]) {
      const th = el("th", name);
      th.scope = "col";
      head.append(th);
    }
    table.append(el("thead"));
    table.tHead.append(head);
    const body = el("tbody");
    for (const run of runs) {
      const tr = el("tr");
      const failed = run.status === "failed";
      if (failed) tr.classList.add("failed");
      for (const value of [when(run.started_at), runState(run), run.pages, run.images, failed ? "—" : run.flagged,
        failed ? "—" : run.newly_flagged, failed ? run.error || "" : ""]) {
        tr.append(el("td", value));
      }
      body.append(tr);
    }
    table.append(body);
    return table;
  }

  // --- wiring ---------------------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); loadReport(true); });
    $("filters").addEventListener("reset", () => setTimeout(() => loadReport(true), 0));
    $("load-more").addEventListener("click", () => loadReport(false));
    $("export").addEventListener("click", exportCsv);
    $("details-close").addEventListener("click", () => { $("details").hidden = true; });
    $("details-false-flag").addEventListener("click", reportFalseFlag);
    $("details-undo-false-flag").addEventListener("click", undoFalseFlag);
    $("f-sort").addEventListener("change", sortRows);
    const key = apiKey();
    if (!key) return;
    try {
      enter(await apiJson("/v1/me", key));
    } catch (err) {
      sessionStorage.removeItem(KEY_ITEM);
      showError($("signin-error"), err);
    }
  });
})();
