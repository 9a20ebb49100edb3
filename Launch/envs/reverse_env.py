#!/usr/bin/env python3
"""An external environment for kat-dist, standard library only (protocol: Docs/formats.md).

Task: reverse a short word. The prompt is "reverse: abc"; the answer "cba" earns
reward 1, a partly right answer the share of letters in place. With several turns, a
wrong attempt gets "no, try again" back. The held-out split ("test") draws words from a
letter set disjoint from the training split's first letters, so no held-out prompt is
ever trained on.

    kat-dist train --set data.env_command="python3 Launch/envs/reverse_env.py"
"""
import json
import random
import sys

TRAIN_FIRST = "abcdefghijklm"
TEST_FIRST = "nopqrstuvwxyz"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word(seed, split):
    rng = random.Random(seed * 2 + (1 if split == "test" else 0))
    first = rng.choice(TEST_FIRST if split == "test" else TRAIN_FIRST)
    return first + "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4)))


def main():
    target = ""
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "reset":
            w = word(int(msg.get("seed", 0)), msg.get("split", "train"))
            target = w[::-1]
            reply = {"prompt": "reverse: " + w, "info": {"length": len(w)}}
        elif msg["op"] == "step":
            action = msg["action"].strip()
            right = sum(1 for a, b in zip(action, target) if a == b)
            score = right / max(len(target), len(action), 1)
            done = action == target
            reply = {"observation": "" if done else "no, try again", "reward": 1.0 if done else score * 0.5, "done": done}
        else:
            reply = {"error": "unknown op"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
