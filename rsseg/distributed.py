"""Scenes over Dask workers: ``--cluster local[:N]`` or a scheduler address; in-process without.

``--cluster local:N`` starts a :class:`dask.distributed.LocalCluster` of N worker processes of one
task each (N defaults to the cores; the cores are split between them for the model's threads);
``--cluster tcp://host:8786`` (any scheduler address: ``dask scheduler``, dask-jobqueue on
SLURM/PBS, Kubernetes) connects to running workers, which must see the same files (model, scenes,
outputs) at the same paths. Tasks are submitted with :meth:`Client.submit` and collected with
:func:`dask.distributed.as_completed`; a worker that dies costs its task, which the scheduler
gives to another worker (up to ``distributed.scheduler.allowed-failures`` times). Without
``--cluster``, :func:`run_tasks` calls the function in this process, with no Dask at all.

Local workers are forked from a fork server (where the platform has one) that
:func:`warm_local_workers` starts as soon as the command knows it will need them, importing torch
and the model code there while this process imports its own: each worker then starts with them
imported instead of importing them on its first task (~5 s a worker on 2 cores).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from rsseg.errors import ConfigError, InputError

Item = TypeVar("Item")
CONNECT_TIMEOUT_S = 5
# Two Dask defaults cost the workers that `local:N` starts speed, measured on 2 cores with 8
# scenes of 2048² (docs/performance.md, "Many scenes on a cluster"): the statistical profiler (a
# sample of every thread's stack each 10 ms, for the dashboard's Profile tab; 9 %), and
# MALLOC_TRIM_THRESHOLD_=65536 in the workers' environment, which turns off glibc's adaptive mmap
# threshold so that every window-sized array is mapped and zero-filled afresh (a plain one-thread
# process took 9.5 s a scene without it and 11.5 s with it; local:2 9 % faster without it, for
# ~300 MiB more peak memory per worker). Workers of an existing scheduler are started by their
# owner (`dask worker`, dask-jobqueue): set both there (README).
LOCAL_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
UNSET_WORKER_ENVIRON = ("MALLOC_TRIM_THRESHOLD_",)
FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster``: a LocalCluster of ``workers`` processes, or ``address``."""

    address: str | None = None
    workers: int | None = None

    @property
    def threads_per_worker(self) -> int | None:
        """Model threads of each local worker (cores split between them); None for a remote
        cluster, where each worker splits its own machine's cores (:func:`worker_threads`)."""
        if self.address is not None:
            return None
        return max(1, cpu_count() // (self.workers or cpu_count()))


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_cluster(text: str | None) -> ClusterSpec | None:
    """``local``, ``local:N`` or a scheduler address (``tcp://host:8786``); None stays None."""
    if text is None:
        return None
    if text == "local":
        return ClusterSpec(workers=cpu_count())
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--cluster {text}: the number of local workers must be at least 1",
                              f"use e.g. --cluster local:{cpu_count()}")
        return ClusterSpec(workers=int(count))
    if "://" in text and text.split("://", 1)[1]:
        return ClusterSpec(address=text)
    raise ConfigError(f"--cluster {text!r} is neither local[:N] nor a scheduler address",
                      "use --cluster local:4 or --cluster tcp://host:8786")


@contextmanager
def connect(spec: ClusterSpec) -> Iterator[Any]:
    """A :class:`dask.distributed.Client` of ``spec``'s cluster, closed (with the LocalCluster
    it started) at the end. An unreachable scheduler is an InputError within
    :data:`CONNECT_TIMEOUT_S` seconds."""
    import dask
    from dask.distributed import Client, LocalCluster

    if spec.address is None:
        with dask.config.set(local_worker_config()), \
                LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec.address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot reach the Dask scheduler at {spec.address} ({reason})",
                         "start it (dask scheduler) and its workers, or use --cluster local:N"
                         ) from None
    with client:
        yield client


def local_worker_config() -> dict[str, Any]:
    """:data:`LOCAL_WORKER_CONFIG`, and Dask's pre-spawn environment without
    :data:`UNSET_WORKER_ENVIRON` (a None value unsets a variable there)."""
    import dask
    import distributed  # noqa: F401  (registers Dask's distributed.* settings)

    environ = dask.config.get("distributed.nanny.pre-spawn-environ")
    config = {**LOCAL_WORKER_CONFIG, "distributed.nanny.pre-spawn-environ":
              {**environ, **dict.fromkeys(UNSET_WORKER_ENVIRON)}}
    if FORK_SERVER:
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    return config


def warm_local_workers(cluster: str | None, modules: Sequence[str]) -> None:
    """For ``--cluster local[:N]``: start the fork server the workers will be forked from,
    importing ``modules`` there now, beside this process's own imports (the workers inherit
    them). Its environment is the one Dask gives spawned workers (:func:`local_worker_config`).
    Nothing happens for another or a bad ``cluster`` (reported where the flags are checked) or
    without a fork server; the workers then import on their first task."""
    try:
        spec = parse_cluster(cluster)
    except ConfigError:
        return
    if spec is None or spec.address is not None or not FORK_SERVER:
        return
    import distributed.utils

    config = local_worker_config()
    # Dask sets its own preload list on first use, importing pandas & co. here to do so;
    # ours (Dask's own package first) is set below, so skip that.
    distributed.utils._forkserver_preload_set = True
    environ = {k: str(v) for k, v in config["distributed.nanny.pre-spawn-environ"].items()
               if v is not None}  # None: inherited from this process, as Dask does
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        # "__main__": the command's own script, which each worker would otherwise run again
        # (as multiprocessing does) when it starts
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            ["__main__", "distributed", *modules])
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dashboard(client: Any) -> str | None:
    """The cluster's dashboard address, or None when it has none (no bokeh installed)."""
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def worker_threads(threads: int | None) -> int | None:
    """``threads``, or inside a Dask worker its machine's cores split between its task slots."""
    if threads is not None:
        return threads
    try:
        from dask.distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask worker
        return None
    return max(1, cpu_count() // worker.state.nthreads)


def run_tasks(fn: Callable[[Item], Any], items: Iterable[Item],
              client: Any | None = None) -> Iterator[tuple[Item, Any]]:
    """``(item, fn(item))`` for every item, as they finish: in this process in order without
    ``client``, else as tasks on its workers. ``fn``'s exceptions propagate (the remaining
    tasks are cancelled); a task whose workers kept dying yields the KilledWorker error as its
    result."""
    if client is None:
        for item in items:
            yield item, fn(item)
        return
    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = {client.submit(fn, item, pure=False): item for item in items}
    try:
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except KilledWorker as err:
                yield futures[future], err
    finally:
        client.cancel([f for f in futures if not f.done()])
