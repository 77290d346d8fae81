"""``rsseg predict SCENE --model BUNDLE --out OUT.tif``: a georeferenced class raster (COG);
``rsseg predict SCENES... --out-dir DIR``: one per scene (:mod:`rsseg.cli.many`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rsseg.cli import app

WORKER_MODULES = ("rsseg.pipelines.batch",)  # what a --cluster local worker's tasks import


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"
    auto = "auto"


class Backend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


@app.command()
def predict(
    scenes: list[Path] = typer.Argument(..., help="Scene rasters with the model's bands; "
                                        "also folders, 'glob*.tif' patterns, .txt lists, "
                                        "STAC Item/ItemCollection/Catalog JSON.",
                                        show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle (.rsseg)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Class raster of one scene (COG "
                                    ".tif) [default: SCENE_pred.tif in the current folder]."),
    out_dir: Path | None = typer.Option(None, help="Many scenes: one NAME_pred.tif per scene "
                                        "and summary.csv/.json here; a rerun skips finished "
                                        "scenes."),
    cluster: str | None = typer.Option(None, help="Many scenes on Dask: local[:N] (N worker "
                                       "processes) or a scheduler address tcp://host:8786 "
                                       "[default: in this process]."),
    split_mpx: float = typer.Option(64.0, help="--cluster: a scene of more megapixels is "
                                    "split into row strips predicted on different workers and "
                                    "assembled into one COG (scenes with optional outputs "
                                    "stay whole)."),
    mosaic: Path | None = typer.Option(None, help="Also assemble the scenes' class rasters "
                                       "into this one COG (.tif) with the same sidecars."),
    crs: str | None = typer.Option(None, help="--mosaic: its CRS, e.g. EPSG:32618; scenes in "
                                   "other CRSs are reprojected (nearest) [default: the first "
                                   "scene's]."),
    assets: str | None = typer.Option(None, help="STAC items: the asset keys stacked as the "
                                      "model's bands, e.g. B04,B03,B02,B08 [default: the "
                                      "assets whose key, band or common name is the band's]."),
    tile: str = typer.Option("auto", help="Window side in pixels, or auto: the largest window "
                             "whose activations and blending band fit --max-memory (at least the "
                             "bundle's tile, at most the scene), printed once."),
    max_memory: str = typer.Option("1G", help="--tile auto: memory for the model's activations "
                                   "per call and the blending band (class sums a window tall "
                                   "and the scene wide), e.g. 1G, 512M."),
    overlap: int | None = typer.Option(None, help="Window overlap in pixels (default: the "
                                                  "bundle's)."),
    batch_size: int | None = typer.Option(None, help="Windows per model call [default: 2 on "
                                          "CPU, what fits the card on a GPU]."),
    nodata: float | None = typer.Option(None, help="Nodata value, overriding the scene's."),
    device: Device = typer.Option(Device.auto, help="Where the model runs."),
    precision: Precision = typer.Option(Precision.fp32, help="fp32; bf16 on CPUs with AVX-512 "
                                        "BF16/AMX and on GPUs; fp16 on GPUs; int8 on CPUs "
                                        "(OpenVINO, quantized by NNCF on the scene's windows, "
                                        "refused below 99 % agreement with fp32); auto: int8 "
                                        "where it runs and agrees, else fp32."),
    backend: Backend | None = typer.Option(None, help="torch; onnxruntime (CPU, fp32; pip "
                                           "install 'rsseg[onnx]'); openvino (CPU, fp32 and "
                                           "int8; pip install 'rsseg[openvino]'). Graphs are "
                                           "cached by the bundle's hash in $RSSEG_CACHE_DIR or "
                                           "~/.cache/rsseg [default: openvino for int8 and "
                                           "auto, else torch]."),
    threads: int | None = typer.Option(None, help="CPU threads for the model [default: all "
                                       "cores]."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    domain: str | None = typer.Option(None, help="Domain of a multi-domain bundle to predict "
                                      "with (rsseg finetune --method multidomain)."),
    confidence: Path | None = typer.Option(None, help="Also write the max class probability "
                                           "x 255 (uint8 COG, nodata 0); with --out-dir a "
                                           "name holding {scene}."),
    probs: Path | None = typer.Option(None, help="Also write per-class probabilities x 255 "
                                      "(uint8 COG, one band per class); with --out-dir a name "
                                      "holding {scene}."),
    vector: Path | None = typer.Option(None, help="Also write polygons per class (.gpkg, .fgb "
                                       "or .parquet); with --out-dir a name holding {scene}."),
    min_area: float = typer.Option(0.0, help="--vector: drop polygons smaller than this (m²)."),
    simplify: float = typer.Option(0.0, help="--vector: simplification tolerance (CRS units)."),
    preview: Path | None = typer.Option(None, help="Also write a PNG quicklook: scene RGB, "
                                        "prediction, legend; with --out-dir a name holding "
                                        "{scene}."),
    preview_bands: str | None = typer.Option(None, help="--preview bands R,G,B (names or "
                                             "1-based numbers; default: red, green, blue)."),
) -> None:
    """Predict scenes with a model bundle: stitched, georeferenced uint8 classes (nodata 255).

    The class raster comes with NAME.qml (QGIS style) and NAME.tif.aux.xml (GDAL class names).
    """
    from rsseg.distributed import warm_local_workers

    warm_local_workers(cluster, WORKER_MODULES)  # before this process loads torch
    from rsseg.cli.many import predict_many
    from rsseg.inference.memory import trim_freed_memory
    from rsseg.inference.runtime import RuntimeOptions
    from rsseg.io.inputs import is_collection
    from rsseg.io.stac import parse_assets
    from rsseg.pipelines.batch import BatchOptions
    from rsseg.pipelines.outputs import OutputOptions
    from rsseg.pipelines.predict import PredictOptions, predict_scene  # loads torch

    outputs = OutputOptions(confidence=confidence, probs=probs, vector=vector,
                            min_area=min_area, simplify=simplify, preview=preview,
                            preview_bands=preview_bands)
    options = PredictOptions(tile=tile, max_memory=max_memory, overlap=overlap,
                             batch_size=batch_size, nodata=nodata, device=device.value,
                             overwrite=overwrite, outputs=outputs, domain=domain,
                             runtime=RuntimeOptions(backend=backend and backend.value,
                                                    precision=precision.value, threads=threads))
    trim_freed_memory()
    if len(scenes) > 1 or is_collection(scenes[0]) or out_dir or cluster or mosaic or crs \
            or assets:
        predict_many(scenes, model, out, out_dir,
                     BatchOptions(options, cluster, mosaic, crs, parse_assets(assets),
                                  split_mpx))
        return
    scene = scenes[0]
    if out is None:
        out = Path(f"{scene.stem}_pred.tif")
        typer.echo(f"No --out given: writing {out} in the current folder")
    console = Console(stderr=True)
    columns = (TextColumn("predicting"), BarColumn(), _MpxColumn(), TextColumn("ETA"),
               TimeRemainingColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("predicting", total=None)
        summary = predict_scene(scene, model, out, options,
                                progress=lambda done, total: bar.update(task, completed=done,
                                                                        total=total),
                                notify=typer.echo)
    typer.echo(f"Wrote {summary.out} ({summary.width}x{summary.height} px, {summary.windows} "
               f"windows) in {summary.seconds:.1f} s, {summary.mpx_per_s:.3g} Mpx/s")
    extra = [p for p in summary.outputs if p != summary.out]
    if extra:
        typer.echo("Also wrote " + ", ".join(str(p) for p in extra))
    if summary.vector is not None:
        v = summary.vector
        typer.echo(f"Polygons: {v.polygons} written ({v.dropped} under --min-area) in "
                   f"{v.seconds:.1f} s")


class _MpxColumn(ProgressColumn):
    """Scene megapixels per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{(task.speed or 0) / 1e6:.2f} Mpx/s")

