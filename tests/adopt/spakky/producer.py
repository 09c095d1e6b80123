"""A Spakky producer: each order is a business row and an integration event written in one
@transactional unit of work on PostgreSQL; the event goes through spakky-outbox's
OutboxEventBus into `spakky_event_outbox` (spakky-sqlalchemy's storage).

  producer.py --database URL [--event NAME] [--create-table] --first N --count C [--rollback-every K]

Orders N .. N+C-1; every K-th one raises inside its unit of work after publishing, so its
order row and its outbox row are rolled back. Each runs under a fresh TraceContext (so the
outbox row carries a traceparent header). Prints one JSON line per order:
{"order_id", "total_cents", "customer", "event_id", "trace_id", "committed"}.

Spakky's relay is NOT started here (the outbox pods are added without it; see common.py).
"""

from common import (
    BASE_PLUGINS,
    add_event_pods,
    add_outbox_pods,
    event_class,
    new_app,
    parser,
    say,
    set_database,
)

ap = parser(__doc__)
ap.add_argument("--database", required=True)
ap.add_argument("--create-table", action="store_true", help="metadata.create_all (spakky never creates it)")
ap.add_argument("--first", type=int, default=1)
ap.add_argument("--count", type=int, default=0)
ap.add_argument("--rollback-every", type=int, default=0)
args = ap.parse_args()
set_database(args.database)
OrderPlaced = event_class(args.event)

from spakky.core.stereotype.usecase import UseCase  # noqa: E402
from spakky.data.aspects.transactional import transactional  # noqa: E402
from spakky.event.event_publisher import IEventPublisher  # noqa: E402
from spakky.plugins.sqlalchemy.orm.schema_registry import SchemaRegistry  # noqa: E402
from spakky.plugins.sqlalchemy.persistency.connection_manager import ConnectionManager  # noqa: E402
from spakky.plugins.sqlalchemy.persistency.session_manager import SessionManager  # noqa: E402
from spakky.tracing.context import TraceContext  # noqa: E402
from sqlalchemy import text  # noqa: E402

ORDERS_DDL = "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)"
INSERT_ORDER = text("INSERT INTO orders (id, total_cents) VALUES (:i, :t)")


class RolledBack(Exception):
    pass


@UseCase()
class PlaceOrder:
    def __init__(self, publisher: IEventPublisher, sessions: SessionManager) -> None:
        self._publisher = publisher
        self._sessions = sessions

    @transactional
    def execute(self, event, fail: bool) -> None:
        self._sessions.session.execute(INSERT_ORDER, {"i": event.order_id, "t": event.total_cents})
        # EventPublisher -> OutboxEventBus.send -> SqlAlchemyOutboxStorage.save (session.add + flush)
        self._publisher.publish(event)
        if fail:
            raise RolledBack(event.order_id)


app = new_app(BASE_PLUGINS)
add_event_pods(app)
add_outbox_pods(app, relay=False)
app.add(PlaceOrder)
app.start()
try:
    engine = app.container.get(ConnectionManager).connection
    with engine.begin() as c:
        if args.create_table:
            app.container.get(SchemaRegistry).metadata.create_all(c)  # spakky_event_outbox
        c.execute(text(ORDERS_DDL))
    use_case = app.container.get(PlaceOrder)  # the AOP proxy: @transactional applies
    for order_id in range(args.first, args.first + args.count):
        event = OrderPlaced(order_id=order_id, total_cents=100 * order_id + 7, customer=f"customer-{order_id}")
        trace = TraceContext.new_root()
        TraceContext.set(trace)
        fail = args.rollback_every > 0 and (order_id - args.first + 1) % args.rollback_every == 0
        try:
            use_case.execute(event, fail)
            committed = True
        except RolledBack:
            committed = False
        finally:
            TraceContext.clear()
        say(
            order_id=event.order_id,
            total_cents=event.total_cents,
            customer=event.customer,
            event_id=str(event.event_id),
            trace_id=trace.trace_id,
            committed=committed,
        )
finally:
    app.stop()
