"""Batches made ahead of the training loop by background threads, files read by a pool.

`Prefetcher(plans, paths, make, workers, depth, device, finish=None)`: `plans` yields one plan
per batch (the files and transform parameters, all decided in advance: order.py); a pool of
`workers` threads reads the bytes of each plan's files (`paths(plan)`; reading releases the GIL)
several batches ahead, and one producer thread runs `make(plan, contents)` (decode on the
device). With `finish`, a second thread runs `finish(plan, made)` (crop, resize, normalise)
while the first decodes the next batch: the two stages overlap. Finished batches are queued,
at most `depth` of them. A file that cannot be read arrives as its OSError, for `make` to report
by name. Batches come out in plan order whatever the number of workers, so the stream is the
same function of its plans.

On CUDA each stage works on its own stream and waits for it before handing its result on: the
next stage (or the consumer) receives finished tensors (no event bookkeeping to get wrong), and
`record_stream` tells the caching allocator that the receiving stream uses them, so their
memory is not handed back to the stage that made them while they are still read.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import torch

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_file(path: str) -> bytes | OSError:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return e


def _record(tensors: Any, stream: torch.cuda.Stream) -> None:
    """Mark the CUDA tensors of a batch (a tuple or list of tensors) as used by `stream`."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_cuda:
            t.record_stream(stream)


class Prefetcher:
    def __init__(self, plans: Iterable[Any], paths: Callable[[Any], list[str]],
                 make: Callable[[Any, list[bytes | OSError]], Any], workers: int, depth: int, device: torch.device,
                 finish: Callable[[Any, Any], tuple] | None = None):
        if workers < 1 or depth < 1:
            raise ValueError(f"workers and depth must be >= 1, got {workers} and {depth}")
        self.device = torch.device(device)
        self._plans = iter(plans)
        self._paths, self._make = paths, make
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lth-read")
        # Reads in flight: enough to keep every worker busy on the batches after the current one.
        self._ahead = depth + 1
        self._finish = finish
        # The decoded batch waiting for the second stage: one, so decode runs one batch ahead.
        self._made: queue.Queue | None = queue.Queue(maxsize=1) if finish is not None else None
        self._thread = threading.Thread(target=self._run, name="lth-prefetch", daemon=True)
        self._thread.start()
        if finish is not None:
            self._finisher = threading.Thread(target=self._run_finish, name="lth-prefetch-finish", daemon=True)
            self._finisher.start()

    def _put(self, item: Any, into: queue.Queue | None = None) -> bool:
        target = self._queue if into is None else into
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return source.get(timeout=0.1)
            except queue.Empty:
                continue
        return _DONE

    def _run(self) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        pending: deque = deque()
        try:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                while not self._stop.is_set():
                    while len(pending) < self._ahead:
                        plan = next(self._plans, _DONE)
                        if plan is _DONE:
                            break
                        pending.append((plan, [self._pool.submit(read_file, p) for p in self._paths(plan)]))
                    if not pending:
                        self._put(_DONE, self._made)
                        return
                    plan, futures = pending.popleft()
                    made = self._make(plan, [f.result() for f in futures])
                    if stream is not None:
                        stream.synchronize()
                    if not self._put(made if self._made is None else (plan, made), self._made):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(e), self._made)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()

    def _run_finish(self) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                while not self._stop.is_set():
                    item = self._get(self._made)
                    if item is _DONE or isinstance(item, _Failure):
                        self._put(item)
                        return
                    plan, made = item
                    if stream is not None:
                        _record(made, stream)
                    batch = self._finish(plan, made)
                    del made, item
                    if stream is not None:
                        stream.synchronize()
                    if not self._put(batch):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(e))

    def __iter__(self) -> Iterator[tuple]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                if self.device.type == "cuda":
                    _record(item, torch.cuda.current_stream(self.device))
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
