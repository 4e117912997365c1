"""Flower's DP path on the sizes of `benches/dp.rs`, timed in the same run as Backroom's.

Run by the Rust bench (`cargo bench --bench dp`) as a subprocess; it prints one JSON object on
its last stdout line. When Flower or NumPy cannot be imported it prints {"skipped": reason}
and exits 0, so the bench still reports Backroom's figures.

What is timed (time.perf_counter, median of the repeats after one warm-up; inputs are prepared
outside the timed region, as Backroom's are):

- node_clip_noise: Flower's client-side kernels on a delta: clip_inputs_inplace (L2 clip to C)
  then add_gaussian_noise_inplace (N(0, std^2), float64 draws cast to float32).
- node_noise: add_gaussian_noise_inplace alone.
- node_localdp: what LocalDpMod does to a client reply: compute_clip_model_update (update =
  params - base, clip, params = base + update) then add_gaussian_noise_inplace.
- aggregation_kernels: what DifferentialPrivacyServerSideFixedClipping(FedAvg()) computes per
  round, on NumPy arrays without Flower's Parameters (de)serialisation: compute_clip_model_update
  for every reply, FedAvg's in-place weighted sum (the arithmetic of
  flwr.server.strategy.aggregate.aggregate_inplace, equal weights), then
  add_gaussian_noise_inplace with compute_stdv(z, C, clients).
- aggregation_strategy: the real DifferentialPrivacyServerSideFixedClipping(FedAvg()).aggregate_fit
  on FitRes replies, including the Parameters <-> ndarray conversions Flower does.

With --mode memory nothing is timed: for one aggregation of each kind the script reports how far
the resident high-water mark (VmHWM, reset through /proc/self/clear_refs) rises above the
resident size before it (null without Linux's /proc). The bench runs that mode in a separate
process with MALLOC_MMAP_THRESHOLD_ set, so that freed buffers leave the resident size.
"""

import argparse
import gc
import json
import platform
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise-multiplier", type=float, default=1.1)
    parser.add_argument("--node-noise-std", type=float, default=0.11)
    parser.add_argument("--node-repeats", type=int, default=21)
    parser.add_argument("--agg-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20260509)
    parser.add_argument("--mode", choices=["time", "memory"], default="time")
    return parser.parse_args()


def layer_sizes(total):
    """Five layers, largest first, like a small CNN's weights and biases."""
    sizes = [total * 60 // 100, total * 30 // 100, total * 9 // 100, total * 9 // 1000]
    sizes.append(total - sum(sizes))
    return [s for s in sizes if s > 0]


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def timed(repeats, prepare, run):
    """Median milliseconds of run(prepare()) over `repeats` runs after one warm-up."""
    run(prepare())
    samples = []
    for _ in range(repeats):
        state = prepare()
        start = time.perf_counter()
        run(state)
        samples.append((time.perf_counter() - start) * 1000.0)
    return median(samples)


def proc_status_kib(field):
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mib(run):
    """Rise of the resident high-water mark over the resident size while `run()` runs."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return None
    before = proc_status_kib("VmRSS")
    run()
    peak = proc_status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024.0


def main():
    args = parse_args()
    try:
        from importlib.metadata import version

        import numpy as np
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.server.strategy import (
            DifferentialPrivacyServerSideFixedClipping,
            FedAvg,
        )
        from flwr.supercore.differential_privacy import (
            add_gaussian_noise_inplace,
            clip_inputs_inplace,
            compute_clip_model_update,
            compute_stdv,
        )
    except Exception as error:  # noqa: BLE001 - any import failure means "skip the peer"
        print(json.dumps({"skipped": f"cannot import flwr/numpy: {error!r}"}))
        return 0

    rng = np.random.default_rng(args.seed)
    np.random.seed(args.seed % (2**32))  # Flower's noise uses NumPy's global generator
    sizes = layer_sizes(args.params)
    clip, node_std = args.clip, args.node_noise_std

    def delta_with_norm(norm):
        flat = rng.standard_normal(args.params, dtype=np.float32)
        flat *= np.float32(norm / float(np.linalg.norm(flat)))
        return np.split(flat, np.cumsum(sizes)[:-1])

    base = [rng.standard_normal(s, dtype=np.float32) * np.float32(0.05) for s in sizes]
    results = {
        "flwr_version": version("flwr"),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "layers": sizes,
    }

    if args.mode == "time":
        node_delta = delta_with_norm(2.0 * clip)
        node_params = [b + d for b, d in zip(base, node_delta)]

        def copy_delta():
            return [d.copy() for d in node_delta]

        def clip_and_noise(arrays):
            clip_inputs_inplace(arrays, clip)
            add_gaussian_noise_inplace(arrays, node_std)

        def localdp(arrays):
            compute_clip_model_update(arrays, base, clip)
            add_gaussian_noise_inplace(arrays, node_std)

        reps = args.node_repeats
        results["node_clip_noise_ms"] = timed(reps, copy_delta, clip_and_noise)
        results["node_noise_ms"] = timed(
            reps, copy_delta, lambda a: add_gaussian_noise_inplace(a, node_std)
        )
        results["node_localdp_ms"] = timed(
            reps, lambda: [p.copy() for p in node_params], localdp
        )

    # Reply i has an update of norm C * (0.5 + i / clients): about half are clipped.
    replies = []
    for i in range(args.clients):
        delta = delta_with_norm(clip * (0.5 + i / args.clients))
        replies.append([b + d for b, d in zip(base, delta)])
    stdv = compute_stdv(args.noise_multiplier, clip, args.clients)

    def aggregate_kernels(reply_lists):
        clipped = []
        for arrays in reply_lists:
            compute_clip_model_update(arrays, base, clip)
            clipped.append(arrays)
        # FedAvg's aggregate_inplace with equal num_examples: float64 scaling factors, then
        # in-place multiply and add into the first reply's (new, clipped) arrays.
        factors = np.asarray([1.0 / len(clipped)] * len(clipped))
        total = [np.multiply(x, factors[0], out=x) for x in clipped[0]]
        for i, arrays in enumerate(clipped[1:], start=1):
            scaled = (np.multiply(x, factors[i], out=x) for x in arrays)
            total = [np.add(t, s, out=t) for t, s in zip(total, scaled)]
        add_gaussian_noise_inplace(total, stdv)
        return total

    def shallow_copies():
        # compute_clip_model_update puts new arrays into the list it is given: shallow copies
        # keep the replies intact between runs.
        return [list(arrays) for arrays in replies]

    serialized = [ndarrays_to_parameters(arrays) for arrays in replies]
    status = Status(code=Code.OK, message="")

    def fit_results():
        return [(None, FitRes(status, p, 1, {})) for p in serialized]

    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), args.noise_multiplier, clip, args.clients
    )
    # What configure_fit records from the round's global parameters.
    strategy.current_round_params = base

    def aggregate_strategy(fit):
        aggregated, _ = strategy.aggregate_fit(1, fit, [])
        if aggregated is None:
            raise RuntimeError("Flower returned no aggregate")

    if args.mode == "time":
        reps = args.agg_repeats
        results["aggregation_kernels_ms"] = timed(
            reps, shallow_copies, aggregate_kernels
        )
        results["aggregation_strategy_ms"] = timed(
            reps, fit_results, aggregate_strategy
        )
    else:
        results["aggregation_kernels_peak_extra_mib"] = peak_extra_mib(
            lambda: aggregate_kernels(shallow_copies())
        )
        results["aggregation_strategy_peak_extra_mib"] = peak_extra_mib(
            lambda: aggregate_strategy(fit_results())
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
