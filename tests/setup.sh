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
set -euo pipefail

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
