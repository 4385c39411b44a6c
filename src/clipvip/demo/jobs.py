"""The demo's training runs as jobs, run side by side in worker processes.

After stage 0, the demo's training runs hardly depend on each other: the main post-pretraining, the OCL
ablation's post-pretrainings (each followed by its fine-tune) and, once the main post-pretraining is done,
the attention ablation's fine-tunes (every mode, every seed). Each run is a small model whose ops are too
small to use more than one core, so the demo runs them as **jobs** in a pool of worker processes, one torch
thread each (``clipvip demo --jobs N``): on 2 cores the training part takes about half the wall time.

Every run seeds itself from its recipe (``run.seed``) and reads its start weights from disk, so a job's
numbers do not depend on which worker runs it, on the order jobs finish, or on the number of workers: the
same demo with ``--jobs 1`` (in this process) and ``--jobs 2`` writes the same tables (tested).

Workers are started with ``spawn`` (a fork of a process that already ran torch's thread pools can hang)
when the demo starts, so their start-up overlaps the world's generation and stage 0; each opens the world
on its first job and keeps a decoded-clip cache for all the jobs it runs. As with any
``spawn`` pool, a script that calls :func:`clipvip.demo.run_demo` with more than one job must do so under
``if __name__ == "__main__":`` (each worker imports the script).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["DemoRunError", "RunPool", "RunSpec", "default_jobs", "drain", "run_job"]

#: The previous run of the same job (``RunSpec.init``): a fine-tune that starts from the job's post-pretraining.
PREVIOUS = "@previous"


class DemoRunError(RuntimeError):
    """A training run of the demo failed, or its worker process died; the message names the run."""


@dataclass(frozen=True)
class RunSpec:
    """One ``clipvip.train`` run of the demo: the arguments of :meth:`clipvip.demo.run.Runner.recipe`
    (``train``/``val`` name a split of the world), evaluated on test afterwards."""

    name: str
    init: str  # a checkpoint folder, or PREVIOUS
    task: str
    train: str
    steps: int
    lr: float
    seed: int
    attention: str | None = None
    val: str | None = None
    variant: str = "d"
    lr_mult: dict[str, float] = field(default_factory=dict)
    group: bool = True


def run_job(runner: Any, specs: tuple[RunSpec, ...]) -> list[dict[str, Any]]:
    """Run ``specs`` in order with ``runner`` (:class:`clipvip.demo.run.Runner`) and evaluate each on test.

    Returns one plain dict per run (picklable, JSON-able): ``name``, ``last`` (checkpoint folder),
    ``final_loss``, ``steps``, ``history``, ``test`` (the metrics of :meth:`Runner.evaluate`) and ``seconds``
    (the run's wall time).
    """
    out: list[dict[str, Any]] = []
    previous: str | None = None
    for spec in specs:
        t0 = time.perf_counter()
        init = previous if spec.init == PREVIOUS else spec.init
        if init is None:
            raise ValueError(f"demo run {spec.name}: starts from the previous run of its job, and there is none")
        paths = runner.world.paths
        model, res = runner.train(runner.recipe(
            spec.name, init=Path(init), task=spec.task, train=paths[spec.train],
            val=paths[spec.val] if spec.val else None, steps=spec.steps, lr=spec.lr, seed=spec.seed,
            attention=spec.attention, variant=spec.variant, lr_mult=dict(spec.lr_mult), group=spec.group))
        test = runner.evaluate(model)
        previous = str(Path(res["output_dir"]) / "last")
        out.append({"name": spec.name, "last": previous, "final_loss": res["final_loss"], "steps": res["steps"],
                    "history": res["history"], "test": test, "seconds": round(time.perf_counter() - t0, 2)})
        del model
    return out


def default_jobs(threads: int = 1) -> int:
    """Worker processes for ``threads`` torch threads each: the CPUs this process may use, divided by
    ``threads``, at most 8 (the demo has at most 15 runs to share out)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // max(1, threads)))


# ---------------------------------------------------------------------------------------------- workers
_RUNNERS: dict[tuple[str, str], Any] = {}


def _watch_parent(parent: int) -> None:
    """Exit when the demo process is gone (killed with SIGKILL, say): an orphan would go on training and
    writing into ``runs/`` for minutes."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


_STOPPED = False


def _stop(signum: int, frame: Any) -> None:
    """SIGINT in a worker: stop the running job and every later one (see :meth:`RunPool.close`)."""
    global _STOPPED
    _STOPPED = True
    raise KeyboardInterrupt


def _init_worker(threads: int) -> None:
    """Worker start: one torch thread pool of ``threads``, the trainer's warnings about the demo's deliberate
    choices silenced (errors still raise), the heavy imports done before the first job arrives, and a
    watch that ends the worker if the demo process dies."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    signal.signal(signal.SIGINT, _stop)
    # What the jobs import lazily (trainer, model, datasets, PyAV, the transformers tokenizer: seconds), now.
    import av  # noqa: F401
    import transformers  # noqa: F401

    import clipvip.demo.run  # noqa: F401
    import clipvip.train.evaluate  # noqa: F401
    import clipvip.train.loop  # noqa: F401

    torch.set_num_threads(max(1, int(threads)))
    logging.getLogger("clipvip").setLevel(logging.ERROR)


def _ready() -> int:
    return os.getpid()


def _worker_job(out: str, settings: Any, source_world: Any, specs: tuple[RunSpec, ...]) -> list[dict[str, Any]]:
    """Run a job in a worker: the world is opened on the worker's first job and kept (with the worker's
    decoded-clip cache) for the next ones."""
    from clipvip.demo.run import Runner
    from clipvip.demo.world import open_world

    if _STOPPED:
        raise RuntimeError("the demo was stopped")
    key = (out, str(source_world.root))
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(Path(out), settings, open_world(source_world, settings), progress=False)
    return run_job(_RUNNERS[key], specs)


class RunPool:
    """Runs jobs (tuples of :class:`RunSpec`) in ``workers`` processes, or in this process when ``workers``
    is 1 (then :meth:`submit` runs the job before it returns).

    The workers start when the pool is made (Python, torch and the trainer take seconds to import), so
    making it before the work that precedes the jobs (the world, stage 0) hides that start-up.
    """

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers = max(1, int(workers))
        self._children0 = _children_cpu()
        self._pool: cf.ProcessPoolExecutor | None = None
        if self.workers > 1:
            self._pool = cf.ProcessPoolExecutor(max_workers=self.workers,
                                                mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads,))
            for _ in range(self.workers):  # each submit starts one worker
                self._pool.submit(_ready)

    def submit(self, runner: Any, specs: tuple[RunSpec, ...]) -> cf.Future:
        """Run ``specs`` (:func:`run_job`) with ``runner``'s world and settings; its future."""
        if self._pool is not None:
            if runner.world.source is None:
                raise ValueError("jobs in worker processes need a world opened by clipvip.demo.world.open_world")
            return self._pool.submit(_worker_job, str(runner.out), runner.settings, runner.world.source, specs)
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(run_job(runner, specs))
        except Exception as exc:  # delivered by .result(), as a worker's exception would be
            fut.set_exception(exc)
        return fut

    def close(self, cancel: bool = False) -> float:
        """Stop the workers and return the CPU seconds they used. Without ``cancel`` the submitted jobs
        finish first; with it (an error, Ctrl-C, SIGTERM) queued jobs are dropped and running ones are
        stopped at once: their half-written run folders are under the demo's own ``runs/``, which the next
        demo run replaces."""
        pool, self._pool = self._pool, None
        if pool is not None and cancel:
            # SIGINT stops a worker's running job (KeyboardInterrupt, as Ctrl-C would) and turns the jobs
            # already handed to it into no-ops; then the workers exit through the pool's own shutdown,
            # which releases its queues. A worker that does not stop is terminated.
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for proc in processes:
                if proc.is_alive() and proc.pid is not None:
                    try:
                        os.kill(proc.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
        if pool is not None:
            pool.shutdown(wait=True)
        return _children_cpu() - self._children0

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(cancel=exc_type is not None)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def drain(futures: dict[cf.Future, Any], handle: Callable[[Any, list[dict[str, Any]]], None]) -> None:
    """Call ``handle(key, result)`` for each future as it completes; ``handle`` may add futures to
    ``futures`` (a run whose start weights another run makes). A failed job raises, naming its runs."""
    while futures:
        done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        for fut in done:
            key = futures.pop(fut)
            name = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool as exc:
                raise DemoRunError(f"demo run {name}: a worker process died ({exc}): killed, out of "
                                   f"memory, or started from a script that runs the demo on import (guard it with "
                                   f"`if __name__ == '__main__':`); re-run the demo, or use --jobs 1") from exc
            except Exception as exc:
                raise DemoRunError(f"demo run {name} failed: {exc}") from exc
            handle(key, result)

