#!/usr/bin/env python3
"""Reads a kat-dist run directory with TensorBoard's own event reader and checks that it
shows every scalar of metrics.jsonl, step by step, under the same names.

    pip install tensorboard
    python3 Tests/Python/check_tensorboard.py RUN [RUN ...]

Not run by the test suite (it needs the tensorboard package); the Swift tests check the
framing and CRCs of the same files (Tests/KATDistTests/MetricsExportTests.swift,
Tests/EndToEndTests/MetricsFilesTests.swift). Exits non-zero on the first difference.
"""
import json
import math
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import event_file_loader


def scalars_of(line):
    out = {}
    for k, v in line.items():
        if isinstance(v, bool):
            out[k] = 1.0 if v else 0.0
        elif isinstance(v, (int, float)):
            out[k] = v
    return out


def as_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def check(run):
    lines = [json.loads(l) for l in open(run + "/metrics.jsonl") if l.strip()]
    # The accumulator reads every events.out.tfevents.* file of the directory, the way
    # `tensorboard --logdir` does, and keeps every point (size_guidance 0).
    acc = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {}
    for line in lines:
        for k, v in scalars_of(line).items():
            want.setdefault(k, []).append((line["step"], v))
    if tags != set(want):
        sys.exit(f"{run}: TensorBoard tags {sorted(tags ^ set(want))} differ from metrics.jsonl's keys")
    points = 0
    for tag, expected in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        if [s for s, _ in got] != [s for s, _ in expected]:
            sys.exit(f"{run}: {tag}: steps {[s for s, _ in got]} in TensorBoard, {[s for s, _ in expected]} in metrics.jsonl")
        for (step, g), (_, e) in zip(got, expected):
            # simple_value is a float32: compare with the jsonl value rounded to float32.
            if not (g == as_float32(e) or (math.isinf(g) and math.isinf(as_float32(e)))):
                sys.exit(f"{run}: {tag} at step {step}: TensorBoard {g}, metrics.jsonl {e}")
            points += 1
    # The raw reader also checks each record's CRCs (it raises on a mismatch).
    import glob
    records = 0
    for path in sorted(glob.glob(run + "/events.out.tfevents.*")):
        for _ in event_file_loader.RawEventFileLoader(path).Load():
            records += 1
    print(f"{run}: {len(tags)} scalar tags, {points} points, {len(lines)} steps, {records} records: same as metrics.jsonl")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for run in sys.argv[1:]:
        check(run)
