#!/usr/bin/env python3
"""Round overhead with K tiny-model clients: Backroom's `bench load` against Flower's simulation.

Both sides run the same round shape: every client sampled, each returns its parameters plus a
small random change (no training), the server averages them (FedAvg) and starts the next round.
The network is Backroom's tiny ShelfNet of `bench load` (2,354 float32 parameters; Flower gets
one array of that size). Flower runs its simulation engine (Ray, in this process's machine, no
TLS); Backroom runs its coordinator and K nodes with their own certificates over mutually
authenticated TLS, every update made durable before it is acknowledged, each version signed.

Flower's round time is measured inside its server: from `configure_fit` (the round's start) to
the end of `aggregate_fit`; Backroom's from `StartRound` to the published version. The first
round of each is reported apart (Flower starts its Ray actors then); "warm" is the mean of the
others.

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install "flwr[simulation]"
    cargo build --release
    /tmp/flwr-venv/bin/python benches/load_vs_flower.py \\
        --backroom $CARGO_TARGET_DIR/release/backroom --clients 100 --rounds 4
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

PARAMETERS = 2354


def flower_rounds(clients: int, rounds: int) -> list[float]:
    import numpy as np
    import flwr as fl
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.client import ClientApp, NumPyClient

    class Client(NumPyClient):
        def fit(self, parameters, config):
            rng = np.random.default_rng()
            return [p + rng.uniform(-1e-3, 1e-3, p.shape).astype(np.float32) for p in parameters], 1, {}

    def client_fn(context: Context):
        return Client().to_client()

    times: list[float] = []

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            self._started = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            times.append(time.perf_counter() - self._started)
            if len(results) != clients:
                raise SystemExit(f"round {server_round}: {len(results)} results, {failures} failures")
            return out

    initial = ndarrays_to_parameters([np.zeros(PARAMETERS, dtype=np.float32)])

    def server_fn(context: Context):
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            initial_parameters=initial,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    fl.simulation.run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        verbose_logging=False,
    )
    return times


def backroom_rounds(binary: str, clients: int, rounds: int) -> list[float]:
    out = subprocess.run(
        [binary, "bench", "load", "--nodes", str(clients), "--rounds", str(rounds),
         "--metric-sync-secs", "0", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    return [r["secs"] for r in report["rounds"]]


def summary(times: list[float]) -> dict:
    warm = times[1:] or times
    return {"first": times[0], "warm_mean": statistics.mean(warm), "all": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backroom", required=True, help="path to the backroom binary")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    backroom = summary(backroom_rounds(args.backroom, args.clients, args.rounds))
    flower = summary(flower_rounds(args.clients, args.rounds))
    result = {
        "clients": args.clients,
        "parameters": PARAMETERS,
        "backroom": backroom,
        "flower": flower,
        "warm_ratio_flower_over_backroom": flower["warm_mean"] / backroom["warm_mean"],
    }
    print(json.dumps(result, indent=2))
    print(
        f"K={args.clients}: backroom warm round {backroom['warm_mean']:.3f} s, "
        f"flower warm round {flower['warm_mean']:.3f} s "
        f"({result['warm_ratio_flower_over_backroom']:.1f}x)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
