#!/usr/bin/env bash
# kat-dist's scaling suite: builds in release mode, measures (trie vs flat, trainer and rollout
# ranks, allreduce against message size and link, weight sync against ranks and hosts,
# sampling), fits the performance model, checks it on held-out points, projects runs on 8, 64
# and 512 nodes, and writes Docs/scaling.md with its plots in Docs/scaling/.
#
#   bash Benchmarks/scaling.sh            # the full suite (under an hour)
#   bash Benchmarks/scaling.sh --quick    # fewer repeats and sizes (under 10 minutes)
#
# Other options go to Benchmarks/scaling.py (--parts, --from-raw FILE, --out DIR; --help).
# The hosts part makes network namespaces, veth links and a bridge, so it needs root; without
# root it is skipped, and said so. Needs the Swift toolchain, Open MPI, OpenBLAS and python3
# (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "scaling: python3 is needed" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
    echo "scaling: not root, so the two-host part (network namespaces, tc tbf) will be skipped" >&2
fi
swift build -c release 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]|^Building|^Build complete' || true
test -x .build/release/kat-dist -a -x .build/release/kat-bench || { echo "scaling: the release build failed" >&2; exit 1; }
exec python3 Benchmarks/scaling.py "$@"
