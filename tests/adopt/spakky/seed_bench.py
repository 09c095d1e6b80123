"""The seed's real relay as a benchmark peer: spakky-outbox's
OutboxRelayBackgroundService (the sync one, as an app that loads
spakky-outbox starts it; optionally the async one too) over
spakky-sqlalchemy's storage, sending to a transport that does nothing, until
no row of spakky_event_outbox is pending (published_at IS NULL).

  seed_bench.py --database URL --poll SECONDS [--mode sync|both] [--timeout S]

Prints one JSON line: {"rows": N, "seconds": S, "rows_per_s": R, "poll_s": P,
"mode": M, "batch_size": B, "drained": true|false}.
"""

import os
import threading
import time

from common import BASE_PLUGINS, add_event_pods, new_app, parser, say, set_database

ap = parser(__doc__)
ap.add_argument("--database", required=True)
ap.add_argument("--poll", type=float, required=True)
ap.add_argument("--mode", choices=["sync", "both"], default="sync")
ap.add_argument("--timeout", type=float, default=600)
args = ap.parse_args()
url = set_database(args.database)
os.environ["SPAKKY_OUTBOX__POLLING_INTERVAL_SECONDS"] = str(args.poll)

from spakky.core.pod.annotations.pod import Pod  # noqa: E402
from spakky.event.event_publisher import IAsyncEventTransport, IEventTransport  # noqa: E402
from spakky.outbox.bus.outbox_event_bus import AsyncOutboxEventBus, OutboxEventBus  # noqa: E402
from spakky.outbox.common.config import OutboxConfig  # noqa: E402
from spakky.outbox.relay.relay import (  # noqa: E402
    AsyncOutboxRelayBackgroundService,
    OutboxRelayBackgroundService,
)
from sqlalchemy import create_engine, text  # noqa: E402

sent = [0]
lock = threading.Lock()


@Pod()
class NullTransport(IEventTransport):
    def send(self, event_name: str, payload: bytes, headers: dict[str, str]) -> None:
        with lock:
            sent[0] += 1


@Pod()
class AsyncNullTransport(IAsyncEventTransport):
    async def send(self, event_name: str, payload: bytes, headers: dict[str, str]) -> None:
        with lock:
            sent[0] += 1


app = new_app(set(BASE_PLUGINS))
add_event_pods(app)
app.add(OutboxConfig).add(OutboxEventBus).add(AsyncOutboxEventBus)
app.add(OutboxRelayBackgroundService)
if args.mode == "both":
    app.add(AsyncOutboxRelayBackgroundService)
app.add(NullTransport).add(AsyncNullTransport)

watch = create_engine(url.replace("+psycopg_async", "+psycopg"))


def pending() -> int:
    with watch.connect() as c:
        return c.execute(
            text("SELECT count(*) FROM spakky_event_outbox WHERE published_at IS NULL")
        ).scalar_one()


rows = pending()
t0 = time.perf_counter()
app.start()
drained = False
try:
    while time.perf_counter() - t0 < args.timeout:
        if pending() == 0:
            drained = True
            break
        time.sleep(0.02)
finally:
    seconds = time.perf_counter() - t0
    app.stop()
say(
    rows=rows,
    seconds=round(seconds, 3),
    rows_per_s=round(rows / seconds, 1) if drained else None,
    poll_s=args.poll,
    mode=args.mode,
    batch_size=OutboxConfig().batch_size,
    sends=sent[0],
    drained=drained,
)
