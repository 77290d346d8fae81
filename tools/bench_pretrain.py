"""Pretraining throughput: the real tile loader vs the same batches already in memory.

Tiles a scene (the bundled demo scene by default), builds the pretraining job exactly as
``rsseg pretrain`` does, then times the same number of optimisation steps twice in one run:
fed by the DataLoader (reading GeoTIFF tiles, normalising, making the pretext's views in
workers) and fed from a list of pre-collected batches. ``loader_ratio`` = loader steps/s ÷
in-memory steps/s; ≥ 0.9 means the data pipeline is not the bottleneck.

    python tools/bench_pretrain.py --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rsseg.config import PretrainConfig, load_config
from rsseg.pipelines.demo import SCENE, bundled_scene
from rsseg.pipelines.pretrain import build_pretraining
from rsseg.pipelines.tile import TileOptions, tile_scenes


def timed_steps(model: torch.nn.Module, pretext: torch.nn.Module, batches, steps: int) -> float:
    """Steps per second of forward + backward + Adam over ``steps`` batches of ``batches``."""
    opt = torch.optim.Adam([*model.parameters(), *pretext.parameters()], lr=1e-4)
    model.train()
    start, done = time.perf_counter(), 0
    for batch in batches:
        loss, _ = pretext(batch, model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if done == steps:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=bundled_scene() / SCENE)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(PretrainConfig, args.config, [
        "model.arch=unet", "data.view_size=96", "pretext.params.patch_size=24",
        "trainer.batch_size=16", "trainer.num_workers=2", *args.sets])
    with tempfile.TemporaryDirectory() as tmp:
        tiles = Path(tmp) / "tiles"
        tile_scenes([args.scene], tiles, TileOptions(size=args.tile, stride=args.tile // 4))
        job = build_pretraining(tiles, config)
        loader = job.loader(config)
        timed_steps(job.model, job.pretext, loader, 2)  # warm-up: workers, allocator, caches
        loader_rate = timed_steps(job.model, job.pretext, loader, args.steps)
        batches = []
        while len(batches) < args.steps:
            batches.extend(loader)
        memory_rate = timed_steps(job.model, job.pretext, batches[:args.steps], args.steps)
    result = {
        "loader_steps_s": round(loader_rate, 4),
        "memory_steps_s": round(memory_rate, 4),
        "loader_ratio": round(loader_rate / memory_rate, 3),
        "steps": args.steps,
        "batch_size": config.trainer.batch_size,
        "num_workers": config.trainer.num_workers,
        "view_size": config.data.view_size,
        "model": f"{config.model.arch}/{config.model.encoder}",
        "pretext": config.pretext.name,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2) if args.json else
          f"loader {loader_rate:.3f} steps/s, in memory {memory_rate:.3f} steps/s, "
          f"ratio {result['loader_ratio']:.3f}")


if __name__ == "__main__":
    main()
