"""``rsseg export-onnx MODEL --out model.onnx``: ONNX for QGIS plugins (Deepness), verified."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rsseg.cli import app


@app.command("export-onnx")
def export_onnx(
    model: Path = typer.Argument(..., help="Model bundle (.rsseg).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX model to write (.onnx)."),
    tile: int | None = typer.Option(None, help="Input side in pixels (default: the bundle's "
                                               "tile)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Export a bundle to ONNX with the Deepness QGIS plugin's metadata (model_type, class_names,
    resolution, tiles_size, tiles_overlap, standardization_mean/std), softmax included, then
    check it with onnxruntime against PyTorch. Needs: pip install 'rsseg[onnx]'."""
    from rsseg.models.onnx_export import export_onnx as run_export  # loads torch

    done = run_export(model, out, tile, overwrite)
    for note in done.warnings:
        typer.echo(f"Warning: {note}", err=True)
    if as_json:
        typer.echo(json.dumps({"out": str(done.out), "input_shape": done.input_shape,
                               "output_shape": done.output_shape, "opset": done.opset,
                               "max_abs_diff": done.max_abs_diff, "seconds": done.seconds,
                               "metadata": {k: json.loads(v) for k, v in done.metadata.items()}}))
        return
    typer.echo(f"Wrote {done.out} (input {list(done.input_shape)}, output "
               f"{list(done.output_shape)}, opset {done.opset}) in {done.seconds:.1f} s")
    typer.echo(f"onnxruntime vs PyTorch: max abs difference {done.max_abs_diff:.2e}")
