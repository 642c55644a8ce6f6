"""Words for people: what a verdict's label, score and threshold mean, and what an error code says.

One place, so that the crawl's tables, ``scanner report``, the audits and the server's messages say the same
thing (the dashboard and the extension carry the same sentences in their JavaScript)."""

from __future__ import annotations

NO_CLASS = "no confident class"
MEANING = (
    "score S > threshold T: the perturbation detectors find this image unlike ordinary images; "
    "label = robust model's class, or no confident class"
)

_CODES = {
    "connection_refused": "connection refused (is the server running on that port?)",
    "dns_error": "host name not found",
    "timeout": "timed out",
    "network_error": "network error",
    "browser_error": "the browser failed on this page",
    "robots_unavailable": "robots.txt answered with a server error, so nothing is crawled (--ignore-robots)",
    "robots_disallowed": "robots.txt disallows it (--ignore-robots for your own site)",
    "redirected_out_of_scope": "it redirects off the site",
    "not_html": "not an HTML page",
    "already_crawled": "already crawled",
}


def label_text(label: str | None) -> str:
    """The label as shown: a null label means the image is outside the robust model's classes."""
    return label if label else NO_CLASS


def describe(code: str | None) -> str:
    """A page or image error code in words (``http_404`` -> ``HTTP 404``)."""
    if not code:
        return "ok"
    if code.startswith("http_"):
        return f"HTTP {code[5:]}"
    return _CODES.get(code, code.replace("_", " "))


def verdict_line(label: str | None, score: float | None, threshold: float | None) -> str:
    """``label X, score S > threshold T`` for one image."""
    if score is None:
        return f"label {label_text(label)}, no score"
    if threshold is None:
        return f"label {label_text(label)}, score {score:.2f} (uncalibrated)"
    relation = ">" if score > threshold else "<="
    return f"label {label_text(label)}, score {score:.2f} {relation} threshold {threshold:.2f}"
