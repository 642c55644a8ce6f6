"""What a request handler needs of the running application: its services, the authenticated key, the scope
check, the JSON body and a worker thread.  The route modules import this module; only the factory
(``scanner.api.app``) imports the route modules, so the import graph has no cycle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from scanner.api.bodies import JSON_BODY_BYTES, read_capped
from scanner.api.dispatch import Dispatcher
from scanner.api.metrics import Metrics
from scanner.api.problems import Problem
from scanner.api.ratelimit import RateLimiter
from scanner.api.text import check_tree
from scanner.db.models import ApiKey
from scanner.settings import Settings
from scanner.versions import ServedVersions

BodyModel = TypeVar("BodyModel", bound=BaseModel)


@dataclass
class Services:
    settings: Settings
    versions: ServedVersions
    metrics: Metrics
    limiter: RateLimiter
    auth_failures: RateLimiter  # per client address: a wrong key costs a token, so guessing meets 429s
    db: Engine | None = None
    sessions: sessionmaker[Session] | None = None
    dispatcher: Dispatcher | None = None
    _last_used: dict[str, float] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
KEY = web.RequestKey("api_key", ApiKey)  # the authenticated key of a /v1/ request


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def require_scope(request: web.Request, *scopes: str) -> ApiKey:
    """The request's key, if it holds one of ``scopes``."""
    key: ApiKey = request[KEY]
    if not set(scopes) & set(key.scopes.split()):
        raise Problem(403, "insufficient_scope", f"this key lacks the scope {' or '.join(scopes)}")
    return key


async def json_body(request: web.Request, model: type[BodyModel]) -> BodyModel:
    """The request's JSON body validated by ``model``: 415 when it is not JSON, 422 listing what is wrong."""
    if request.content_type != "application/json":
        raise Problem(415, "unsupported_media_type", "send application/json")
    try:
        body = model.model_validate_json(await read_capped(request, JSON_BODY_BYTES))  # parsed on the loop: bounded
    except ValidationError as err:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())
        raise Problem(422, "invalid_body", detail) from err
    check_tree(body.model_dump())
    return body
