#!/usr/bin/env python3
"""An external environment whose episodes vary tenfold in length (protocol: Docs/formats.md).

Episode with seed s takes 1 + (s mod 10) turns: the environment answers "go on" until then,
so a group of one prompt generates from 1 to 10 answers of up to `rollout.max_new_tokens`
tokens each. The reward of each answer is the share of its characters that are lower-case
letters, which any policy can learn. Used by Benchmarks/partial.py; standard library only.
"""
import json
import sys


def main():
    turns = left = 0
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "reset":
            seed = int(msg.get("seed", 0))
            turns = left = 1 + seed % 10
            reply = {"prompt": f"write {turns} lines of letters", "info": {"turns": turns}}
        elif msg["op"] == "step":
            action = msg["action"]
            left -= 1
            share = sum(c.islower() for c in action) / max(1, len(action))
            reply = {"observation": "" if left <= 0 else "go on", "reward": share / turns, "done": left <= 0}
        else:
            reply = {"error": "unknown op"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
