"""A Spakky consumer: an @EventHandler whose @on_event handler records every event
spakky-rabbitmq hands it, as parsed into the event class.

  consumer.py --out FILE [--event NAME]

spakky-rabbitmq declares a durable queue named after the event class on the default
exchange and consumes it. Each received event is appended to FILE as one JSON line:
{"type", "order_id", "total_cents", "customer", "event_id", "timestamp", "trace_id"}.
Prints {"started": true} once the app is up; runs until SIGTERM/SIGINT.

Plugins: spakky-domain, spakky-tracing, spakky-rabbitmq only. spakky-event is NOT loaded:
its EventMediator would be a second IEventConsumer, and RabbitMQPostProcessor's
container.get(IEventConsumer) (no name, no @Primary) then raises NoSuchPodError
(the same spakky 6.4.0 DI bug as in common.py).
"""

import json
import signal
import threading

from common import event_class, new_app, parser, say, set_rabbitmq

ap = parser(__doc__)
ap.add_argument("--out", required=True)
args = ap.parse_args()
set_rabbitmq()
OrderPlaced = event_class(args.event)

from spakky.event.stereotype.event_handler import EventHandler, on_event  # noqa: E402
from spakky.tracing.context import TraceContext  # noqa: E402

lock = threading.Lock()


@EventHandler()
class OrderHandlers:
    @on_event(OrderPlaced)
    async def on_order_placed(self, event: OrderPlaced) -> None:
        if not isinstance(event, OrderPlaced):
            raise TypeError(f"the handler got {type(event)!r}, not the event class")
        ctx = TraceContext.get()
        line = json.dumps(
            {
                "type": type(event).__name__,
                "order_id": event.order_id,
                "total_cents": event.total_cents,
                "customer": event.customer,
                "event_id": str(event.event_id),
                "timestamp": event.timestamp.isoformat(),
                "trace_id": ctx.trace_id if ctx else None,
            }
        )
        with lock, open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


app = new_app({"spakky-domain", "spakky-tracing", "spakky-rabbitmq"})
app.add(OrderHandlers)
app.start()  # RabbitMQPostProcessor registers the handler; the consumer services start
say(started=True)

stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
app.stop()
