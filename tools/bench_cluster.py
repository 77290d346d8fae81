"""Benchmark ``rsseg predict --cluster``: one process against a local Dask cluster on the same
cores, side by side in one run.

    python tools/bench_cluster.py --json                     # 8 scenes of 2048², one of 8192²
    python tools/bench_cluster.py --scenes 2 --size 256 --large 512 --split-mpx 0.1  # smoke test

It generates the scenes and a randomly initialised bundle (``bench_predict.make_scene`` and
``make_bundle``: 3-band uint8, resnet18 U-Net, tile 256, overlap 64), then runs, each as a fresh
Python process calling :func:`rsseg.pipelines.batch.predict_batch` (what ``rsseg predict
--out-dir`` runs), one after the other:

- ``small``: the ``--scenes`` scenes of ``--size``² predicted ``sequential`` (one process,
  ``--threads`` = all the cores) and on ``cluster`` (``--cluster local:W``, W = ``--workers``,
  the cores split between them: one thread each on 2 cores);
- ``large``: one ``--large``² scene ``sequential`` and ``split`` on the same cluster into row
  strips (``--split-mpx``); with ``--unsplit`` also ``unsplit`` (the whole scene as one task);
- with ``--cold``, also ``cluster_cold`` on the small scenes: the workers spawned afresh, each
  importing torch and the model code on its first task (rsseg before its fork server was warmed
  ahead of its own imports: :func:`rsseg.distributed.warm_local_workers`);
- ``overhead``: a LocalCluster's start and Dask's cost per task (``--tasks`` empty tasks).

Per run: ``wall_s`` (the process, imports and model loading included), ``batch_s``
(``predict_batch``'s own clock: planning done to last output written, the cluster's start and
the workers' model loading included), ``mpx_s`` (scene megapixels / wall), ``rss_mb`` (peak RSS
of the submitting process) and, on a cluster, ``worker_rss_mb`` (peak RSS of each worker
process, read in the worker: VmHWM, else ``getrusage``). ``ratio`` = cluster or split Mpx/s over
sequential (by wall; ``ratio_batch`` by batch time), against the targets 0.95 (small) and 0.9
(large); on the small scenes ``ratio_scene`` compares the median scene's seconds (the
workers' steady state, without the cluster's start, the workers' imports and their close);
``agreement``: share of pixels whose class equals the sequential run's. ``estimate``
turns the measured figures into hours for 1,000 scenes of 10,000² on 1, 10 and 100 machines like
this one (docs/performance.md, "Many scenes on a cluster").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio

from rsseg.cli.predict import WORKER_MODULES
from rsseg.distributed import warm_local_workers

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {"small": 0.95, "large": 0.9, "worker_rss_mb": 1536.0}
ESTIMATE_SCENES, ESTIMATE_SIDE, ESTIMATE_MACHINES = 1000, 10_000, (1, 10, 100)


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (of this process image), else ``getrusage``."""
    try:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(spec: dict) -> dict:
    """One measured run (in its own process): ``predict_batch`` with ``spec``'s scenes and
    flags; on a cluster, each worker's peak RSS is read before the cluster closes. As
    ``rsseg predict`` does, local workers' imports start before this process loads torch."""
    if spec["warm"]:
        warm_local_workers(spec["cluster"], WORKER_MODULES)
    else:
        import rsseg.distributed

        rsseg.distributed.FORK_SERVER = False
    from rsseg.inference.runtime import RuntimeOptions
    from rsseg.pipelines import jobs
    from rsseg.pipelines.batch import BatchOptions, predict_batch
    from rsseg.pipelines.predict import PredictOptions

    workers: dict[str, float] = {}
    real_connect = jobs.connect

    @contextmanager
    def measured(cluster):  # the cluster rsseg starts, its workers asked before it closes
        with real_connect(cluster) as client:
            yield client
            workers.update(client.run(peak_rss_mb))

    jobs.connect = measured
    options = BatchOptions(PredictOptions(overwrite=True,
                                          runtime=RuntimeOptions(threads=spec["threads"])),
                           cluster=spec["cluster"], split_mpx=spec["split_mpx"])
    summary = predict_batch(spec["scenes"], spec["model"], spec["out_dir"], options)
    failed = [r.error for r in summary.results if r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} scene(s) failed: {failed[0]}")
    return {"batch_s": summary.seconds, "rss_mb": peak_rss_mb(),
            "worker_rss_mb": sorted(workers.values()),
            "scene_s": sorted(r.seconds for r in summary.results)}


def measure(scenes: list[Path], model: Path, out_dir: Path, cluster: str | None,
            threads: int | None, split_mpx: float, warm: bool = True) -> dict:
    """``child`` in a fresh Python process, timed from the outside."""
    spec = {"warm": warm, "scenes": [str(s) for s in scenes], "model": str(model),
            "out_dir": str(out_dir),
            "cluster": cluster, "threads": threads, "split_mpx": split_mpx}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"run {cluster or 'sequential'} failed: {proc.stderr.strip()[-2000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    pixels = sum(_size(s)[0] * _size(s)[1] for s in scenes) / 1e6
    result = {"wall_s": round(wall, 2), "batch_s": round(figures["batch_s"], 2),
              "mpx_s": round(pixels / wall, 4), "rss_mb": round(figures["rss_mb"], 1)}
    if cluster:
        result["worker_rss_mb"] = [round(x, 1) for x in figures["worker_rss_mb"]]
    if len(scenes) > 1:
        result["scene_s"] = round(float(np.median(figures["scene_s"])), 2)
    return result


def overhead(workers: int, tasks: int) -> dict:
    """A LocalCluster's start (seconds) and the round trip of ``tasks`` empty tasks (ms each)."""
    import logging

    from dask.distributed import Client, LocalCluster, wait

    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter() - start
        wait(client.map(_nothing, range(workers), pure=False))  # connections warm
        start = time.perf_counter()
        wait(client.map(_nothing, range(tasks), pure=False))
        per_task = (time.perf_counter() - start) / tasks
    return {"cluster_start_s": round(started, 2), "tasks": tasks,
            "task_ms": round(per_task * 1e3, 3)}


def _nothing(i: int) -> int:
    return i


def estimate(cluster_mpx_s: float, workers: int, task_ms: float, start_s: float) -> dict:
    """Hours for ``ESTIMATE_SCENES`` scenes of ``ESTIMATE_SIDE``² on machines like this one,
    each running ``workers`` workers at the measured cluster throughput; the scheduler's cost
    per task is paid once per scene (one scheduler for all machines), the cluster's start
    once."""
    scene_mpx = ESTIMATE_SIDE**2 / 1e6
    per_worker_scenes_h = 3600 * cluster_mpx_s / workers / scene_mpx
    rows = {}
    for machines in ESTIMATE_MACHINES:
        scenes_h = per_worker_scenes_h * workers * machines
        hours = (ESTIMATE_SCENES / scenes_h + ESTIMATE_SCENES * task_ms / 3.6e6
                 + start_s / 3600)
        rows[str(machines)] = {"workers": workers * machines, "scenes_per_h": round(scenes_h, 1),
                               "hours": round(hours, 2)}
    return {"scenes": ESTIMATE_SCENES, "side": ESTIMATE_SIDE,
            "scenes_per_h_per_worker": round(per_worker_scenes_h, 2), "machines": rows}


def _size(path: Path) -> tuple[int, int]:
    with rasterio.open(path) as src:
        return src.width, src.height


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def agreement(a: Path, b: Path, scenes: list[Path]) -> float:
    """Share of pixels of ``scenes`` whose class in folder ``a`` equals folder ``b``'s."""
    same = total = 0
    for scene in scenes:
        x, y = (_classes(folder / f"{scene.stem}_pred.tif") for folder in (a, b))
        same, total = same + int((x == y).sum()), total + x.size
    return round(same / total, 6)


def compare(name: str, runs: dict, target: float, candidate: str, workers: int) -> None:
    """Add ``candidate``'s ratios over ``sequential`` and whether the target is met;
    ``ratio_scene`` (several scenes): the same ratio of the median scene's seconds, ``workers``
    scenes at a time on the cluster (no start, import or close: the steady state)."""
    seq, other = runs["sequential"], runs[candidate]
    runs.update(ratio=round(other["mpx_s"] / seq["mpx_s"], 3),
                ratio_batch=round(seq["batch_s"] / other["batch_s"], 3), target=target)
    if "scene_s" in other:  # steady state: scenes a second, `workers` scenes at once
        runs["ratio_scene"] = round(seq["scene_s"] * workers / other["scene_s"], 3)
    runs["met"] = runs["ratio"] >= target
    print(f"{name}: {candidate} / sequential = {runs['ratio']} (target {target})",
          file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    from bench_predict import make_bundle, make_scene

    from rsseg.inference.sliding import strips
    from rsseg.models.bundle import read_meta
    from rsseg.pipelines.predict import PredictOptions, predict_windows
    from rsseg.tiling.blend import layout

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cluster = f"local:{args.workers}"
    with tempfile.TemporaryDirectory(prefix="rsseg-bench-cluster-") as tmp:
        folder = Path(tmp)
        print("writing scenes and bundle", file=sys.stderr)
        model = make_bundle(folder / "model.rsseg", "unet", "resnet18", 256, 64)
        (folder / "small").mkdir()
        small = [make_scene(folder / "small" / f"s{i}.tif", args.size, seed=i)
                 for i in range(args.scenes)]
        large = [make_scene(folder / "large.tif", args.large, seed=99)]
        result: dict = {"cores": cores, "workers": args.workers, "threads_sequential": cores,
                        "model": "unet/resnet18, tile 256, overlap 64, random weights",
                        "small": {"scenes": args.scenes, "size": args.size},
                        "large": {"size": args.large, "split_mpx": args.split_mpx}}
        no_split = 1e9  # megapixels: no scene is split
        for name, scenes, modes in (
                ("small", small, {"sequential": (None, cores, no_split, True),
                                  "cluster": (cluster, None, no_split, True),
                                  **({"cluster_cold": (cluster, None, no_split, False)}
                                     if args.cold else {})}),
                ("large", large, {"sequential": (None, cores, no_split, True),
                                  "split": (cluster, None, args.split_mpx, True),
                                  **({"unsplit": (cluster, None, no_split, True)}
                                     if args.unsplit else {})})):
            for mode, (where, threads, split, warm) in modes.items():
                print(f"{name}: {mode}", file=sys.stderr)
                result[name][mode] = measure(scenes, model, folder / f"{name}_{mode}", where,
                                             threads, split, warm)
            for mode in modes:
                if mode != "sequential":
                    result[name][mode]["agreement"] = agreement(
                        folder / f"{name}_sequential", folder / f"{name}_{mode}", scenes)
        compare("small", result["small"], TARGETS["small"], "cluster", args.workers)
        if args.cold:
            small_runs = result["small"]
            small_runs["ratio_cold"] = round(small_runs["cluster_cold"]["mpx_s"]
                                             / small_runs["sequential"]["mpx_s"], 3)
        compare("large", result["large"], TARGETS["large"], "split", args.workers)
        tile, overlap, multiple, _ = predict_windows(read_meta(model), PredictOptions(),
                                                     args.large, args.large)
        result["large"]["strips"] = len(strips(layout(args.large, args.large, tile, overlap,
                                                      multiple), round(args.split_mpx * 1e6)))
    peaks = [x for part in ("small", "large") for name, mode in result[part].items()
             if isinstance(mode, dict) and name != "cluster_cold"  # a reference, not rsseg's
             for x in mode.get("worker_rss_mb", [])]
    result["worker_rss_mb"] = {"max": max(peaks), "target": TARGETS["worker_rss_mb"],
                               "met": max(peaks) < TARGETS["worker_rss_mb"]}
    print("overhead", file=sys.stderr)
    result["overhead"] = overhead(args.workers, args.tasks)
    result["estimate"] = estimate(result["small"]["cluster"]["mpx_s"], args.workers,
                                  result["overhead"]["task_ms"],
                                  result["overhead"]["cluster_start_s"])
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8, help="small scenes")
    parser.add_argument("--size", type=int, default=2048, help="side of each small scene")
    parser.add_argument("--large", type=int, default=8192, help="side of the large scene")
    parser.add_argument("--split-mpx", type=float, default=64.0,
                        help="the large scene's strips (predict --split-mpx)")
    parser.add_argument("--workers", type=int, default=2, help="local cluster workers")
    parser.add_argument("--cold", action="store_true",
                        help="also the small scenes on workers that import on their first task")
    parser.add_argument("--unsplit", action="store_true",
                        help="also the large scene as one task on the cluster")
    parser.add_argument("--tasks", type=int, default=500, help="empty tasks timed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
