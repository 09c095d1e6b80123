"""What the Spakky test apps share: the event class, settings from arguments, bootstrap.

Adapted from a researcher's scripts that ran spakky 6.4.0 here (see docs/adopting.md,
"What is tested"). The apps are real Spakky applications: plugins loaded by name,
pods resolved by the container, settings read by pydantic-settings from the
environment (prefixes SPAKKY_SQLALCHEMY__, SPAKKY_RABBITMQ__, SPAKKY_OUTBOX__).

The event class is `OrderPlaced` unless `--event NAME` renames it: spakky uses the class
name as the event name, the RabbitMQ routing key and the consumer's queue name, so a
name of its own per test run keeps parallel runs on one broker apart.
"""

import argparse
import os
import sys

from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext
from spakky.core.application.plugin import Plugin
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--event", default="OrderPlaced", help="the event class name (queue and routing key)")
    return ap


def event_class(name: str) -> type:
    """`OrderPlaced` under the class name `name` (spakky reads type(event).__name__)."""

    class OrderPlaced(AbstractIntegrationEvent):
        order_id: int
        total_cents: int
        customer: str

    OrderPlaced.__name__ = name
    OrderPlaced.__qualname__ = name
    return immutable(OrderPlaced)


def set_database(url: str) -> str:
    """A postgres:// URL (as the relay's config has it) as SQLAlchemy + psycopg 3 wants it.

    The same URL feeds spakky-sqlalchemy's sync and async engines; psycopg serves both.
    """
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme):]
    os.environ["SPAKKY_SQLALCHEMY__CONNECTION_STRING"] = url
    return url


def set_rabbitmq() -> None:
    """spakky-rabbitmq's settings (all required, no defaults in 6.4.0); the vhost is always `/`."""
    os.environ.setdefault("SPAKKY_RABBITMQ__USE_SSL", "false")
    os.environ.setdefault("SPAKKY_RABBITMQ__HOST", "127.0.0.1")
    os.environ.setdefault("SPAKKY_RABBITMQ__PORT", "5672")
    os.environ.setdefault("SPAKKY_RABBITMQ__USER", "guest")
    os.environ.setdefault("SPAKKY_RABBITMQ__PASSWORD", "guest")


BASE_PLUGINS = {"spakky-data", "spakky-domain", "spakky-tracing", "spakky-sqlalchemy"}


def add_event_pods(app: SpakkyApplication) -> SpakkyApplication:
    """What spakky.event.main:initialize registers, minus DirectEventBus/AsyncDirectEventBus.

    Workaround for a spakky 6.4.0 DI bug: with the spakky-event AND spakky-outbox plugins
    loaded there are two IEventBus pods (DirectEventBus and the @Primary OutboxEventBus).
    When several pods match, the container resolves a constructor argument by its
    *parameter name* ("bus"; core/application/application_context.py, qualify_pod:
    `if name is not None: return pod.name == name`), so @Primary is never consulted,
    EventPublisher gets None and app.start() raises UnexpectedDependencyTypeInjectedError.
    """
    from spakky.event.aspects.transactional_event_publishing import (
        AsyncTransactionalEventPublishingAspect,
        TransactionalEventPublishingAspect,
    )
    from spakky.event.mediator.domain_event_mediator import AsyncEventMediator, EventMediator
    from spakky.event.post_processor import EventHandlerRegistrationPostProcessor
    from spakky.event.publisher.domain_event_publisher import AsyncEventPublisher, EventPublisher

    for pod in (
        AsyncTransactionalEventPublishingAspect,
        TransactionalEventPublishingAspect,
        EventMediator,
        AsyncEventMediator,
        EventPublisher,
        AsyncEventPublisher,
        EventHandlerRegistrationPostProcessor,
    ):
        app.add(pod)
    return app


def add_outbox_pods(app: SpakkyApplication, relay: bool) -> SpakkyApplication:
    """spakky.outbox.main:initialize, with or without its two relay background services."""
    from spakky.outbox.bus.outbox_event_bus import AsyncOutboxEventBus, OutboxEventBus
    from spakky.outbox.common.config import OutboxConfig
    from spakky.outbox.relay.relay import (
        AsyncOutboxRelayBackgroundService,
        OutboxRelayBackgroundService,
    )

    app.add(OutboxConfig).add(OutboxEventBus).add(AsyncOutboxEventBus)
    if relay:
        app.add(OutboxRelayBackgroundService).add(AsyncOutboxRelayBackgroundService)
    return app


def new_app(plugins: set[str]) -> SpakkyApplication:
    """Always with `include`: without it every installed spakky plugin is loaded."""
    return SpakkyApplication(ApplicationContext()).load_plugins(include={Plugin(name=p) for p in plugins})


def say(**fields) -> None:
    """One JSON line on stdout, flushed (the test reads them)."""
    import json

    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
