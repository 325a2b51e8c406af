"""Mutation fuzzer for the compiled Parser (and Writer), differential against
the pure core.

    python fuzz/fuzz_parser.py --seconds 600 [--seed N]

Seeds are the captured nginx streams in tests/corpus plus generated ones;
each round mutates a seed (bit flips, byte runs, splices, header tweaks,
truncation), splits it at random points, feeds it to both cores with random
limits, and requires identical events, codes and replies.  A memory error
in the compiled core crashes the process (run it under ASan or valgrind to
catch quiet ones, see README of the issue note); a divergence is written to
fuzz/crashes/ and stops the run.
"""

import argparse
import glob
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fastfcgi          # noqa: E402  the compiled core under test
import fastfcgi_py       # noqa: E402
from conftest import (begin, end_after_stdin, get_values, nv, params_records,  # noqa: E402
                      rec, run, stdin_records)


def generated_seeds(rng):
    seeds = []
    for _ in range(40):
        env = {"CONTENT_LENGTH": str(rng.randint(0, 40)), "REQUEST_METHOD": "POST",
               "X" * rng.randint(0, 200): "v" * rng.randint(0, 300)}
        body = os.urandom(rng.randint(0, 60))
        seeds.append(begin(rng.choice([1, 2, 65535]), rng.choice([1, 2, 3, 7]), rng.randint(0, 1))
                     + params_records(1, env, split=rng.choice([None, 1, 7]))
                     + stdin_records(1, body, split=rng.choice([None, 5]))
                     + get_values("FCGI_MAX_CONNS", "FCGI_MPXS_CONNS")
                     + rec(rng.randint(0, 255), rng.randint(0, 3), os.urandom(rng.randint(0, 20)),
                           pad=rng.randint(0, 255)))
    return seeds


def mutate(data, rng, seeds):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randint(0, 7)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            i = rng.randrange(len(data))
            data[i] = rng.choice([0, 1, 0x7f, 0x80, 0xff, rng.randrange(256)])
        elif op == 2:
            i = rng.randint(0, len(data))
            data[i:i] = os.urandom(rng.randint(1, 16))
        elif op == 3 and data:
            i = rng.randrange(len(data))
            del data[i:i + rng.randint(1, 16)]
        elif op == 4:
            other = rng.choice(seeds)
            i = rng.randint(0, len(data))
            j = rng.randint(0, len(other))
            data[i:] = other[j:j + rng.randint(0, 4000)]
        elif op == 5 and len(data) >= 8:
            # Rewrite a header-looking spot: lengths and padding are where
            # parsers go wrong.
            i = rng.randrange(0, len(data) - 7)
            data[i:i + 8] = struct.pack("!BBHHBx", rng.choice([1, 1, 1, 0, 2]), rng.randint(0, 12),
                                        rng.choice([0, 1, 2, 65535]), rng.randint(0, 70000) & 0xFFFF,
                                        rng.randint(0, 255))
        elif op == 6 and data:
            data = data[:rng.randint(0, len(data))]
        elif op == 7:
            data += rec(4, 1, nv(os.urandom(rng.randint(0, 140)), os.urandom(rng.randint(0, 140))))
    return bytes(data)


def split(data, rng):
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 8)))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    return [c for c in chunks if c]


def options(rng):
    opts = {}
    if rng.random() < 0.5:
        opts["max_param_size"] = rng.randint(0, 300)
    if rng.random() < 0.5:
        opts["max_params_size"] = rng.randint(0, 600)
    if rng.random() < 0.5:
        opts["max_body"] = rng.choice([None, rng.randint(0, 100)])
    if rng.random() < 0.3:
        opts["mpxs_conns"] = True
        opts["max_reqs"] = rng.randint(1, 4)
    return opts


def writer_round(rng):
    c, p = fastfcgi.Writer(), fastfcgi_py.Writer()
    rid = rng.choice([0, 1, 65535, -1, 65536])
    data = os.urandom(rng.choice([0, 1, 13, 65528, 65529, 140000]))
    text = "".join(rng.choice("aZ0-: \t\r\n\x00\x7f\xe9\xff\u20ac") for _ in range(rng.randint(0, 8)))
    for method, args in [("stdout", (rid, data)), ("finish", (rid, data)),
                         ("head", (text, [(text, text)])), ("head", ("200 " + text, [("X", text)])),
                         ("end_request", (rid, rng.randint(-2 ** 33, 2 ** 33)))]:
        results = []
        for w in (c, p):
            try:
                results.append(getattr(w, method)(*args))
            except (ValueError, TypeError) as exc:
                results.append(type(exc))
        if results[0] != results[1]:
            return "writer %s%r: %r != %r" % (method, args, results[0], results[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    seeds = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "corpus", "*.bin"))):
        with open(path, "rb") as f:
            data = f.read()
        seeds.append(data[:20000])      # the 5 MB upload's head is enough
    seeds += generated_seeds(rng)
    deadline = time.time() + args.seconds
    rounds = 0
    while time.time() < deadline:
        for _ in range(200):
            rounds += 1
            data = mutate(rng.choice(seeds), rng, seeds)
            chunks = split(data, rng)
            opts = options(rng)
            hook = end_after_stdin if rng.random() < 0.7 else None
            got = run(fastfcgi.Parser(**opts), chunks, on_event=hook)
            want = run(fastfcgi_py.Parser(**opts), chunks, on_event=hook)
            problem = None if got == want else "parser: %r != %r" % (got, want)
            problem = problem or (writer_round(rng) if rounds % 10 == 0 else None)
            if problem:
                os.makedirs(os.path.join(HERE, "crashes"), exist_ok=True)
                out = os.path.join(HERE, "crashes", "divergence-%d-%d.bin" % (seed, rounds))
                with open(out, "wb") as f:
                    f.write(data)
                print("DIVERGENCE after %d rounds (seed %d, options %r): %s\ninput: %s"
                      % (rounds, seed, opts, problem[:2000], out))
                return 1
            if rng.random() < 0.01 and len(seeds) < 500:
                seeds.append(data)
    print("fuzz: %d rounds in %.0fs, seed %d: no crash, no divergence"
          % (rounds, args.seconds, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
