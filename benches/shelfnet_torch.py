#!/usr/bin/env python3
"""PyTorch's side of `cargo bench --bench shelfnet`: the same ShelfNet, timed the same way.

Prints one JSON object: {"torch": version, "threads": n, "results": [...]} or {"skipped": reason}.

Method (the same as benches/shelfnet.rs measures Burn):
- train step: SGD (momentum 0.9, no dampening, no weight decay, lr 0.01), mean cross-entropy,
  on minibatches gathered each step from a shuffled pool of 256 examples (Burn's train_local
  copies each minibatch out of the example buffer too). One figure is (time of 25 steps - time
  of 5 steps) / 20, each run starting from a fresh model and optimiser as train_local does; the
  result is the median of 5 figures, after a 2-step warm-up.
- inference: model in eval mode under torch.no_grad(), logits then argmax (Burn's predict);
  the median of 30 runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def measure(torch, nn, shelfnet_cls, config, train_batch, infer_batch, seed):
    torch.manual_seed(seed)
    channels, side = config["input_channels"], config["image_size"]
    pool = 256
    images = torch.rand(pool, channels, side, side)
    labels = torch.randint(0, config["num_classes"], (pool,))
    base = shelfnet_cls(config).state_dict()
    loss_fn = nn.CrossEntropyLoss()

    def train(steps):
        model = shelfnet_cls(config)
        model.load_state_dict(base)
        model.train()
        optim = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, dampening=0.0)
        order = torch.randperm(pool)
        position = 0
        start = time.perf_counter()
        for _ in range(steps):
            if position + train_batch > pool:
                order = torch.randperm(pool)
                position = 0
            index = order[position : position + train_batch]
            position += train_batch
            x, y = images[index], labels[index]
            optim.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optim.step()
            loss.item()
        return (time.perf_counter() - start) * 1000.0

    train(2)  # warm-up
    per_step = []
    for _ in range(5):
        short, long = train(5), train(25)
        per_step.append((long - short) / 20.0)

    model = shelfnet_cls(config)
    model.load_state_dict(base)
    model.eval()
    batch = images[:infer_batch].contiguous()
    infer = []
    with torch.no_grad():
        model(batch).argmax(1)
        for _ in range(30):
            start = time.perf_counter()
            model(batch).argmax(1).tolist()
            infer.append((time.perf_counter() - start) * 1000.0)
    return {
        "train_step_ms": statistics.median(per_step),
        "inference_ms": statistics.median(infer),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--nets",
        default='[["standard", {"conv_channels": [8, 16, 32], "hidden": 32}, 32, 32]]',
        help="JSON list of [name, config, train batch, inference batch]",
    )
    args = parser.parse_args()
    try:
        import torch
        from torch import nn
    except ImportError as error:
        print(json.dumps({"skipped": f"{sys.executable} cannot import torch ({error})"}))
        return 0
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "deploy", "torch"))
    from backroom_shelfnet import ShelfNet, normalise_config

    torch.set_num_threads(args.threads)
    results = []
    for name, config, train_batch, infer_batch in json.loads(args.nets):
        figures = measure(torch, nn, ShelfNet, normalise_config(config), train_batch, infer_batch, 0)
        results.append({"name": name, **figures})
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "parallel": torch.__config__.parallel_info().splitlines()[-1].strip(),
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
