"""The OpenAPI 3.1 document of the API; the API serves the copy kept in the repository (``openapi.json``).

Two sources: what is written by hand (info, tags, every operation of the routes, the shared responses and the
schemas no model describes: uploads, events, problem documents) is data, ``openapi_parts.json``, with
``<<NAME>>`` tokens for the constants below; the schemas of the pydantic models of ``schemas.py`` are generated,
with what the handlers check beyond the models.  Free request text is then documented without NUL characters.

``python -m scanner.api.openapi`` writes that copy; ``python -m scanner.api.openapi --check`` exits 1 when it
differs from what the code would generate (the test suite checks the same).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic.json_schema import models_json_schema

from scanner.api.patterns import CRON, CURSOR, CURSOR_MAX_LENGTH, EVERY, HTTP_URL, NO_NUL, TARGET_URL
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
    Source,
)
from scanner.settings import MAX_IMAGES_PER_SCAN

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
PARTS_PATH = Path(__file__).with_name("openapi_parts.json")
SCHEMA_REF = "#/components/schemas/{model}"
MODELS = [
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
]
TOKEN = re.compile(r"<<([A-Z_]+)>>")


def constants() -> dict[str, Any]:
    """The values of the tokens of ``openapi_parts.json``: defined once, in code, for the document and the API."""
    return {
        "HTTP_URL": HTTP_URL,
        "CURSOR": CURSOR,
        "CURSOR_MAX_LENGTH": CURSOR_MAX_LENGTH,
        "MAX_IMAGES_PER_SCAN": MAX_IMAGES_PER_SCAN,
        "SOURCES": list(get_args(Source)),
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI document of every route ``scanner.api.app.create_app`` adds."""
    document = _fill(json.loads(PARTS_PATH.read_text(encoding="utf-8")), constants())
    written = document["components"]["schemas"]
    generated = model_schemas()
    if set(written) & set(generated):
        raise ValueError(
            f"openapi_parts.json writes schemas a model generates: {sorted(set(written) & set(generated))}"
        )
    # A progress event carries the scan's status: the same schema as ScanOut's, whatever the model says.
    written["ScanProgress"]["properties"]["status"] = copy.deepcopy(generated["ScanOut"]["properties"]["status"])
    document["components"]["schemas"] = {**generated, **written}
    for name, schema in document["components"]["schemas"].items():
        if name.endswith(("Request", "Upload")):
            _storable_text(schema)
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _storable_text(parameter.get("schema", {}))
    return document


def model_schemas() -> dict[str, Any]:
    """The models' JSON schemas (``$defs`` become ``components/schemas``), with what the handlers check beyond
    the models."""
    _, top = models_json_schema(MODELS, ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = copy.deepcopy(top["$defs"])
    _scan_request(schemas["ScanRequest"]["properties"])
    _audit_request(schemas["AuditRequest"])
    return schemas


def _scan_request(properties: dict[str, Any]) -> None:
    """The page URL is an absolute http(s) URL; the image URLs are capped by max_images_per_scan."""
    page_url = next(branch for branch in properties["page_url"]["anyOf"] if branch.get("type") == "string")
    page_url["pattern"] = f"^{HTTP_URL}$"
    properties["page_url"]["description"] += " (an absolute http(s) URL)"
    properties["image_urls"]["maxItems"] = MAX_IMAGES_PER_SCAN
    properties["image_urls"]["description"] += (
        f"; at most max_images_per_scan (default {MAX_IMAGES_PER_SCAN}); a URL that cannot be fetched or is not"
        " an image becomes a failed item of the scan"
    )


def _audit_request(schema: dict[str, Any]) -> None:
    """Exactly one of every and cron, in the forms the API accepts; a webhook needs its secret (and the reverse)."""
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


def _fill(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with its tokens replaced: a string that is one token becomes the constant itself (a number, a
    list), a token inside a string its text."""
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    if not isinstance(value, str):
        return value
    if (whole := TOKEN.fullmatch(value)) is not None:
        return copy.deepcopy(values[whole.group(1)])
    return TOKEN.sub(lambda match: str(values[match.group(1)]), value)


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
