#!/usr/bin/env bash
# Sets up kat-dist (Debian packages, release build) and runs the whole test suite.
#   bash Launch/test.sh
# Tests run against a release build: the maths is 10-100x slower in debug.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/setup.sh
exec swift test -c release --disable-swift-testing
