"""The aiohttp application: services, middlewares (problems, metrics, CORS, authentication and rate limits) and
start-up/shut-down.  Routes live in ``scanner.api.routes``, ``scanner.api.audits`` and ``scanner.api.dashboard``;
what their handlers need of the application is ``scanner.api.context``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from scanner.api import audits, dashboard, health, routes
from scanner.api.context import KEY, SERVICES, Services, in_thread, services
from scanner.api.dispatch import make_dispatcher
from scanner.api.malformed import ProtocolLog
from scanner.api.metrics import Metrics
from scanner.api.problems import Problem, from_http_exception
from scanner.api.ratelimit import RateLimiter
from scanner.api.text import is_clean
from scanner.db import keys, migrate
from scanner.db.models import ApiKey, utcnow
from scanner.db.session import make_sessionmaker
from scanner.settings import Settings
from scanner.versions import served_versions

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LAST_USED_EVERY_S = 60.0  # last_used_at is written at most this often per key: reads stay read-only


# --- middlewares (create_app orders them: CORS, problems, metrics, authentication) ------------------------


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as a problem document; nothing else escapes, not even a bug."""
    try:
        return await handler(request)
    except Problem as problem:
        services(request).metrics.refusals.labels(problem.code).inc()
        return problem.response()
    except web.HTTPException as err:
        if err.status < 400:
            raise
        problem = from_http_exception(err)
        services(request).metrics.refusals.labels(problem.code).inc()
        return problem.response()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return Problem(500, "internal_error", "an unexpected error occurred; it has been logged").response()


@web.middleware
async def text_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A query with NUL or undecodable text filters nothing we store: 422 (the report filters).  Path
    parameters are checked by their routes, which answer their own 404."""
    for name, value in request.query.items():
        if not (is_clean(name) and is_clean(value)):
            raise Problem(422, "invalid_parameter", "a query parameter contains a NUL character or invalid text")
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = services(request).metrics
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as err:
        status = err.status
        raise
    except Problem as problem:
        status = problem.status
        raise
    finally:
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    return any(origin == pattern or (pattern.endswith("*") and origin.startswith(pattern[:-1])) for pattern in allowed)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the browser extension's origin; preflights are answered before authentication."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin_allowed(origin, services(request).settings.cors_origins)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response = web.Response(status=204)
        if allowed:
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                }
            )
    else:
        response = await handler(request)  # errors are problem responses by now (inner middleware)
    if allowed and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Link, Location, Retry-After, X-Next-Cursor"
    response.headers.add("Vary", "Origin")
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/v1/`` needs ``Authorization: Bearer <key>``; then the key's rate limit applies."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    svc = services(request)
    try:
        key = await _authenticated_key(request, svc)
    except Problem as problem:
        if problem.status == 401:
            _count_failure(svc, request)
        raise
    wait = svc.limiter.take(key.id)
    if wait > 0:
        raise Problem(429, "rate_limited", "too many requests for this key", {"Retry-After": str(int(wait) + 1)})
    request[KEY] = key
    return await handler(request)


async def _authenticated_key(request: web.Request, svc: Services) -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "missing_key", "send the API key as 'Authorization: Bearer <key>'", _challenge())
    return await in_thread(_authenticate, svc, token.strip())


def _count_failure(svc: Services, request: web.Request) -> None:
    """A failed authentication costs the client address a token; without one left, 429 instead of 401."""
    wait = svc.auth_failures.take(request.remote or "unknown")
    if wait > 0:
        raise Problem(
            429,
            "rate_limited",
            "too many failed authentications from this address",
            {"Retry-After": str(int(wait) + 1)},
        )


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="scanner"'}


def _authenticate(svc: Services, token: str) -> ApiKey:
    assert svc.sessions is not None
    with svc.sessions() as session:
        try:
            key = keys.authenticate(session, token)
        except keys.AuthError as err:
            raise Problem(401, err.code, err.message, _challenge()) from err
        now = time.monotonic()
        if now - svc._last_used.get(key.id, -LAST_USED_EVERY_S) >= LAST_USED_EVERY_S:
            svc._last_used[key.id] = now
            key.last_used_at = utcnow()
            session.commit()
        session.expunge(key)
        return key


# --- the application ----------------------------------------------------------------------------------------


def create_app(settings: Settings, engine: Any = None) -> web.Application:
    """The API.  ``engine``: an already loaded ``worker.engine.Engine`` for the embedded mode (tests share one);
    by default the embedded mode loads the bundles named in ``settings``."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"logger": ProtocolLog()},  # a request the HTTP parser refuses is not echoed or logged
        middlewares=[cors_middleware, problem_middleware, metrics_middleware, auth_middleware, text_middleware],
    )
    app[SERVICES] = Services(
        settings=settings,
        versions=served_versions(settings),
        metrics=Metrics(),
        limiter=RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst),
        auth_failures=RateLimiter(settings.auth_failures_per_minute, settings.auth_failures_burst),
    )
    for module in (routes, audits, dashboard, health):
        module.add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        svc.db = await in_thread(migrate.open_current, settings)  # the one migration rule: see migrate
        svc.sessions = make_sessionmaker(svc.db)
        svc.dispatcher = make_dispatcher(settings, svc.sessions, engine)
        await svc.dispatcher.start()
        yield
        await svc.dispatcher.stop()
        svc.db.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app
