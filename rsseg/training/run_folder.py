"""A run folder: resolved config, CSV log, loss plot, checkpoints and exported weights.

Layout::

    RUN/config.yaml          the resolved config the run used
    RUN/metrics.csv          Lightning's CSV log (one row per logged step/epoch)
    RUN/loss.png             loss curves, redrawn each epoch
    RUN/checkpoints/last.ckpt  full training state for --resume (Lightning format)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from rsseg.config import Section, dump_config
from rsseg.errors import ConfigError, InputError, OutputError

LAST_CKPT = "checkpoints/last.ckpt"
RESUMABLE_KEYS = {"trainer.epochs"}  # may change when resuming (train longer)
# A time budget may change on resume but not appear or vanish: with one, the LR schedule steps
# per optimizer step, without one per epoch, and neither reads the other's checkpointed state.
RESUMABLE_IF_SET = {"trainer.max_time"}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config trees, as ``key: old -> new``."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS
            and not (k in RESUMABLE_IF_SET and None not in (a.get(k), b.get(k)))]


def is_secondary_process() -> bool:
    """True in the extra processes of a DDP run (Lightning re-launches the command per device,
    a cluster launches it per node or task): only the first process prepares the run folder."""
    return any(os.environ.get(var, "0") != "0" for var in ("LOCAL_RANK", "NODE_RANK",
                                                             "SLURM_PROCID"))


def prepare_run(run: Path, config: Section, resume: bool, overwrite: bool) -> Path | None:
    """Create or reopen a run folder; return the checkpoint to resume from (or None).

    Refuses to reuse an existing run without ``--resume``/``--overwrite`` and to resume a run
    whose config differs (naming the keys that differ).
    """
    cfg_path = run / "config.yaml"
    if is_secondary_process():
        return run / LAST_CKPT if resume else None
    if resume:
        ckpt = run / LAST_CKPT
        if not ckpt.is_file() or not cfg_path.is_file():
            raise InputError(f"{run} has no checkpoint to resume from",
                             "start it without --resume")
        old = yaml.safe_load(cfg_path.read_text()) or {}
        diffs = config_differences(old, config.model_dump(mode="json"))
        if diffs:
            raise ConfigError(f"--resume: the config differs from {cfg_path}: {'; '.join(diffs)}",
                              "resume with the same config or start a new run")
        dump_config(config, cfg_path)
        return ckpt
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise OutputError(f"{run} already exists",
                              "pass --resume to continue it or --overwrite to replace it")
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create run folder {run} ({err.strerror})",
                          "choose another --out") from None
    dump_config(config, cfg_path)
    return None


@contextmanager
def run_folder(run: Path, config: Section, resume: bool, overwrite: bool
               ) -> Iterator[Path | None]:
    """:func:`prepare_run` for the block's training; a new run that stops in the block (an error,
    Ctrl-C, SIGTERM) before its first checkpoint is removed, so that the same command can simply
    be run again. A run with a checkpoint stays, to be continued with ``--resume``."""
    ckpt = prepare_run(run, config, resume, overwrite)
    fresh = not resume and not is_secondary_process()
    try:
        yield ckpt
    except BaseException:
        if fresh and not (run / LAST_CKPT).is_file():
            shutil.rmtree(run, ignore_errors=True)
        raise
