"""Compile the kernels a piece of GPU work is about to launch, side by side in worker processes, before it runs.

Triton compiles a kernel the first time it is launched with a new specialization (tiles, warps, stages, flags,
argument alignment), in the launching thread, one at a time: 1.3-1.9 s a kernel at the PTB shapes for sm_90 under
Triton 3.6 on one core of this project's CPU machines (2026-11-28), so compilation, not timing, is most of what the
probe (:mod:`.probe`, 20 kernels a preset) and the tile search (:mod:`.tune`, 26 kernels for the candidates around
its start, per preset and dtype) would spend of a GPU session, while 15 of the GPU machine's 16 cores idle.

So those tools run their work twice.  First under :func:`collecting`: Triton's ``jit_cache_hook`` records each kernel
that would compile -- its serialized specialization, which Triton's own ``JITFunction.preload`` takes -- and tells
Triton to skip it, so nothing compiles and nothing is launched (what comes out is garbage and is thrown away).  Then
:func:`compile_all` compiles the records in a pool of processes, each calling ``preload`` for the parent's target,
which fills Triton's on-disk cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``); the real, timed run then finds
every kernel there.  The workers never touch the GPU: Triton compiles for a named target without one (as
:mod:`.sm90` does).  A kernel that fails to compile in a worker is only counted: the real run compiles it again and
reports the error where it always has.  Without CUDA (the interpreter) nothing is collected: interpreted kernels do
not compile, and :func:`collecting` would simply run them.

The probe and the micro-benchmarks wait for the whole pool (:func:`warm`, :func:`compile_all`); the tile search, whose
next candidates depend on what it has timed, does not: :class:`Ahead` compiles each candidate's kernels in the pool
while earlier ones are timed on the GPU, and cancels those it no longer wants.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import triton

MAX_WORKERS = 15  # the GPU machines have 16 cores: one is left to the parent


@dataclass(frozen=True)
class Spec:
    """One kernel to compile: its name in :mod:`.kernels` and Triton's serialized specialization of it."""

    kernel: str
    data: str


@contextlib.contextmanager
def collecting() -> Iterator[list[Spec]]:
    """Within: a compiled kernel launch that would compile is recorded (appended to the yielded list, once per
    specialization) and skipped, and so is its launch; kernels already compiled in this process still launch."""
    specs: list[Spec] = []
    seen: set[str] = set()

    def hook(*, fn, compile, **_) -> bool:
        data = compile["specialization_data"]
        if data not in seen:
            seen.add(data)
            specs.append(Spec(fn.name, data))
        return True  # Triton skips the compilation, and the launch with it

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.jit_cache_hook = hook
        yield specs


def warm(work, processes: int | None = None, at_least: int = 1) -> Summary | None:
    """Run ``work()`` once under :func:`collecting`, then :func:`compile_all` what it would have compiled; None when
    that was fewer than ``at_least`` kernels (none: no compiled Triton launch, or all compiled already), which are
    then left to compile where they are launched (a pool takes seconds to start: worth it for a few kernels only when
    more will follow)."""
    with collecting() as specs:
        work()
    return compile_all(specs, processes=processes) if specs and len(specs) >= at_least else None


@dataclass
class Summary:
    """What :func:`compile_all` did."""

    kernels: int  # distinct specializations given
    compiled: int  # of them compiled (or found in the cache) by the workers
    failed: list[str]  # "kernel: error" for each that did not
    workers: int
    wall_s: float  # including the pool's start, the first time
    compile_s: float  # summed over the workers

    def line(self) -> str:
        failed = f", {len(self.failed)} failed ({self.failed[0]})" if self.failed else ""
        return (f"precompiled {self.compiled} of {self.kernels} kernels in {self.wall_s:.1f} s on {self.workers} "
                f"processes ({self.compile_s:.1f} s of compiling){failed}")


class TargetDriver:
    """Triton's active-driver interface, as far as compiling needs it, for a target without its device."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def stand_in(sms: int = 132, target: tuple[str, int, int] = ("cuda", 90, 32)) -> Iterator[None]:
    """Within: this process plans and launches the kernels as for a GPU of ``target`` with ``sms`` SMs (default: an
    H100 SXM or H200), without one.  Triton's driver is a stand-in; the launchers plan compiled kernels whatever the
    tensors' device (use "meta": shapes and offsets, no data, so the arguments specialize as on the GPU); a launch
    compiles its kernel (from Triton's cache when there) and stops short of running it.  For tests, and for compiling
    a GPU's kernels on a machine without one; kernels compiled in here are forgotten on the way out."""
    from unittest import mock

    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from . import launch

    def compile_only(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=True, **kwargs)

    kernels = launch.kernels(False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(driver, "_active", TargetDriver(GPUTarget(*target))))
        stack.enter_context(mock.patch.object(launch, "runs_interpreted", lambda device: False))
        stack.enter_context(mock.patch.object(launch, "sm_count", lambda device: sms))
        stack.enter_context(mock.patch.object(JITFunction, "__getitem__", compile_only))
        # (no direct launches, launch._launch's: a kernel compiled here is not loaded, and must not be launched later)
        stack.enter_context(mock.patch.object(launch, "DIRECT_LAUNCH", False))
        for fn in (launch.plan_for, launch.launch_options):
            fn.cache_clear()
            stack.callback(fn.cache_clear)
        for name in dir(kernels):
            if isinstance(getattr(kernels, name), JITFunction):
                stack.callback(getattr(kernels, name).device_caches.clear)  # compiled for the stand-in's target
        yield


def _init_worker(target: dict, cache_dir: str | None) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    if cache_dir is not None:
        os.environ["TRITON_CACHE_DIR"] = cache_dir
    driver.set_active(TargetDriver(GPUTarget(**target)))


def _compile(spec: Spec) -> tuple[float, str | None]:
    """In a worker: compile ``spec`` into Triton's cache; (seconds, None) or (seconds, the error)."""
    from . import launch

    t0 = time.perf_counter()
    try:
        getattr(launch.kernels(False), spec.kernel).preload(spec.data)
    except Exception as exc:  # noqa: BLE001 -- reported by the real run, which compiles it again
        return time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return time.perf_counter() - t0, None


def workers() -> int:
    """Processes of the pool: the CPUs this process may use, less one, at most :data:`MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus - 1))


_pools: dict[tuple, ProcessPoolExecutor] = {}


def _pool(target: dict, processes: int) -> ProcessPoolExecutor:
    """One pool per target, size and cache folder (the workers write where the parent will read), kept."""
    cache_dir = os.environ.get("TRITON_CACHE_DIR")
    key = (tuple(sorted(target.items())), processes, cache_dir)
    if key in _pools and getattr(_pools[key], "_broken", False):  # (a worker died: a new pool)
        del _pools[key]
    if key not in _pools:
        _pools[key] = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(target, cache_dir))
    return _pools[key]


def shutdown() -> None:
    """End the worker processes of every pool (they also end with this process)."""
    for pool in _pools.values():
        pool.shutdown()
    _pools.clear()


def current_target() -> dict:
    """The active driver's target (the GPU's), as :class:`triton.backends.compiler.GPUTarget`'s fields."""
    from triton.runtime import driver

    target = driver.active.get_current_target()
    return {"backend": target.backend, "arch": target.arch, "warp_size": target.warp_size}


def compile_all(specs: list[Spec], target: dict | None = None, processes: int | None = None) -> Summary:
    """Compile ``specs`` for ``target`` (default: the active driver's) into Triton's on-disk cache, in a pool of
    ``processes`` worker processes (default :func:`workers`), kept for later calls; waits for them all (at most
    :attr:`Ahead.WAIT_S`)."""
    t0 = time.perf_counter()
    ahead = Ahead(target, processes)
    ahead.add(None, specs)
    ahead.wait(None)
    compiled, failed, seconds = ahead.tally()
    return Summary(len(ahead.needs[None]), compiled, failed, ahead.processes, time.perf_counter() - t0, seconds)


class Ahead:
    """Kernels compiled in the pool ahead of the work that launches them, without waiting: the tile search's (its
    candidates' kernels compile while earlier candidates are timed on the GPU, the next field's on speculation).
    :meth:`add` submits a key's kernels (each specialization once), :meth:`wait` blocks until a key's are compiled
    (then its launches find them in Triton's cache), :meth:`keep_only` cancels the queued compilations that no kept
    key needs (a search whose best changed no longer wants the candidates around the old one).  A kernel that fails
    to compile, a cancelled one or a broken pool only costs time: the real launch compiles it in-process, as without
    this module."""

    WAIT_S = 300.0  # at most this long for one key's kernels (then the launch compiles what is missing itself)

    def __init__(self, target: dict | None = None, processes: int | None = None):
        self.processes = processes or workers()
        self.target = target
        self.futures: dict[Spec, object] = {}  # every specialization submitted, and its future
        self.needs: dict[object, list[Spec]] = {}  # key -> its specializations
        self.unsubmitted: dict[object, str] = {}  # key -> why some of its kernels could not be submitted
        self.waited_s = 0.0
        self.cancelled = 0

    def add(self, key, specs: list[Spec]) -> int:
        """Submit ``key``'s kernels ``specs`` (those not submitted already, or cancelled); returns how many were (a
        broken pool takes none: they are tallied as failed)."""
        self.needs[key] = list(dict.fromkeys(self.needs.get(key, []) + list(specs)))
        new = [spec for spec in dict.fromkeys(specs) if spec not in self.futures or self.futures[spec].cancelled()]
        if not new:
            return 0
        self.target = self.target or current_target()
        submitted = 0
        try:
            pool = _pool(self.target, self.processes)
            for spec in new:
                self.futures[spec] = pool.submit(_compile, spec)
                submitted += 1
        except (BrokenProcessPool, RuntimeError) as exc:  # (the launches compile in-process instead; _pool
            self.unsubmitted[key] = f"{type(exc).__name__}: {exc}"  # replaces a broken pool at the next call)
        return submitted

    def wait(self, key, timeout: float | None = None) -> float:
        """Wait until ``key``'s kernels are compiled (or failed, or were cancelled), at most ``timeout`` seconds
        (default :attr:`WAIT_S`); the seconds waited."""
        t0 = time.perf_counter()
        timeout = self.WAIT_S if timeout is None else min(timeout, self.WAIT_S)
        for spec in self.needs.get(key, []):
            future = self.futures.get(spec)
            if future is None or future.cancelled():
                continue
            try:
                future.result(timeout=max(0.0, timeout - (time.perf_counter() - t0)))
            except Exception:  # noqa: BLE001 -- a broken pool or a timeout: the launch compiles it itself
                pass
        waited = time.perf_counter() - t0
        self.waited_s += waited
        return waited

    def keep_only(self, keys) -> int:
        """Cancel the queued (not yet started) compilations that none of ``keys`` needs; returns how many."""
        kept = {spec for key in keys for spec in self.needs.get(key, [])}
        n = sum(1 for spec, future in self.futures.items()
                if spec not in kept and not future.done() and future.cancel())
        self.cancelled += n
        return n

    def pending(self) -> int:
        """Compilations queued or running now."""
        return sum(1 for future in self.futures.values() if not future.done())

    def tally(self) -> tuple[int, list[str], float]:
        """(kernels compiled, "kernel: error" for each that failed or could not be submitted, compile seconds in the
        workers) over what has finished; cancelled and unfinished compilations count in neither."""
        compiled, failed, seconds = 0, [], 0.0
        for spec, future in self.futures.items():
            if not future.done() or future.cancelled():
                continue
            try:
                took, err = future.result()
            except Exception as exc:  # noqa: BLE001 -- a broken pool
                took, err = 0.0, f"{type(exc).__name__}: {exc}"
            seconds += took
            if err:
                failed.append(f"{spec.kernel}: {err}")
            else:
                compiled += 1
        for key, why in self.unsubmitted.items():
            failed += [f"{spec.kernel}: not submitted ({why})" for spec in self.needs[key] if spec not in self.futures]
        return compiled, failed, seconds

    def line(self) -> str | None:
        """What was compiled (None when nothing was submitted): kernels, failures, compile seconds in the workers,
        how long the work waited for them, how many were cancelled or are still under way."""
        if not self.futures:
            return None
        compiled, failed, seconds = self.tally()
        said = (f"compiled {compiled} kernels side by side on {self.processes} processes ({seconds:.1f} s of "
                f"compiling), the timing waiting {self.waited_s:.1f} s for them; {self.cancelled} cancelled unstarted")
        if self.pending():
            said += f", {self.pending()} unfinished"
        return said + (f", {len(failed)} failed ({failed[0]})" if failed else "")
