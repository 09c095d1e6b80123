"""Spakky's own outbox relay, left running as an app that loads spakky-outbox would run it:
both OutboxRelayBackgroundService (sync) and AsyncOutboxRelayBackgroundService, over
spakky-sqlalchemy's storage, sending through spakky-rabbitmq's transports.

  relay.py --database URL [--event NAME]

Polls every SPAKKY_OUTBOX__POLLING_INTERVAL_SECONDS (set to 0.05 here unless given).
Counts each finished claim of pending rows (fetch_pending) and each transport send.
Prints {"started": true} when up, {"polls": N, ...} every second, and on SIGTERM a last
line {"polls": N, "polls_sync": .., "polls_async": .., "claimed": C, "sends": S, "stopped": true}.
"""

import os
import signal
import threading

from common import BASE_PLUGINS, add_event_pods, add_outbox_pods, new_app, parser, say, set_database, set_rabbitmq

ap = parser(__doc__)
ap.add_argument("--database", required=True)
args = ap.parse_args()
set_database(args.database)
set_rabbitmq()
os.environ.setdefault("SPAKKY_OUTBOX__POLLING_INTERVAL_SECONDS", "0.05")

from spakky.plugins.rabbitmq.event.transport import (  # noqa: E402
    AsyncRabbitMQEventTransport,
    RabbitMQEventTransport,
)
from spakky.plugins.sqlalchemy.outbox.storage import (  # noqa: E402
    AsyncSqlAlchemyOutboxStorage,
    SqlAlchemyOutboxStorage,
)

lock = threading.Lock()
counts = {"polls_sync": 0, "polls_async": 0, "claimed": 0, "sends": 0}


def bump(key: str, n: int = 1) -> None:
    with lock:
        counts[key] += n


# Count, without changing what they do, the storage's claims and the transport's sends.
_fetch, _afetch = SqlAlchemyOutboxStorage.fetch_pending, AsyncSqlAlchemyOutboxStorage.fetch_pending
_send, _asend = RabbitMQEventTransport.send, AsyncRabbitMQEventTransport.send


def fetch_pending(self, limit, max_retry):
    rows = _fetch(self, limit, max_retry)
    bump("polls_sync")
    bump("claimed", len(rows))
    return rows


async def afetch_pending(self, limit, max_retry):
    rows = await _afetch(self, limit, max_retry)
    bump("polls_async")
    bump("claimed", len(rows))
    return rows


def send(self, event_name, payload, headers):
    bump("sends")
    return _send(self, event_name, payload, headers)


async def asend(self, event_name, payload, headers):
    bump("sends")
    return await _asend(self, event_name, payload, headers)


SqlAlchemyOutboxStorage.fetch_pending = fetch_pending
AsyncSqlAlchemyOutboxStorage.fetch_pending = afetch_pending
RabbitMQEventTransport.send = send
AsyncRabbitMQEventTransport.send = asend

app = new_app(BASE_PLUGINS | {"spakky-rabbitmq"})
add_event_pods(app)
add_outbox_pods(app, relay=True)
app.start()  # starts every IService/IAsyncService pod: both relays (and the idle consumers)
say(started=True)


def report(**extra) -> None:
    with lock:
        snapshot = dict(counts)
    say(polls=snapshot["polls_sync"] + snapshot["polls_async"], **snapshot, **extra)


stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
signal.signal(signal.SIGTERM, lambda *_: stop.set())
while not stop.wait(1.0):
    report()
app.stop()
report(stopped=True)
