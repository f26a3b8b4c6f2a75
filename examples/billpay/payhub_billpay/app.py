"""The app factory: settings, the hub client (backend-for-frontend), the store, sessions, CSRF, templates.

The browser only ever talks to this app. The app holds the tenant's client certificate and calls the
hub through ``payhub_client``; each signed-in user is the hub customer ``cus_<username>``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from payhub_client import AsyncPayhub

from .i18n import LANGUAGES, html_lang, translator
from .money import format_money
from .security import SessionCodec, csrf_ok, new_csrf_token
from .store import Store, User

log = logging.getLogger("payhub_billpay")

PACKAGE_DIR = Path(__file__).resolve().parent
SESSION_COOKIE = "bp_session"
DEVICE_COOKIE = "bp_device"


@dataclass(frozen=True, slots=True)
class AppConfig:
    hub_url: str
    cert: Path
    key: Path
    cacert: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    # Where the hub can reach this app's webhook receiver; None: http://<host>:<port>/webhooks/payhub.
    webhook_url: str | None = None
    register_webhook: bool = True

    @property
    def public_webhook_url(self) -> str:
        return self.webhook_url or f"http://{self.host}:{self.port}/webhooks/payhub"


@dataclass(slots=True)
class Runtime:
    """What the handlers share; one per application."""

    config: AppConfig
    store: Store
    sessions: SessionCodec
    hub: AsyncPayhub | None = None
    webhook_secrets: list[str] = field(default_factory=list)
    prefs_cache: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)


RUNTIME = web.AppKey("runtime", Runtime)
SESSION: web.RequestKey[dict[str, Any]] = web.RequestKey("session", dict)
SESSION_DIRTY = web.RequestKey("session_dirty", bool)
DEVICE_ID = web.RequestKey("device_id", str)
USER = web.RequestKey("user", User)
PREFS_TTL = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def hub(request: web.Request) -> AsyncPayhub:
    client = request.app[RUNTIME].hub
    assert client is not None, "hub client not started"
    return client


# ---- sessions --------------------------------------------------------------------------------------


def session(request: web.Request) -> dict[str, Any]:
    return request[SESSION]


def signed_in_user(request: web.Request) -> str | None:
    sess = session(request)
    return sess.get("user") if sess.get("stage") == "full" else None


def start_session(request: web.Request, **values: Any) -> None:
    """A new session (new CSRF token) on every privilege change: no session fixation."""
    request[SESSION] = {"csrf": new_csrf_token(), "iat": int(time.time()), **values}
    request[SESSION_DIRTY] = True


def mark_dirty(request: web.Request) -> None:
    request[SESSION_DIRTY] = True


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rt = runtime(request)
    raw = request.cookies.get(SESSION_COOKIE)
    sess = rt.sessions.loads(raw) if raw else None
    request[SESSION_DIRTY] = sess is None
    request[SESSION] = sess or {"csrf": new_csrf_token(), "iat": int(time.time())}
    device = request.cookies.get(DEVICE_COOKIE)
    request[DEVICE_ID] = device or f"dev_{secrets.token_hex(8)}"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if not isinstance(exc, web.HTTPMove):
            raise
        response = web.Response(status=exc.status, headers={"Location": str(exc.location)})
    secure = request.secure
    if request[SESSION_DIRTY]:
        response.set_cookie(
            SESSION_COOKIE,
            rt.sessions.dumps(request[SESSION]),
            httponly=True,
            samesite="Lax",
            secure=secure,
            path="/",
        )
    if device is None:
        response.set_cookie(
            DEVICE_COOKIE,
            request[DEVICE_ID],
            httponly=True,
            samesite="Lax",
            secure=secure,
            path="/",
            max_age=400 * 24 * 3600,
        )
    return response


CSRF_EXEMPT = ("/webhooks/payhub",)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in CSRF_EXEMPT:
        form = await request.post()
        given = form.get("csrf_token")
        if not csrf_ok(session(request).get("csrf"), given if isinstance(given, str) else None):
            raise web.HTTPForbidden(
                text="The form expired or did not come from this site. Go back and try again."
            )
    return await handler(request)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.path != "/static/app.css":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def login_required(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        username = signed_in_user(request)
        user = runtime(request).store.user(username) if username else None
        if user is None:
            raise web.HTTPSeeOther("/login")
        request[USER] = user
        return await handler(request)

    wrapped.__name__ = handler.__name__
    return wrapped


# ---- preferences applied server-side ------------------------------------------------------------------


DEFAULT_PREFS: dict[str, Any] = {"theme": "system", "font_scale": 1.0, "locale": "en"}


async def preferences_for(request: web.Request, username: str) -> dict[str, Any]:
    rt = runtime(request)
    cached = rt.prefs_cache.get(username)
    if cached and time.monotonic() - cached[0] < PREFS_TTL:
        return cached[1]
    try:
        prefs = (await hub(request).preferences.get(f"cus_{username}")).to_dict()
    except Exception:  # the page still renders with defaults when the hub is slow or down
        log.warning("preferences unavailable for %s", username, exc_info=True)
        return dict(DEFAULT_PREFS)
    rt.prefs_cache[username] = (time.monotonic(), prefs)
    return prefs


async def template_context(request: web.Request) -> dict[str, Any]:
    username = signed_in_user(request)
    prefs = await preferences_for(request, username) if username else dict(DEFAULT_PREFS)
    lang = html_lang(str(prefs.get("locale") or "en"))
    theme = prefs.get("theme") or "system"
    scale = float(prefs.get("font_scale") or 1.0)
    return {
        "username": username,
        "csrf_token": session(request).get("csrf", ""),
        "prefs": prefs,
        "lang": lang,
        "theme": theme,
        "font_scale": f"{scale:.3g}",
        "t": translator(lang),
        "languages": LANGUAGES,
        "money": format_money,
        "path": request.path,
    }


# ---- lifecycle -----------------------------------------------------------------------------------------


async def hub_client_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    cfg = rt.config
    async with AsyncPayhub(url=cfg.hub_url, cert=cfg.cert, key=cfg.key, cacert=cfg.cacert) as client:
        rt.hub = client
        if cfg.register_webhook:
            endpoint = await client.webhook_endpoints.create(url=cfg.public_webhook_url, enabled_events=["*"])
            rt.webhook_secrets.append(endpoint.secret)
            log.info("webhook endpoint %s registered for %s", endpoint.id, cfg.public_webhook_url)
        try:
            yield
        finally:
            rt.hub = None
            if cfg.register_webhook:
                with contextlib.suppress(Exception):
                    await client.webhook_endpoints.delete(endpoint.id)


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    app[RUNTIME].store.close()


def create_app(config: AppConfig) -> web.Application:
    from . import views

    app = web.Application(middlewares=[security_headers, session_middleware, csrf_middleware])
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app[RUNTIME] = Runtime(
        config=config,
        store=Store(config.data_dir / "billpay.sqlite3"),
        sessions=SessionCodec.from_file(config.data_dir / "session.key"),
    )
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(PACKAGE_DIR / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
        context_processors=[template_context],
    )
    env.filters["money"] = format_money
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(hub_client_ctx)
    views.add_routes(app)
    app.router.add_static("/static", PACKAGE_DIR / "static")
    return app
