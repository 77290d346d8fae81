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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from rsseg.config import Section, dump_config
from rsseg.errors import ConfigError, InputError, OutputError, Stopped
from rsseg.io.locks import output_lock
from rsseg.io.owned import RUN, check_replaceable

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


def prepare_run(run: Path, config: Section, resume: bool, overwrite: bool,
                inputs: Iterable[str | Path] = ()) -> Path | None:
    """Create or reopen a run folder; return the checkpoint to resume from (or None).

    Refuses to reuse an existing run without ``--resume``/``--overwrite``, to resume a run
    whose config differs (naming the keys that differ), and to replace with ``--overwrite`` a
    folder that is not an rsseg run folder or holds one of ``inputs``
    (:func:`~rsseg.io.owned.check_replaceable`). Resuming changes nothing in the folder.
    """
    cfg_path = run / "config.yaml"
    if is_secondary_process():
        return run / LAST_CKPT if resume else None
    if run.exists() and not run.is_dir():
        raise OutputError(f"{run} is a file, not a run folder", "choose another --out")
    if resume:
        ckpt = run / LAST_CKPT
        if not ckpt.is_file() or not cfg_path.is_file():
            raise InputError(f"{run} has no checkpoint to resume from",
                             "start it without --resume")
        try:
            old = yaml.safe_load(cfg_path.read_text()) or {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            raise InputError(f"{cfg_path}: not a readable config ({type(err).__name__})",
                             "start a new run with --overwrite") from None
        diffs = config_differences(old if isinstance(old, dict) else {},
                                   config.model_dump(mode="json"))
        if diffs:
            raise ConfigError(f"--resume: the config differs from {cfg_path}: {'; '.join(diffs)}",
                              "resume with the same config or start a new run")
        return ckpt
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise OutputError(f"{run} already exists",
                              "pass --resume to continue it or --overwrite to replace it")
        check_replaceable(run, RUN, inputs)
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create run folder {run} ({err.strerror})",
                          "choose another --out") from None
    dump_config(config, cfg_path)
    return None


def check_checkpoint(ckpt: Path) -> None:
    """Refuse (one line) a checkpoint that is truncated, foreign, or that PyTorch's safe loader
    refuses, before training touches anything. Memory-mapped: the weights are not read."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise InputError(f"{ckpt} cannot be resumed: truncated, or not a checkpoint rsseg wrote "
                         f"({reason})", "start a new run with --overwrite") from None
    if not isinstance(state, dict) or not {"state_dict", "epoch"} <= state.keys():
        raise InputError(f"{ckpt} cannot be resumed: not a training checkpoint rsseg wrote",
                         "start a new run with --overwrite")


@contextmanager
def run_folder(run: Path, config: Section, resume: bool, overwrite: bool,
               inputs: Iterable[str | Path] = ()) -> Iterator[Path | None]:
    """:func:`prepare_run` for the block's training, holding the lock on the run's name
    (:func:`~rsseg.io.locks.output_lock`: a second run into the same folder fails at once).

    A new run that stops in the block (an error, Ctrl-C, SIGTERM) before its first checkpoint
    is removed, so that the same command can simply be run again; a run with a checkpoint
    stays, to be continued with ``--resume`` (a :class:`~rsseg.errors.Stopped` carries it). A
    resumed run checks its checkpoint loads first and rewrites ``config.yaml`` only once
    training went on (its checkpoint changed).
    """
    if is_secondary_process():  # DDP: the first process holds the lock and prepares the run
        yield prepare_run(run, config, resume, overwrite)
        return
    try:
        run.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create run folder {run} ({err.strerror})",
                          "choose another --out") from None
    with output_lock(run):
        ckpt = prepare_run(run, config, resume, overwrite, inputs)
        if ckpt is not None:
            check_checkpoint(ckpt)
        before = _mtime(run / LAST_CKPT)
        try:
            yield ckpt
        except BaseException as err:
            if not resume and not (run / LAST_CKPT).is_file():
                shutil.rmtree(run, ignore_errors=True)
            elif isinstance(err, (Stopped, RuntimeError)):  # a stop, or its data workers'
                err.checkpoint = run / LAST_CKPT  # type: ignore[union-attr]
            if resume and _mtime(run / LAST_CKPT) != before:
                dump_config(config, run / "config.yaml")
            raise
        if resume:
            dump_config(config, run / "config.yaml")


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
