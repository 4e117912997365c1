#!/usr/bin/env python3
"""Generates reference epsilons for Backroom's privacy accountant from Google's dp-accounting.

The Rust tests in `coordinator/src/privacy/vector_tests.rs` read the JSON this script writes
(`dp_accounting.json`, beside this file) and check that Backroom's RDP epsilon is within 1% of
dp-accounting's `RdpAccountant` (default orders) and that Backroom's PLD epsilon is within 1% of
(or below, where the exact value shows why) dp-accounting's `PLDAccountant` (default
`value_discretization_interval=1e-4`, pessimistic connect-the-dots).

Mechanism: each event is `rounds` rounds of a Poisson-subsampled Gaussian (sampling probability
`sampling_rate`, noise multiplier `noise_multiplier`, sensitivity 1), neighbouring relation
ADD_OR_REMOVE_ONE (dp-accounting's default). Vectors with several events check heterogeneous
composition. For `sampling_rate == 1` the file also records the exact epsilon of the composed
Gaussian mechanism (Balle & Wang 2018), `dp_accounting.get_epsilon_gaussian(z / sqrt(T), delta)`.
Each vector lists the RDP orders dp-accounting dropped because their series did not converge
(`rdp_orders_dropped`), and `rdp_quadrature` holds Rényi divergences of single rounds computed
by direct numerical integration (mpmath, installed with dp-accounting) to check fractional
orders independently.

How to run (about 5 minutes on 2 cores; the PLD accountant for large T is the slow part):

    python3 -m venv /tmp/dpvenv
    /tmp/dpvenv/bin/pip install dp-accounting==0.6.0
    /tmp/dpvenv/bin/python coordinator/tests/privacy_vectors/make_vectors.py

The vectors in the repository were made with dp-accounting 0.6.0 (numpy 2.4, scipy 1.17,
Python 3.11); the versions used are written into the JSON.
"""

import itertools
import json
import math
import pathlib
import platform
import sys
import time
from importlib import metadata

import dp_accounting
import mpmath
from dp_accounting.rdp import rdp_privacy_accountant as rdp_module

SAMPLING_RATES = [0.001, 0.01, 0.1, 0.5, 1.0]
NOISE_MULTIPLIERS = [0.5, 0.8, 1.0, 2.0, 5.0]
ROUNDS = [1, 10, 100, 1000]
DELTAS = [1e-5, 1e-7]

# Long trainings in the regimes federated learning uses (small q, moderate z).
LARGE_T = [
    (0.001, 0.8, 10_000),
    (0.01, 1.0, 10_000),
    (0.01, 2.0, 10_000),
    (0.1, 2.0, 10_000),
    (0.01, 0.8, 5_000),
]

# Heterogeneous histories: several kinds of round composed.
HETEROGENEOUS = [
    [(0.01, 1.0, 500), (0.1, 2.0, 100)],
    [(0.001, 0.8, 1000), (0.01, 1.0, 200), (1.0, 5.0, 3)],
    [(0.5, 2.0, 20), (0.05, 1.2, 300)],
]


def sampled_gaussian(q, z, t):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t)


def vector(events, deltas):
    event = dp_accounting.ComposedDpEvent([sampled_gaussian(*e) for e in events])
    rdp = dp_accounting.rdp.RdpAccountant()  # DEFAULT_RDP_ORDERS, ADD_OR_REMOVE_ONE
    rdp.compose(event)
    start = time.perf_counter()
    pld = dp_accounting.pld.PLDAccountant()  # value_discretization_interval=1e-4
    pld.compose(event)
    out = []
    for delta in deltas:
        rdp_eps, order = rdp.get_epsilon_and_optimal_order(delta)
        pld_eps = pld.get_epsilon(delta)
        row = {
            "events": [
                {"sampling_rate": q, "noise_multiplier": z, "rounds": t} for q, z, t in events
            ],
            "delta": delta,
            "rdp_epsilon": finite_or_none(rdp_eps),
            "rdp_order": float(order),
            "pld_epsilon": finite_or_none(pld_eps),
        }
        # Orders whose fractional series dp-accounting could not sum within 1000 terms; it
        # leaves them out (with a logged warning), so its RDP epsilon can be larger than one
        # that keeps them.
        dropped = sorted({
            float(order)
            for q, z, _ in events
            for order, r in zip(
                rdp_module.DEFAULT_RDP_ORDERS,
                rdp_module._compute_rdp_poisson_subsampled_gaussian(
                    q, z, rdp_module.DEFAULT_RDP_ORDERS),
            )
            if not math.isfinite(r)
        })
        row["rdp_orders_dropped"] = dropped
        if len(events) == 1 and events[0][0] == 1.0:
            _, z, t = events[0]
            row["exact_epsilon"] = dp_accounting.get_epsilon_gaussian(z / math.sqrt(t), delta)
        out.append(row)
    seconds = time.perf_counter() - start
    summary = ", ".join(
        f"d={r['delta']:g} rdp={r['rdp_epsilon']} pld={r['pld_epsilon']}" for r in out)
    print(f"{events} pld+queries {seconds:.1f}s: {summary}", flush=True)
    return out


# Rényi divergences checked by direct numerical integration (mpmath, 40 digits), including
# orders where dp-accounting's series does not converge.
QUADRATURE = [
    (0.5, 0.5, 1.1), (0.5, 0.5, 1.3), (0.1, 0.5, 1.7), (0.5, 0.8, 1.2), (0.5, 1.0, 1.3),
    (0.5, 2.0, 1.6), (0.01, 1.0, 2.5), (0.001, 0.8, 5.5), (0.1, 2.0, 10.9), (0.01, 5.0, 1.1),
    (0.2, 1.0, 3.0), (0.01, 0.8, 32.0),
]


def rdp_by_quadrature(q, sigma, alpha):
    """(1/(alpha-1)) ln E_{x~N(0,s^2)}[((1-q) + q exp((2x-1)/(2 s^2)))^alpha]."""
    mpmath.mp.dps = 40
    q, sigma, alpha = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(alpha)

    def integrand(x):
        ratio = (1 - q) + q * mpmath.exp((2 * x - 1) / (2 * sigma**2))
        return mpmath.npdf(x, 0, sigma) * ratio**alpha

    # Split where the mixture components cross and around the bulk of both components.
    z0 = sigma**2 * mpmath.log(1 / q - 1) + mpmath.mpf(1) / 2 if q < 1 else 0
    points = sorted({-mpmath.inf, -10 * sigma, mpmath.mpf(0), mpmath.mpf(1), z0,
                     1 + 10 * sigma + alpha * 2, mpmath.inf})
    a = mpmath.quad(integrand, points)
    return float(mpmath.log(a) / (alpha - 1))


def finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def main():
    vectors = []
    for q, z, t in itertools.product(SAMPLING_RATES, NOISE_MULTIPLIERS, ROUNDS):
        vectors += vector([(q, z, t)], DELTAS)
    for q, z, t in LARGE_T:
        vectors += vector([(q, z, t)], DELTAS)
    for events in HETEROGENEOUS:
        vectors += vector(events, DELTAS)
    quadrature = []
    for q, sigma, alpha in QUADRATURE:
        value = rdp_by_quadrature(q, sigma, alpha)
        print(f"quadrature q={q} sigma={sigma} alpha={alpha}: {value}", flush=True)
        quadrature.append({"sampling_rate": q, "noise_multiplier": sigma, "order": alpha,
                           "rdp": value})
    doc = {
        "generator": "coordinator/tests/privacy_vectors/make_vectors.py",
        "dp_accounting_version": metadata.version("dp-accounting"),
        "numpy_version": metadata.version("numpy"),
        "scipy_version": metadata.version("scipy"),
        "python_version": platform.python_version(),
        "neighboring_relation": "ADD_OR_REMOVE_ONE",
        "rdp_accountant": "RdpAccountant() with DEFAULT_RDP_ORDERS",
        "pld_accountant": "PLDAccountant(value_discretization_interval=1e-4)",
        "vectors": vectors,
        "rdp_quadrature": quadrature,
    }
    path = pathlib.Path(__file__).with_name("dp_accounting.json")
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(f"wrote {len(vectors)} vectors to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
