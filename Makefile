# The two commands (see README):
#   make demo   run the relay on a SQLite file with the bundled plugins
#   make test   build everything and run every test (after `make setup`)
#   make bench  run the benchmarks (docs/performance.md); BENCH_ARGS="--quick" for a smoke run
# .ci/run runs `make lint test`.

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
COMPONENTS := $(CARGO_TARGET_DIR)/components
RELAY := cargo run -q -p outbox-relay --
DEMO_CONFIG := examples/outbox-relay.toml
# The example config names ../target/...; follow CARGO_TARGET_DIR if it is elsewhere.
export OUTBOX_RELAY__RELAY__PLUGIN_DIR := $(COMPONENTS)

.PHONY: demo test plugins lint producer-check bench soak setup

# What the tests need from the machine (faketime for the clock-skew test,
# the Kafka and Spakky virtualenvs, Chromium and playwright-core for the
# console's browser test, a durable tansu broker: tests/setup.sh);
# idempotent, and quick when already installed.
setup:
	bash tests/setup.sh

plugins:
	bash plugins/build.sh $(COMPONENTS)

demo: plugins
	$(RELAY) migrate --config $(DEMO_CONFIG)
	$(RELAY) enqueue --config $(DEMO_CONFIG) --event order.created --key order-1 -H traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 --payload '{"order":1,"total":"12.50"}'
	$(RELAY) enqueue --config $(DEMO_CONFIG) --event order.paid --key order-1 --payload '{"order":1}'
	$(RELAY) enqueue --config $(DEMO_CONFIG) --event user.created --payload '{"user":"ada"}'
	$(RELAY) run --config $(DEMO_CONFIG) --stop-after $${DEMO_SECONDS:-5s}
	@echo "--- the file target ($(CARGO_TARGET_DIR)/demo/out/events.jsonl):"
	@tail -n 5 $(CARGO_TARGET_DIR)/demo/out/events.jsonl
	$(RELAY) status --config $(DEMO_CONFIG)

test: setup plugins producer-check
	# The bundled plugins' own unit tests, natively.
	cd plugins && cargo test -q --workspace --target-dir $(CARGO_TARGET_DIR)/plugins-native
	cargo test --workspace --no-fail-fast

# An application that only enqueues must not compile wasmtime.
producer-check:
	@if cargo tree -q -p outbox-relay --no-default-features --features sqlite -e normal | grep -q wasmtime; then \
		echo "error: the producer API (outbox-relay without default features) depends on wasmtime"; exit 1; \
	else echo "producer API is free of wasmtime: ok"; fi
	@if cargo tree -q -p outbox-relay --no-default-features --features postgres -e normal | grep -q wasmtime; then \
		echo "error: the Postgres producer API depends on wasmtime"; exit 1; fi
	cargo check -q -p outbox-relay --no-default-features --features sqlite
	@if cargo tree -q -p outbox-relay --no-default-features --features mysql -e normal | grep -q wasmtime; then \
		echo "error: the MySQL producer API depends on wasmtime"; exit 1; fi
	cargo check -q -p outbox-relay --no-default-features --features postgres
	cargo check -q -p outbox-relay --no-default-features --features mysql

lint: plugins
	cargo fmt --all --check
	cd plugins && cargo fmt --all --check
	cd tests/plugins && cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd plugins && cargo clippy -q --target wasm32-wasip2 --workspace -- -D warnings
	cd tests/plugins && cargo clippy -q --target wasm32-wasip2 --workspace -- -D warnings

# Every benchmark scenario in release mode; results to bench/results/ (see
# docs/performance.md). Pass flags with BENCH_ARGS, e.g. BENCH_ARGS="--quick"
# or BENCH_ARGS="--scenario drain,latency --messages 50000".
# The bench writes its own configs: the demo's plugin_dir override must not apply.
bench:
	env -u OUTBOX_RELAY__RELAY__PLUGIN_DIR cargo run --release -p outbox-relay-tests --bin outbox-relay-bench -- $(BENCH_ARGS)

# The recorded runs of docs/reliability.md, one after the other:
# - the chaos soak (100,000 messages, relays SIGKILLed 24 times, Postgres
#   backends terminated, NATS restarted), figures to bench/results/chaos.json
#   (the short variant runs in `make test`);
# - the fault matrix (SIGKILL, SIGSTOP, clock skew, a database restart, a
#   rolling config change, disk full, transient locks; each on SQLite and
#   Postgres, ordered and unordered), figures to bench/results/fault_matrix.json
#   and .md. It restarts the local Postgres server once and mounts a tmpfs
#   (root); needs `make setup` (faketime).
#   Both always run (and record); `make soak` fails if either failed.
soak: setup plugins
	@status=0; \
	cargo test --workspace --test it chaos::long_soak -- --ignored --nocapture || status=1; \
	cargo test --workspace --test it soak_matrix::fault_matrix -- --ignored --nocapture || status=1; \
	exit $$status
