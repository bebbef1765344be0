"""Assemble the FastAPI application: settings, database, auth, error handling, routers.

Routers are listed here once, at build time (no registry that changes after start-up).
Domain packages contribute theirs through `DOMAIN_ROUTERS` as they grow.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from collectors.exposition import CollectorExposition
from dashboards.mount import mount_console
from fleet import api as fleet_api
from fleet import firmware_api, tenancy_api
from fleet.exposition import LeaseExposition
from kiln import __version__, passwords
from kiln.api import audit, health, sessions, tenants, tokens, users
from kiln.db import create_db_engine
from kiln.api.problems import install_error_handlers
from kiln.limits import BodySizeLimitMiddleware, NulCharacterMiddleware
from kiln.logs import configure_logging
from kiln.metrics import HttpMetrics, MetricsMiddleware
from kiln.oidc import OIDCVerifier
from kiln.request_context import RequestContextMiddleware
from kiln.settings import Settings
from kiln.telemetry import configure_tracing
from metering import api as metering_api
from metering.budgets import CarbonContext
from metering.exposition import BudgetExposition

SHELL_ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    tenants.router,
    users.router,
    tokens.router,
    sessions.router,
    audit.router,
)
DOMAIN_ROUTERS: tuple[APIRouter, ...] = (fleet_api.router, firmware_api.router, tenancy_api.router, metering_api.router)


def create_app(settings: Settings, engine: Engine | None = None, oidc: OIDCVerifier | None = None) -> FastAPI:
    """A ready-to-serve Kiln application. The schema is checked by the caller (`kiln serve`)."""
    configure_logging(settings.log_level, settings.log_format, replace=False)  # `kiln demo` sets its own first
    configure_tracing(settings.otlp_endpoint, "kiln-api")
    app = FastAPI(
        title="Kiln",
        version=__version__,
        summary="Provision, watch, meter, price and show a bare-metal GPU fleet.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    passwords.configure(settings)
    app.state.engine = engine or create_db_engine(settings.resolved_database_url)
    app.state.oidc = oidc or (OIDCVerifier(settings) if settings.oidc_enabled else None)
    app.state.registry = CollectorRegistry()
    stale_after = timedelta(seconds=3 * settings.ipmi_interval)
    for exposition in (CollectorExposition(app.state.engine, stale_after=stale_after),
                       LeaseExposition(app.state.engine), BudgetExposition(app.state.engine, CarbonContext.of(settings))):
        app.state.registry.register(exposition)
    install_error_handlers(app)
    app.add_middleware(NulCharacterMiddleware)  # inside the size limit: it reads bodies the limit has let through
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(app.state.registry))
    app.add_middleware(RequestContextMiddleware)  # outermost: even a refused body gets a request id
    for router in SHELL_ROUTERS + DOMAIN_ROUTERS:
        app.include_router(router)
    mount_console(app)  # the Dash console at `/`, after the API routes (built on its first request)
    return app
