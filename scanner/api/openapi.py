"""The OpenAPI 3.1 document of the API, built from the pydantic models of ``schemas.py`` and the routes of
``routes.py``; the API serves the copy kept in the repository (``openapi.json``).

``python -m scanner.api.openapi`` writes that copy; ``python -m scanner.api.openapi --check`` exits 1 when it
differs from what the code would generate (the test suite checks the same).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from scanner.api.schemas import (
    AuditList,
    AuditOut,
    AuditRequest,
    AuditRunList,
    AuditRunOut,
    FeedbackOut,
    FeedbackRequest,
    FlaggedReport,
    Health,
    ImageOut,
    KeyOut,
    ProblemOut,
    ScanOut,
    ScanRequest,
)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
TITLE = "Robust image scanner API"
VERSION = "1"
SCHEMA_REF = "#/components/schemas/{model}"
SECURITY = [{"bearerAuth": []}]
MAX_IMAGES_PER_SCAN = 256  # the default of Settings.max_images_per_scan
SOURCES = ["extension", "crawl", "audit", "api"]
EMPTY = {"type": "string", "maxLength": 0}

# An absolute http(s) URL with a host, as ``intake._check_page_url`` accepts it: ``urlsplit`` finds the scheme http
# or https and a non-empty hostname (the netloc after its last "@", before its first ":").  ASCII netlocs only,
# without brackets: ``urlsplit`` checks bracketed (IPv6) and non-ASCII hosts further.  Tab, CR and LF, which
# ``urlsplit`` deletes, are left out.
_NETLOC_CHARS = r"\x01-\x08\x0b\x0c\x0e-\x22\x24-\x2e\x30-\x39\x3b-\x3e\x41-\x5a\x5c\x5e-\x7f"  # not #/:?@[]
_USERINFO = rf"(?:[{_NETLOC_CHARS}:@]*@)?"
_HOST = rf"[{_NETLOC_CHARS}]{{1,253}}"  # at most a DNS name's length: sites.host holds 255 characters
_PORT = rf"(?::[{_NETLOC_CHARS}:]*)?"
HTTP_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://{_USERINFO}{_HOST}{_PORT}(?:[/?#][^\x00]*)?"
# What the service fetches on a tenant's behalf later (an audit's start URL, a webhook): a host name or a
# bracketed IPv6 literal; the fetcher then refuses what it must (bad_url, blocked_address, blocked_port).
_IPV6_HOST = r"\[[0-9A-Fa-f:.]{2,45}\]"
TARGET_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://{_USERINFO}(?:{_HOST}|{_IPV6_HOST}){_PORT}(?:[/?#][^\x00]*)?"
# Text the API stores has no NUL (PostgreSQL refuses it): ``scanner.api.text`` answers 422 for it.
NO_NUL = r"^[^\x00]*$"

# A report cursor: unpadded URL-safe base64 of ``v1:<verdict id>`` ("djE6" is "v1:").  The groups spell the
# base64 of ASCII digits: three digits make four characters, one or two left over make two or three (whose
# last character carries bits the decoder ignores).
_THREE_DIGITS = "(?:[MN][DTjz]|O[DT])[AEIMQUYcgk][wxyz0-5]"
_ONE_DIGIT = "(?:[MN][A-Za-z0-9_-]|O[A-Za-f])"
_TWO_DIGITS = "(?:[MN][DTjz]|O[DT])[A-Za-n]"
CURSOR_MAX_LENGTH = 28  # ids of up to 18 digits: below SQLite's 2**63
CURSOR = rf"djE6(?:{_THREE_DIGITS})*(?:{_THREE_DIGITS}|{_ONE_DIGIT}|{_TWO_DIGITS})"


# --- components -----------------------------------------------------------------------------------------------


def component_schemas() -> dict[str, Any]:
    """The models' JSON schemas (``$defs`` become ``components/schemas``), with what the handlers check beyond
    the models, and the problem documents of each status."""
    _, top = models_json_schema(
        [
            (ScanRequest, "validation"),
            (FeedbackRequest, "validation"),
            (FeedbackOut, "serialization"),
            (ScanOut, "serialization"),
            (ImageOut, "serialization"),
            (FlaggedReport, "serialization"),
            (Health, "serialization"),
            (KeyOut, "serialization"),
            (ProblemOut, "serialization"),
            (AuditRequest, "validation"),
            (AuditOut, "serialization"),
            (AuditList, "serialization"),
            (AuditRunOut, "serialization"),
            (AuditRunList, "serialization"),
        ],
        ref_template=SCHEMA_REF,
    )
    schemas: dict[str, Any] = copy.deepcopy(top["$defs"])

    scan_request = schemas["ScanRequest"]["properties"]
    page_url = next(branch for branch in scan_request["page_url"]["anyOf"] if branch.get("type") == "string")
    page_url["pattern"] = f"^{HTTP_URL}$"
    scan_request["page_url"]["description"] += " (an absolute http(s) URL)"
    scan_request["image_urls"]["maxItems"] = MAX_IMAGES_PER_SCAN
    scan_request["image_urls"]["description"] += (
        f"; at most max_images_per_scan (default {MAX_IMAGES_PER_SCAN}); a URL that cannot be fetched or is not"
        " an image becomes a failed item of the scan"
    )

    schemas["ScanUpload"] = {
        "title": "ScanUpload",
        "description": "Images uploaded as file parts (any part with a filename is an image; uploads are not"
        " fetched), with optional text fields of at most 1 MiB each, each at most once (duplicate_field); any"
        " other text field is refused (unknown_field).",
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,
        "properties": {
            "image": {
                "description": f"the images, one file part each; at most {MAX_IMAGES_PER_SCAN} (the default of"
                " max_images_per_scan)",
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_IMAGES_PER_SCAN,
                "items": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
            "page_url": {
                "description": "the page the images were seen on: an absolute http(s) URL; empty means none",
                "type": "string",
                "pattern": f"^(?:{HTTP_URL})?$",
            },
            "source": {"type": "string", "enum": SOURCES, "default": "api"},
            "image_urls": {
                "description": "where the uploaded files came from: a JSON list with one URL (or null) per file"
                " part, in order (URLs are cut to 4096 characters)",
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"type": "array", "items": {"type": ["string", "null"]}},
            },
        },
    }

    schemas["ScanProgress"] = {
        "title": "ScanProgress",
        "type": "object",
        "required": ["status", "counts"],
        "properties": {
            "status": copy.deepcopy(schemas["ScanOut"]["properties"]["status"]),
            "counts": {"$ref": SCHEMA_REF.format(model="Counts")},
        },
    }
    schemas["ScanEvent"] = {
        "title": "ScanEvent",
        "description": "One server-sent event (as OpenAPI 3.2 describes event streams): its name and its JSON data.",
        "oneOf": [
            _event(name, model)
            for name, model in (
                ("item", "ScanItemOut"),
                ("progress", "ScanProgress"),
                ("done", "ScanOut"),
                ("timeout", "ScanOut"),
            )
        ],
    }

    schemas["FieldError"] = {
        "title": "FieldError",
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    }
    _audit_request(schemas["AuditRequest"])
    problems = {
        "Unauthorized": (401, ["missing_key", "invalid_key", "revoked_key", "expired_key"]),
        "Forbidden": (403, ["insufficient_scope", "quota_exceeded"]),
        "ScanNotFound": (404, ["scan_not_found"]),
        "ImageNotFound": (404, ["image_not_found"]),
        "BodyTooLarge": (413, ["body_too_large"]),
        "UnsupportedMediaType": (415, ["unsupported_media_type"]),
        "InvalidSubmission": (
            422,
            ["invalid_body", "too_many_images", "unknown_field", "duplicate_field", "invalid_page_url"],
        ),
        "InvalidReportParameter": (422, ["invalid_parameter", "invalid_cursor"]),
        "InvalidFeedback": (422, ["invalid_body"]),
        "RateLimited": (429, ["rate_limited"]),
        "AuditNotFound": (404, ["audit_not_found"]),
        "InvalidAudit": (
            422,
            [
                "invalid_body",
                "invalid_schedule",
                "invalid_start_url",
                "invalid_pattern",
                "schedule_too_frequent",
                "bad_url",
                "blocked_address",
                "blocked_port",
            ],
        ),
        "AlreadyRunning": (409, ["already_running"]),
    }
    for name, (status, codes) in problems.items():
        properties: dict[str, Any] = {"status": {"const": status}, "code": {"enum": codes}}
        if name == "InvalidSubmission":
            properties["errors"] = {
                "description": "with invalid_body of a JSON body: every validation error",
                "type": "array",
                "items": {"$ref": SCHEMA_REF.format(model="FieldError")},
            }
        schemas[f"{name}Problem"] = {
            "title": f"{name}Problem",
            "allOf": [{"$ref": SCHEMA_REF.format(model="ProblemOut")}, {"type": "object", "properties": properties}],
        }
    return schemas


# Schedules the document promises to accept: intervals up to 999 units (the API takes up to 1000 days), and cron
# expressions whose fields are "*", "*/step" or one number in range (the API takes all of cron).
_CRON_FIELDS = ("[0-5]?[0-9]", "[01]?[0-9]|2[0-3]", "[1-9]|1[0-9]|2[0-8]", "[1-9]|1[0-2]", "[0-6]")
EVERY = "[1-9][0-9]{0,2}[smhd]"
CRON = " ".join(rf"(?:\*(?:/[1-9])?|{field})" for field in _CRON_FIELDS)


def _audit_request(schema: dict[str, Any]) -> None:
    """Exactly one of every and cron, in the forms above; a webhook needs its secret (and the reverse)."""
    properties = schema["properties"]
    properties["start_url"]["pattern"] = f"^{TARGET_URL}$"
    properties["every"] = {"type": "string", "pattern": f"^{EVERY}$", "description": "interval: 30s, 6h"}
    properties["cron"] = {"type": "string", "pattern": f"^{CRON}$", "description": "5-field cron expression in UTC"}
    properties["webhook_url"] = {
        "type": "string",
        "maxLength": 4096,
        "pattern": f"^{TARGET_URL}$",
        "description": "POST a signed summary of each run here; it is checked like start_url when the audit is"
        " created, and its address again at each delivery",
    }
    properties["webhook_secret"] = {"type": "string", "minLength": 8, "maxLength": 200, "description": "HMAC key"}
    schema["oneOf"] = [
        {"required": ["every"], "not": {"required": ["cron"]}},
        {"required": ["cron"], "not": {"required": ["every"]}},
    ]
    schema["dependentRequired"] = {"webhook_url": ["webhook_secret"], "webhook_secret": ["webhook_url"]}


def _event(name: str, model: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": SCHEMA_REF.format(model=model)},
            },
        },
    }


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model=model)}}}


def _problem(description: str, model: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": SCHEMA_REF.format(model=f"{model}Problem")}}},
    }
    if headers:
        response["headers"] = headers
    return response


def component_responses() -> dict[str, Any]:
    return {
        "Unauthorized": _problem(
            "no key (missing_key), or a key that is malformed or unknown (invalid_key), revoked (revoked_key) or"
            " expired (expired_key)",
            "Unauthorized",
            {
                "WWW-Authenticate": {
                    "description": "the authentication scheme: Bearer",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
        "Forbidden": _problem(
            "the key lacks the scope this operation needs (insufficient_scope), or the tenant has as many audits"
            " as it may keep (quota_exceeded, creating an audit)",
            "Forbidden",
        ),
        "RateLimited": _problem(
            "the key's rate limit is spent, or the client address failed to authenticate too often (rate_limited)",
            "RateLimited",
            {
                "Retry-After": {
                    "description": "seconds until a request will be accepted again",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
        ),
        "ScanNotFound": _problem("no such scan for this key's tenant (scan_not_found)", "ScanNotFound"),
    }


def _ref_response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _authenticated(responses: dict[str, Any]) -> dict[str, Any]:
    """The responses of a ``/v1/`` operation: its own plus those of the authentication middleware."""
    return {
        **responses,
        "401": _ref_response("Unauthorized"),
        "403": _ref_response("Forbidden"),
        "429": _ref_response("RateLimited"),
    }


# --- operations -----------------------------------------------------------------------------------------------


def _scan_created(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Location": {
                "description": "the scan: /v1/scans/{scan_id}",
                "required": True,
                "schema": {"type": "string", "pattern": "^/v1/scans/[^/]+$"},
            }
        },
        "content": _json("ScanOut"),
        "links": {
            "GetScan": {"operationId": "getScan", "parameters": {"scan_id": "$response.body#/id"}},
            "StreamScanEvents": {"operationId": "streamScanEvents", "parameters": {"scan_id": "$response.body#/id"}},
        },
    }


SHA256 = {
    "name": "sha256",
    "in": "path",
    "required": True,
    "description": "the SHA-256 of the image bytes, 64 hex digits (either case)",
    "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"},
}
SCAN_ID = {
    "name": "scan_id",
    "in": "path",
    "required": True,
    "description": "the id of a scan of this key's tenant",
    "schema": {"type": "string", "minLength": 1},
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def create_scan() -> dict[str, Any]:
    return {
        "operationId": "createScan",
        "summary": "Scan images: by URL (JSON) or uploaded (multipart)",
        "description": "Needs the scope scans:write.  URLs are fetched by the service under the SSRF rules; an image"
        " that cannot be taken (a refused or failed fetch, not an image, too large) becomes a failed item with an"
        " error code, and the rest of the scan goes on.  New images are analysed in the background: follow the"
        " scan with GET /v1/scans/{scan_id} or its events.",
        "tags": ["scans"],
        "security": SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": SCHEMA_REF.format(model="ScanRequest")}},
                "multipart/form-data": {
                    "schema": {"$ref": SCHEMA_REF.format(model="ScanUpload")},
                    "encoding": {"image": {"contentType": "application/octet-stream"}},
                },
            },
        },
        "responses": _authenticated(
            {
                "201": _scan_created("the scan is done already: every image was known or failed"),
                "202": _scan_created("the scan is queued: some images are being analysed"),
                "413": _problem(
                    "the body exceeds max_body_bytes (a JSON body: the room of max_images_per_scan URLs of 8 KiB,"
                    " about 2 MB by default), or a text field of a multipart body 1 MiB (body_too_large)",
                    "BodyTooLarge",
                ),
                "415": _problem(
                    "the body is neither application/json nor multipart/form-data (unsupported_media_type)",
                    "UnsupportedMediaType",
                ),
                "422": _problem(
                    "the body is invalid or malformed (invalid_body), has too many images (too_many_images), a"
                    " text field it does not use (unknown_field) or one twice (duplicate_field), or a page_url that"
                    " is not an absolute http(s) URL (invalid_page_url)",
                    "InvalidSubmission",
                ),
            }
        ),
    }


def get_scan() -> dict[str, Any]:
    return {
        "operationId": "getScan",
        "summary": "A scan with its items and their verdicts",
        "description": "Needs the scope scans:write or reports:read.",
        "tags": ["scans"],
        "security": SECURITY,
        "parameters": [SCAN_ID],
        "responses": _authenticated(
            {"200": {"description": "the scan", "content": _json("ScanOut")}, "404": _ref_response("ScanNotFound")}
        ),
    }


def stream_scan_events() -> dict[str, Any]:
    return {
        "operationId": "streamScanEvents",
        "summary": "Server-sent events of a scan",
        "description": "Needs the scope scans:write or reports:read.  Events: `item` (a ScanItemOut) as each image"
        " settles, `progress` (status and counts) on every change, then `done` (the ScanOut) when the scan is done,"
        " or `timeout` (the ScanOut) after 600 s; the stream then ends.",
        "tags": ["scans"],
        "security": SECURITY,
        "parameters": [SCAN_ID],
        "responses": _authenticated(
            {
                "200": {
                    "description": "the event stream",
                    "headers": {
                        "Cache-Control": {"description": "no-cache", "required": True, "schema": {"type": "string"}}
                    },
                    "content": {"text/event-stream": {"schema": {"$ref": SCHEMA_REF.format(model="ScanEvent")}}},
                },
                "404": _ref_response("ScanNotFound"),
            }
        ),
    }


def get_image() -> dict[str, Any]:
    return {
        "operationId": "getImage",
        "summary": "An image this tenant submitted: its sightings and verdicts",
        "description": "Needs the scope reports:read.",
        "tags": ["images"],
        "security": SECURITY,
        "parameters": [SHA256],
        "responses": _authenticated(
            {
                "200": {"description": "the image", "content": _json("ImageOut")},
                "404": _problem(
                    "not 64 hex digits, or an image this key's tenant has not submitted (image_not_found)",
                    "ImageNotFound",
                ),
            }
        ),
    }


def post_feedback() -> dict[str, Any]:
    return {
        "operationId": "postFeedback",
        "summary": "Report a verdict as wrong: a false flag, or a missed perturbation",
        "description": "Needs the scope scans:write. Kept against the versions the server serves now.",
        "tags": ["images"],
        "security": SECURITY,
        "parameters": [SHA256],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model="FeedbackRequest")}}},
        },
        "responses": _authenticated(
            {
                "201": {"description": "the feedback was recorded", "content": _json("FeedbackOut")},
                "404": _problem("an image this key's tenant has not submitted (image_not_found)", "ImageNotFound"),
                "413": _problem("the body exceeds 256 KiB (body_too_large)", "BodyTooLarge"),
                "415": _problem("the body is not application/json (unsupported_media_type)", "UnsupportedMediaType"),
                "422": _problem("the body is invalid (invalid_body)", "InvalidFeedback"),
            }
        ),
    }


def flagged_report() -> dict[str, Any]:
    # Empty values count as absent, so the parameters that take a time or a number also take "".
    time_schema = {"anyOf": [{"type": "string", "format": "date-time"}, EMPTY]}
    next_page = {
        "Link": {
            "description": 'the next page: <URL>; rel="next" (only when a full page was returned)',
            "required": False,
            "schema": {"type": "string"},
        },
        "X-Next-Cursor": {
            "description": "the cursor of the next page (only when a full page was returned)",
            "required": False,
            "schema": {"type": "string", "pattern": f"^{CURSOR}$", "maxLength": CURSOR_MAX_LENGTH},
        },
    }
    return {
        "operationId": "getFlaggedReport",
        "summary": "Flagged images this tenant met, newest first",
        "description": "Needs the scope reports:read.  JSON by default; CSV with format=csv, or with"
        " `Accept: text/csv` when format is not given.  Keyset pagination: a full page carries the next page's"
        " cursor (next_cursor, X-Next-Cursor and Link).  Empty values of site, since, until, min_score, label and"
        " cursor count as absent.",
        "tags": ["reports"],
        "security": SECURITY,
        "parameters": [
            _query("site", "only sightings on pages of this host", {"type": "string"}),
            _query("since", "only sightings at or after this time (ISO 8601; UTC when no offset)", time_schema),
            _query("until", "only sightings before this time (ISO 8601; UTC when no offset)", time_schema),
            _query(
                "min_score", "only verdicts with at least this combined score", {"anyOf": [{"type": "number"}, EMPTY]}
            ),
            _query("label", "only verdicts with this predicted label (`none`: no confident class)", {"type": "string"}),
            _query(
                "false_flag",
                "true: only images this tenant called a false flag; false: none of them (default: all, marked)",
                {"type": "string", "enum": ["true", "false"]},
            ),
            _query(
                "cursor",
                "the next_cursor of the previous page",
                {"type": "string", "pattern": f"^(?:{CURSOR})?$", "maxLength": CURSOR_MAX_LENGTH},
            ),
            _query(
                "limit",
                "the page size",
                {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            ),
            _query("format", "the response format", {"type": "string", "enum": ["json", "csv"], "default": "json"}),
            _query("model_version", "default: the served model version", {"type": "string"}),
            _query("calibration_version", "default: the served calibration version", {"type": "string"}),
        ],
        "responses": _authenticated(
            {
                "200": {
                    "description": "a page of the report",
                    "headers": next_page,
                    "content": {
                        **_json("FlaggedReport"),
                        "text/csv": {
                            "schema": {
                                "type": "string",
                                "description": "a header row (the FlaggedRow fields), then one row per item",
                            }
                        },
                    },
                },
                "422": _problem(
                    "a parameter is invalid (invalid_parameter) or the cursor is not one this API issued"
                    " (invalid_cursor)",
                    "InvalidReportParameter",
                ),
            }
        ),
    }


def whoami() -> dict[str, Any]:
    return {
        "operationId": "getKey",
        "summary": "The API key this request carries (never its secret)",
        "description": "Any valid key may call it: clients check their key with it before they start work.",
        "tags": ["keys"],
        "security": SECURITY,
        "responses": _authenticated({"200": {"description": "the key", "content": _json("KeyOut")}}),
    }


def healthz() -> dict[str, Any]:
    return {
        "operationId": "getHealth",
        "summary": "Health of the service",
        "description": "`ok` when the database answers, the broker answers and pending work is being consumed;"
        " `degraded` when work waits longer than the requeue interval; `down` without a database.",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {"description": "ok or degraded", "content": _json("Health")},
            "503": {"description": "down: the database does not answer", "content": _json("Health")},
        },
    }


def metrics() -> dict[str, Any]:
    return {
        "operationId": "getMetrics",
        "summary": "Prometheus metrics",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {
                "description": "the Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


def openapi_operation() -> dict[str, Any]:
    return {
        "operationId": "getOpenapi",
        "summary": "This document",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {
                "description": "the OpenAPI document",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }


# --- audits -------------------------------------------------------------------------------------------------------

AUDIT_ID = {
    "name": "audit_id",
    "in": "path",
    "required": True,
    "description": "the id of an audit of this key's tenant",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_AUDIT_NOT_FOUND = "no such audit for this key's tenant (audit_not_found)"


def _audit_operation(operation_id: str, summary: str, scope: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": f"Needs the scope {scope}.",
        "tags": ["audits"],
        "security": SECURITY,
        "responses": _authenticated(responses),
    }


def create_audit() -> dict[str, Any]:
    operation = _audit_operation(
        "createAudit",
        "Audit a site on a schedule",
        "scans:write",
        {
            "201": {"description": "the audit", "content": _json("AuditOut")},
            "413": _problem("the body exceeds 256 KiB (body_too_large)", "BodyTooLarge"),
            "415": _problem("the body is not application/json (unsupported_media_type)", "UnsupportedMediaType"),
            "422": _problem(
                "an invalid body or webhook (invalid_body), schedule (invalid_schedule) or start URL"
                " (invalid_start_url; or, for the start URL and the webhook URL as for image URLs, bad_url,"
                " blocked_address, blocked_port), or an"
                " include/exclude regex that is not valid RE2 syntax (invalid_pattern), or a schedule more frequent"
                " than audit_min_interval_s (schedule_too_frequent)",
                "InvalidAudit",
            ),
        },
    )
    operation["requestBody"] = {"required": True, "content": _json("AuditRequest")}
    return operation


def list_audits() -> dict[str, Any]:
    return _audit_operation(
        "listAudits",
        "The tenant's audits",
        "reports:read",
        {"200": {"description": "audits", "content": _json("AuditList")}},
    )


def delete_audit() -> dict[str, Any]:
    operation = _audit_operation(
        "deleteAudit",
        "Delete an audit and its runs",
        "scans:write",
        {"204": {"description": "deleted"}, "404": _problem(_AUDIT_NOT_FOUND, "AuditNotFound")},
    )
    operation["parameters"] = [AUDIT_ID]
    return operation


def list_audit_runs() -> dict[str, Any]:
    operation = _audit_operation(
        "listAuditRuns",
        "The runs of an audit, newest first, with the diff counts against the run before",
        "reports:read",
        {
            "200": {"description": "runs", "content": _json("AuditRunList")},
            "404": _problem(_AUDIT_NOT_FOUND, "AuditNotFound"),
        },
    )
    operation["parameters"] = [AUDIT_ID]
    return operation


def trigger_audit_run() -> dict[str, Any]:
    operation = _audit_operation(
        "triggerAuditRun",
        "Run an audit now",
        "scans:write",
        {
            "202": {"description": "the run took the lock and started", "content": _json("AuditRunOut")},
            "404": _problem(_AUDIT_NOT_FOUND, "AuditNotFound"),
            "409": _problem("a run of this audit is going on (already_running)", "AlreadyRunning"),
        },
    )
    operation["parameters"] = [AUDIT_ID]
    return operation


# --- the dashboard ------------------------------------------------------------------------------------------------

RAW_IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "application/octet-stream"]


def get_image_raw() -> dict[str, Any]:
    operation = get_image()
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    fixed = {"required": True, "schema": {"type": "string"}}
    operation.update(
        operationId="getImageRaw",
        summary="The stored bytes of an image this tenant submitted (the dashboard's thumbnails)",
        description="Needs the scope reports:read.  The Content-Type follows the image's format; the bytes are"
        " served with a sandboxing Content-Security-Policy and nosniff.",
    )
    operation["responses"]["200"] = {
        "description": "the image bytes",
        "headers": {
            "Cache-Control": {**fixed, "description": "private, max-age=3600"},
            "Content-Security-Policy": {**fixed, "description": "default-src 'none'; sandbox"},
            "X-Content-Type-Options": {**fixed, "description": "nosniff"},
        },
        "content": {media_type: binary for media_type in RAW_IMAGE_TYPES},
    }
    return operation


def dashboard_asset(operation_id: str, summary: str, media_type: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": "A static file of the reports dashboard; no key is needed (the page asks for one and sends"
        " it to the /v1/ operations).",
        "tags": ["dashboard"],
        "security": [],
        "responses": {
            "200": {
                "description": summary,
                "headers": {
                    "Content-Security-Policy": {
                        "description": "scripts and styles only from this origin; images also from blob: and data:",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                },
                "content": {media_type: {"schema": {"type": "string"}}},
            }
        },
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI document of every route of ``routes.add_routes``."""
    document = _document()
    for name, schema in document["components"]["schemas"].items():
        if name.endswith(("Request", "Upload")):
            _storable_text(schema)
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _storable_text(parameter.get("schema", {}))
    return document


def _storable_text(schema: Any) -> None:
    """Free text of requests (no pattern, enum or format of its own) is documented without NUL characters."""
    if isinstance(schema, list):
        for item in schema:
            _storable_text(item)
        return
    if not isinstance(schema, dict):
        return
    free = not {"pattern", "enum", "const", "format", "contentMediaType"} & set(schema)
    if schema.get("type") == "string" and free:
        schema["pattern"] = NO_NUL
    for key in ("properties", "items", "anyOf", "oneOf", "allOf", "additionalProperties"):
        value = schema.get(key)
        _storable_text(list(value.values()) if key == "properties" and isinstance(value, dict) else value)


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Scans images for adversarial perturbations.  Errors are RFC 9457 problem documents"
            " (application/problem+json) with a stable `code`.  Every /v1/ operation needs an API key sent as"
            " `Authorization: Bearer rsk_<id>_<secret>` and is rate limited per key.",
        },
        "tags": [
            {"name": "scans", "description": "submitting images and following their analysis"},
            {"name": "images", "description": "what is known about an image"},
            {"name": "reports", "description": "reports over the tenant's scans"},
            {"name": "keys", "description": "the calling API key"},
            {"name": "audits", "description": "scheduled audits of a site and their runs"},
            {"name": "operations", "description": "health, metrics and this document"},
            {"name": "dashboard", "description": "the reports dashboard: a web page that signs in with a key"},
        ],
        "paths": {
            "/v1/scans": {"post": create_scan()},
            "/v1/scans/{scan_id}": {"get": get_scan()},
            "/v1/scans/{scan_id}/events": {"get": stream_scan_events()},
            "/v1/images/{sha256}": {"get": get_image()},
            "/v1/images/{sha256}/feedback": {"post": post_feedback()},
            "/v1/images/{sha256}/raw": {"get": get_image_raw()},
            "/v1/reports/flagged": {"get": flagged_report()},
            "/v1/me": {"get": whoami()},
            "/v1/audits": {"post": create_audit(), "get": list_audits()},
            "/v1/audits/{audit_id}": {"delete": delete_audit()},
            "/v1/audits/{audit_id}/runs": {"get": list_audit_runs(), "post": trigger_audit_run()},
            "/healthz": {"get": healthz()},
            "/metrics": {"get": metrics()},
            "/openapi.json": {"get": openapi_operation()},
            "/": {"get": dashboard_asset("getRoot", "a page linking to the dashboard and this document", "text/html")},
            "/dashboard": {"get": dashboard_asset("getDashboard", "the dashboard page", "text/html")},
            "/dashboard/dashboard.js": {
                "get": dashboard_asset("getDashboardScript", "the dashboard's script", "text/javascript")
            },
            "/dashboard/dashboard.css": {
                "get": dashboard_asset("getDashboardStyle", "the dashboard's style sheet", "text/css")
            },
        },
        "components": {
            "schemas": component_schemas(),
            "responses": component_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "rsk_<id>_<secret>",
                    "description": "an API key (`scanner keys create`): Authorization: Bearer rsk_<id>_<secret>",
                }
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanner.api.openapi", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated one")
    parser.add_argument("--output", type=Path, default=OPENAPI_PATH, help=f"default: {OPENAPI_PATH}")
    args = parser.parse_args(argv)
    text = render(build_document())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != text:
            state = "is missing" if current is None else "is out of date"
            print(f"{args.output} {state}: run `python -m scanner.api.openapi` to regenerate it", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
