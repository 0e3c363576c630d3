"""Coalescing of concurrent requests into one ``predict`` call (dynamic batching, as LLM servers do).

No timer: a worker takes whatever is queued when it becomes free, so an idle server adds no latency,
and under load the requests that arrived during one predict run together in the next.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ctrzoo.features import EncodedBatch


class Coalescer:
    def __init__(self, max_rows: int = 4096):
        self.max_rows = max_rows
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.batches = 0
        self.requests = 0

    async def predict(self, model, batch: EncodedBatch) -> np.ndarray:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((model, batch, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            rows = len(items[0][1])
            while not self._queue.empty() and rows < self.max_rows:
                nxt = self._queue.get_nowait()
                items.append(nxt)
                rows += len(nxt[1])
            # requests may hold different models during a reload: each model's group runs on its own
            groups: dict[int, list] = {}
            for it in items:
                groups.setdefault(id(it[0]), []).append(it)
            for group in groups.values():
                await self._run_group(loop, group)

    async def _run_group(self, loop, group) -> None:
        model = group[0][0]
        batches = [b for _, b, _ in group]
        merged = EncodedBatch(*(np.concatenate([getattr(b, k) for b in batches]) for k in ("sparse", "dense", "seq")))
        try:
            scores = await loop.run_in_executor(self._executor, model.predictor.predict, merged)
        except Exception as exc:  # delivered to every waiting request
            for _, _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(group)
        start = 0
        for _, b, fut in group:
            if not fut.done():
                fut.set_result(scores[start : start + len(b)])
            start += len(b)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
