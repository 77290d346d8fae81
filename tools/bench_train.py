"""Training speed per precision and memory format, with the loss curves, in one run.

Builds the demo's GLCNet pretraining job (the bundled scene tiled as ``rsseg demo`` tiles it, the
demo's model and pretext config), collects ``--steps`` batches once, then for each mode trains a
fresh, identically seeded model on exactly those batches and reports steps/s and the loss of
every step. ``bf16-mixed`` is what Lightning's precision plugin does: the forward pass under
``torch.autocast(dtype=bfloat16)``, weights and optimizer in float32 (the contrastive losses
cast to float32 inside). ``speedup`` is steps/s ÷ ``32-true`` (contiguous) steps/s;
``loss_gap`` is the mean absolute difference of the mode's loss curve from ``32-true``'s,
relative to the mean loss (0 = same curve).

    python tools/bench_train.py --json
    python tools/bench_train.py --device cuda --modes 32-true,32-true+cl,bf16-mixed+cl --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from rsseg.config import PretrainConfig
from rsseg.pipelines.demo import PRETRAIN, SCENE, TILE, bundled_scene
from rsseg.pipelines.pretrain import build_pretraining
from rsseg.pipelines.tile import TileOptions, tile_scenes

AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def train(tiles: Path, config: PretrainConfig, batches: list, mode: str,
          device: torch.device) -> tuple[float, list[float]]:
    """Steps/s (after 2 warm-up steps) and per-step losses of ``mode`` (``PRECISION[+cl]``)."""
    precision, _, layout = mode.partition("+")
    torch.manual_seed(0)
    job = build_pretraining(tiles, config)
    model, pretext = job.model.to(device).train(), job.pretext.to(device)
    if layout == "cl":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([*model.parameters(), *pretext.parameters()], lr=config.optim.lr)
    scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")
    dtype = AUTOCAST[precision]
    losses, start = [], 0.0
    for step, batch in enumerate(batches):
        if step == 2:
            _sync(device)
            start = time.perf_counter()
        torch.manual_seed(step)  # the pretext's random choices (boxes, views) match across modes
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = pretext(move_data_to_device(batch, device), model)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    _sync(device)
    return (len(batches) - 2) / (time.perf_counter() - start), losses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="32-true,32-true+cl,bf16-mixed+cl",
                        help="comma-separated PRECISION or PRECISION+cl (channels-last)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="[default: the demo's]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = PretrainConfig.model_validate(PRETRAIN)
    if args.batch_size:
        config.trainer.batch_size = args.batch_size
    device = torch.device(args.device)
    modes = [m.strip() for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tiles = Path(tmp) / "tiles"
        tile_scenes([bundled_scene() / SCENE], tiles, TileOptions(**TILE))
        torch.manual_seed(0)
        loader = build_pretraining(tiles, config).loader(config)
        batches = []
        while len(batches) < args.steps:
            batches.extend(loader)
        batches = batches[:args.steps]
        results = {mode: train(tiles, config, batches, mode, device) for mode in modes}
    base_rate, base_losses = results.get("32-true", next(iter(results.values())))
    mean_loss = sum(base_losses) / len(base_losses)
    out = {"device": str(device), "cpu": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "steps": args.steps,
           "batch_size": config.trainer.batch_size, "view_size": config.data.view_size,
           "model": f"{config.model.arch}/{config.model.encoder}", "modes": {}}
    for mode, (rate, losses) in results.items():
        gap = sum(abs(a - b) for a, b in zip(losses, base_losses, strict=True)) / len(losses)
        out["modes"][mode] = {"steps_s": round(rate, 4), "speedup": round(rate / base_rate, 3),
                              "loss_gap": round(gap / mean_loss, 4),
                              "loss_first": round(losses[0], 4),
                              "loss_last5": round(sum(losses[-5:]) / 5, 4),
                              "losses": [round(v, 4) for v in losses]}
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
