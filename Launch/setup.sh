#!/usr/bin/env bash
# Installs what kat-dist needs from Debian's packages (when missing) and builds it.
#   bash Launch/setup.sh            # packages + release build
# Needs the Swift toolchain on PATH. Run as root, or with sudo available, on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libopenmpi-dev openmpi-bin libopenblas-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "kat-dist setup: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "kat-dist setup: the Swift toolchain (swift) is not on PATH" >&2; exit 1; }
swift build -c release 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
test -x .build/release/kat-dist || { echo "kat-dist setup: the build failed" >&2; exit 1; }
echo "kat-dist setup: built .build/release/kat-dist"
