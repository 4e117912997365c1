#!/usr/bin/env python3
"""FedAvg aggregation: `backroom bench aggregate` against Flower's
`flwr.server.strategy.aggregate.aggregate`, on identical inputs, in one run.

For each case N x P it writes N client files of P float32 (seeded normal values) and random
example counts, runs both aggregators in fresh processes (so each peak RSS is its own), checks
the outputs agree (max abs difference <= 1e-6) and prints a markdown table.

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr
    cargo build --release
    /tmp/flwr-venv/bin/python benches/aggregate_vs_flower.py \
        --backroom target/release/backroom --work /tmp/agg-bench

Flower receives the updates as it does in a real round: a list of (list of ndarrays, n), all in
memory; the time reported for it is `aggregate()` alone and, separately, with loading the files.
Backroom's time includes reading every file (it streams them, one client at a time).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np


def write_case(directory, clients, parameters, seed):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(clients):
        values = rng.standard_normal(parameters, dtype=np.float32)
        values.tofile(os.path.join(directory, f"client_{i:05d}.f32"))
    counts = rng.integers(1, 100, size=clients).tolist()
    with open(os.path.join(directory, "weights.json"), "w") as f:
        json.dump({"num_examples": counts}, f)


def flower_one(directory, output):
    """Runs in its own process: load every update, then Flower's aggregate()."""
    from flwr.server.strategy.aggregate import aggregate

    started = time.perf_counter()
    with open(os.path.join(directory, "weights.json")) as f:
        counts = json.load(f)["num_examples"]
    names = sorted(n for n in os.listdir(directory) if n.startswith("client_"))
    results = [
        ([np.fromfile(os.path.join(directory, name), dtype="<f4")], n)
        for name, n in zip(names, counts)
    ]
    loaded = time.perf_counter()
    mean = aggregate(results)
    done = time.perf_counter()
    np.asarray(mean[0], dtype="<f4").tofile(output)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "aggregate_ms": (done - loaded) * 1e3,
                "total_ms": (done - started) * 1e3,
                "peak_rss_bytes": peak,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backroom", required=True, help="path of the backroom binary")
    parser.add_argument("--work", required=True, help="scratch directory (removed per case)")
    parser.add_argument(
        "--cases",
        default="10x1000000,100x1000000,1000x100000",
        help="comma-separated NxP",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; best is kept")
    parser.add_argument("--flower-one", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_one:
        flower_one(*args.flower_one)
        return

    rows = []
    for case in args.cases.split(","):
        clients, parameters = (int(x) for x in case.split("x"))
        directory = os.path.join(args.work, case)
        shutil.rmtree(directory, ignore_errors=True)
        print(f"writing {clients} x {parameters} ...", file=sys.stderr)
        write_case(directory, clients, parameters, seed=clients * 7919 + parameters)
        ours_out = os.path.join(args.work, f"{case}.backroom.f32")
        theirs_out = os.path.join(args.work, f"{case}.flower.f32")
        ours, theirs = [], []
        for _ in range(args.repeats):
            run = subprocess.run(
                [args.backroom, "bench", "aggregate", "--input-dir", directory,
                 "--output", ours_out, "--json"],
                check=True, capture_output=True, text=True,
            )
            ours.append(json.loads(run.stdout))
            run = subprocess.run(
                [sys.executable, __file__, "--backroom", args.backroom, "--work", args.work,
                 "--flower-one", directory, theirs_out],
                check=True, capture_output=True, text=True,
            )
            theirs.append(json.loads(run.stdout))
        diff = float(
            np.max(np.abs(np.fromfile(ours_out, dtype="<f4") - np.fromfile(theirs_out, dtype="<f4")))
        )
        best_ours = min(ours, key=lambda r: r["aggregate_ms"])
        best_theirs = min(theirs, key=lambda r: r["aggregate_ms"])
        rows.append((case, best_ours, best_theirs, diff))
        shutil.rmtree(directory, ignore_errors=True)

    print("| N x P | backroom (read + aggregate) | Flower aggregate() | Flower load + aggregate "
          "| speed-up vs aggregate() | peak RSS backroom | peak RSS Flower | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for case, ours, theirs, diff in rows:
        print(
            f"| {case} | {ours['aggregate_ms']:.0f} ms | {theirs['aggregate_ms']:.0f} ms "
            f"| {theirs['total_ms']:.0f} ms | {theirs['aggregate_ms'] / ours['aggregate_ms']:.2f}x "
            f"| {ours['peak_rss_bytes'] / 2**20:.0f} MiB | {theirs['peak_rss_bytes'] / 2**20:.0f} MiB "
            f"| {diff:.1e} |"
        )
    if any(diff > 1e-6 for *_, diff in rows):
        sys.exit("outputs differ by more than 1e-6")


if __name__ == "__main__":
    main()
