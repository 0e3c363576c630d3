"""Scoped thread counts: a library call that wants N intra-op threads sets them for itself and restores the
caller's count afterwards, instead of changing the process for good (``torch.set_num_threads`` is global)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op pool at ``n`` threads (None or 0: as it is), then restore it."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
