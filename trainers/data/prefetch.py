"""Batches made ahead of the training loop by one background thread, files read by a pool.

`Prefetcher(plans, paths, make, workers, depth, device)`: `plans` yields one plan per batch (the
files and transform parameters, all decided in advance: order.py); a pool of `workers` threads
reads the bytes of each plan's files (`paths(plan)`; reading releases the GIL) several batches
ahead, and one producer thread runs `make(plan, contents)` (decode and transform on the device)
and queues the finished batches, at most `depth` of them. A file that cannot be read arrives as
its OSError, for `make` to report by name. Batches come out in plan order whatever the number
of workers, so the stream is the same function of its plans.

On CUDA the producer works on its own stream and waits for it before queueing a batch: the
consumer receives finished tensors (no event bookkeeping to get wrong), and `record_stream` tells
the caching allocator that the consumer's stream uses them, so their memory is not handed back
to the producer while the training step still reads it.
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


class Prefetcher:
    def __init__(self, plans: Iterable[Any], paths: Callable[[Any], list[str]],
                 make: Callable[[Any, list[bytes | OSError]], tuple], workers: int, depth: int, device: torch.device):
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
        self._thread = threading.Thread(target=self._run, name="lth-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

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
                        self._put(_DONE)
                        return
                    plan, futures = pending.popleft()
                    batch = self._make(plan, [f.result() for f in futures])
                    if stream is not None:
                        stream.synchronize()
                    if not self._put(batch):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(e))
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()

    def __iter__(self) -> Iterator[tuple]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                if self.device.type == "cuda":
                    current = torch.cuda.current_stream(self.device)
                    for t in item:
                        if isinstance(t, torch.Tensor) and t.is_cuda:
                            t.record_stream(current)
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
