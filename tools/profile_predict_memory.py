"""Peak RSS of one ``rsseg predict`` phase by phase (memory only, nothing is timed).

    python tools/profile_predict_memory.py --size 2048 --threads 1          # a worker's scene
    python tools/profile_predict_memory.py --size 6144 --threads 1 --strip 3:6   # a strip
    python tools/profile_predict_memory.py --scene S.tif --model M.rsseg --backend onnxruntime

Without ``--scene`` it writes a synthetic scene of ``--size``² and a randomly initialised bundle
(``bench_predict.make_scene`` / ``make_bundle``: 3-band uint8, resnet18 U-Net, tile 256,
overlap 64, as ``bench_cluster.py``) into a temporary folder, then predicts it in this process
with :func:`~rsseg.pipelines.predict.predict_scene` (or, with ``--strip A:B``, window rows
``A..B`` with :func:`~rsseg.pipelines.predict.predict_strip`, what a Dask worker runs for a
split scene). Phases: ``imports`` (rsseg's predict stack), ``load_bundle``, ``plan`` (checks,
``--tile auto``'s probe), ``build_runner`` (BatchNorm folding, ONNX export/session),
``windows`` (prediction, blending and streaming the rows to disk), ``cog`` (the COG copy),
``finish`` (sidecars, publishing).
Each phase's figure is the process's peak RSS (VmHWM) during it, the peak being reset at every
phase start (``/proc/self/clear_refs``, Linux); ``entry`` is the RSS when it starts. A Dask
worker runs with ``MALLOC_TRIM_THRESHOLD_=65536`` (Dask's default ``pre-spawn-environ``): set it
to see a worker's figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        return int(next(x for x in status if x.startswith(key)).split()[1]) / 1024


class Phases:
    """Peak RSS per phase: VmHWM read, then reset, at each phase change."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.current = "start"
        self.rows[self.current] = {"entry_mb": status_mb("VmRSS:")}

    def mark(self, name: str) -> None:
        self.rows[self.current]["peak_mb"] = status_mb("VmHWM:")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        self.current = name
        self.rows[name] = {"entry_mb": status_mb("VmRSS:")}

    def wrap(self, fn, name: str, after: str):
        def wrapped(*args, **kwargs):
            self.mark(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(after)
        return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, help="a scene (default: a synthetic one)")
    parser.add_argument("--model", type=Path, help="a bundle (default: a random resnet18 U-Net)")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic scene")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--strip", help="A:B, window rows A..B (a split scene's strip)")
    parser.add_argument("--out", type=Path, help="keep the class raster (or strip .npy) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rsseg-profile-") as tmp:
        scene, model = args.scene, args.model
        if scene is None or model is None:  # in another process: not in this one's heap
            scene, model = scene or Path(tmp) / "scene.tif", model or Path(tmp) / "model.rsseg"
            subprocess.run([sys.executable, "-c", MAKE.format(
                tools=str(Path(__file__).resolve().parent), scene=str(scene), size=args.size,
                model=str(model))], check=True)
        profile(args, scene, model, Path(tmp))


MAKE = """import sys; sys.path.insert(0, {tools!r})
from pathlib import Path
from bench_predict import make_bundle, make_scene
if not Path({scene!r}).exists(): make_scene(Path({scene!r}), {size})
if not Path({model!r}).exists(): make_bundle(Path({model!r}), "unet", "resnet18", 256, 64)
"""


def profile(args: argparse.Namespace, scene: Path, model: Path, tmp: Path) -> None:
    phases = Phases()
    phases.mark("imports")
    import numpy as np
    import rasterio.shutil

    from rsseg.inference.runtime import RuntimeOptions
    from rsseg.models.bundle import load_bundle
    from rsseg.pipelines import predict

    options = predict.PredictOptions(
        tile=args.tile, batch_size=args.batch_size, overwrite=True,
        runtime=RuntimeOptions(args.backend, args.precision, args.threads))
    loader = phases.wrap(load_bundle, "load_bundle", "plan")
    predict.build_runner = phases.wrap(predict.build_runner, "build_runner", "windows")
    rasterio.shutil.copy = phases.wrap(rasterio.shutil.copy, "cog", "finish")
    if args.strip:
        first, stop = map(int, args.strip.split(":"))
        strip = predict.predict_strip(scene, model, options, range(first, stop),
                                      loader=loader)
        phases.mark("end")
        what = {"strip_first_row": strip.row, "strip_shape": list(strip.ids.shape)}
        if args.out:
            np.save(args.out, strip.ids)
    else:
        out = args.out or tmp / "pred.tif"
        summary = predict.predict_scene(scene, model, out, options, loader=loader)
        phases.mark("end")
        what = {"tile": summary.tile, "batch_size": summary.batch_size}
    rows = {k: {m: round(v, 1) for m, v in row.items()} for k, row in phases.rows.items()
            if "peak_mb" in row and k != "start"}
    print(json.dumps({**what, "peak_mb": max(r["peak_mb"] for r in rows.values()),
                      "phases": rows}, indent=1))


if __name__ == "__main__":
    main()
