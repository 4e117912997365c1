#!/usr/bin/env python3
"""Backroom's ShelfNet in PyTorch: the module, and Backroom's safetensors weight files.

A Backroom model file (``backroom_models::to_torch_safetensors``) is the ``state_dict`` of
:class:`ShelfNet` in safetensors form, with the architecture in its metadata::

    __metadata__ = {"format": "pt", "backroom_architecture": "shelfnet-v1",
                    "backroom_config": '{"conv_channels":[8,16,32],"hidden":32}'}

As a library::

    from backroom_shelfnet import load, save
    model, config = load("global.safetensors")      # eval mode, CPU
    logits = model(images)                          # [n, C, H, W] float32 -> [n, classes]
    save(model, config, "seed.safetensors")         # read by from_torch_safetensors

As a command (``python3 backroom_shelfnet.py --help``)::

    backroom_shelfnet.py logits --model M --images IMAGES.f32 --out LOGITS.f32
    backroom_shelfnet.py init --config '{"conv_channels":[8,16,32],"hidden":32}' --seed 1 --out M
    backroom_shelfnet.py info --model M

Raw ``.f32`` files are little-endian float32 values, row-major: images ``[n, C, H, W]``
(the layout Backroom uses everywhere), logits ``[n, classes]``.

Needs ``torch`` and the ``safetensors`` package (``pip install safetensors``).
"""

from __future__ import annotations

import argparse
import json
import sys
from array import array
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "shelfnet-v1"
ARCHITECTURE_KEY = "backroom_architecture"
CONFIG_KEY = "backroom_config"

# Fields Backroom omits from the JSON when they have these values (a shelf crop classifier).
DEFAULTS = {"kernel_size": 3, "input_channels": 3, "image_size": 64, "num_classes": 2}
FIELDS = ("conv_channels", "hidden", "kernel_size", "input_channels", "image_size", "num_classes")


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with defaults filled in; refuses unknown fields and bad values.

    Mirrors ``ShelfNetConfig::validate``'s structural checks (2 or 3 conv blocks, odd kernel,
    image size divisible by 2 per block); Backroom checks the numeric limits on import.
    """
    unknown = set(config) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown configuration fields {sorted(unknown)}")
    for required in ("conv_channels", "hidden"):
        if required not in config:
            raise ValueError(f"configuration lacks {required!r}")
    full = {**DEFAULTS, **config}
    full["conv_channels"] = [int(c) for c in full["conv_channels"]]
    for key in FIELDS[1:]:
        full[key] = int(full[key])
    blocks = len(full["conv_channels"])
    if blocks not in (2, 3):
        raise ValueError(f"{blocks} conv blocks, expected 2 or 3")
    if full["kernel_size"] % 2 == 0:
        raise ValueError(f"kernel size {full['kernel_size']} is even, expected odd")
    if full["image_size"] % (1 << blocks) != 0:
        raise ValueError(f"image size {full['image_size']} is not a multiple of {1 << blocks}")
    if min(full["conv_channels"] + [full["hidden"], full["input_channels"]]) < 1:
        raise ValueError("channel counts and the hidden width must be positive")
    if full["num_classes"] < 2:
        raise ValueError("at least 2 classes are needed")
    return full


def config_json(config: dict[str, Any]) -> str:
    """Backroom's JSON form of a configuration: compact, fields at their defaults left out."""
    full = normalise_config(config)
    compact = {k: full[k] for k in FIELDS if k not in DEFAULTS or full[k] != DEFAULTS[k]}
    return json.dumps(compact, separators=(",", ":"))


class ShelfNet(nn.Module):
    """2-3 x [Conv2d k x k (padding k//2, bias) -> ReLU -> MaxPool2d(2)], flatten,
    Linear(flat, hidden) -> ReLU -> Linear(hidden, classes). Returns raw logits."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = normalise_config(config)
        cfg = self.config
        kernel = cfg["kernel_size"]
        c_in = cfg["input_channels"]
        self.conv_names = []
        for i, c_out in enumerate(cfg["conv_channels"], start=1):
            name = f"conv{i}"
            self.add_module(name, nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))
            self.conv_names.append(name)
            c_in = c_out
        side = cfg["image_size"] >> len(cfg["conv_channels"])
        self.fc1 = nn.Linear(c_in * side * side, cfg["hidden"])
        self.fc2 = nn.Linear(cfg["hidden"], cfg["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.conv_names:
            x = F.relu(F.max_pool2d(getattr(self, name)(x), 2))  # = pool(relu(.)), exactly
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def load(path: str) -> tuple[ShelfNet, dict[str, Any]]:
    """Reads a Backroom model file: returns the module (eval mode, CPU) and its configuration."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    architecture = metadata.get(ARCHITECTURE_KEY, ARCHITECTURE)
    if architecture != ARCHITECTURE:
        raise ValueError(f"{path} holds architecture {architecture!r}, expected {ARCHITECTURE!r}")
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no {CONFIG_KEY!r} metadata; not a Backroom model file")
    config = normalise_config(json.loads(metadata[CONFIG_KEY]))
    model = ShelfNet(config)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), config


def save(model: nn.Module, config: dict[str, Any], path: str) -> None:
    """Writes ``model``'s weights (float32) with ``config`` in the metadata, for Backroom."""
    from safetensors.torch import save_file

    expected = set(ShelfNet(config).state_dict())
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if set(state) != expected:
        raise ValueError(f"state_dict names {sorted(state)} are not ShelfNet's {sorted(expected)}")
    metadata = {"format": "pt", ARCHITECTURE_KEY: ARCHITECTURE, CONFIG_KEY: config_json(config)}
    save_file(state, path, metadata=metadata)


def read_f32(path: str) -> torch.Tensor:
    values = array("f")
    with open(path, "rb") as handle:
        values.frombytes(handle.read())
    if sys.byteorder != "little":
        values.byteswap()
    if len(values) == 0:
        return torch.zeros(0)
    return torch.frombuffer(values, dtype=torch.float32).clone()


def write_f32(path: str, tensor: torch.Tensor) -> None:
    values = array("f", tensor.detach().to(torch.float32).flatten().tolist())
    if sys.byteorder != "little":
        values.byteswap()
    with open(path, "wb") as handle:
        handle.write(values.tobytes())


def logits_of(model: ShelfNet, images: torch.Tensor) -> torch.Tensor:
    """Logits of flat images (``n * C * H * W`` values), computed in eval mode without grad."""
    cfg = model.config
    numel = cfg["input_channels"] * cfg["image_size"] ** 2
    if images.numel() % numel != 0:
        raise ValueError(f"{images.numel()} image values is not a multiple of {numel}")
    x = images.reshape(-1, cfg["input_channels"], cfg["image_size"], cfg["image_size"])
    model.eval()
    with torch.no_grad():
        return model(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    commands = parser.add_subparsers(dest="command", required=True)
    logits = commands.add_parser("logits", help="logits of raw float32 images")
    logits.add_argument("--model", required=True, help="Backroom model file (.safetensors)")
    logits.add_argument("--images", required=True, help="little-endian float32 [n, C, H, W]")
    logits.add_argument("--out", required=True, help="little-endian float32 [n, classes]")
    init = commands.add_parser("init", help="a PyTorch-initialised model saved for Backroom")
    init.add_argument("--config", required=True, help="configuration JSON, or @file")
    init.add_argument("--seed", type=int, required=True, help="torch.manual_seed")
    init.add_argument("--out", required=True, help="model file to write")
    info = commands.add_parser("info", help="print a model file's configuration")
    info.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.command == "logits":
        model, _ = load(args.model)
        write_f32(args.out, logits_of(model, read_f32(args.images)))
    elif args.command == "init":
        text = args.config
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        config = normalise_config(json.loads(text))
        torch.manual_seed(args.seed)
        save(ShelfNet(config), config, args.out)
    elif args.command == "info":
        model, config = load(args.model)
        count = sum(p.numel() for p in model.parameters())
        print(json.dumps({"config": json.loads(config_json(config)), "parameters": count}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as error:
        print(f"backroom_shelfnet: error: {error}", file=sys.stderr)
        sys.exit(1)
