"""Retrieval's own error type, so callers can tell a bad catalogue or index from other mistakes."""

from __future__ import annotations

from ctrzoo.errors import CtrzooError


class RetrievalError(CtrzooError):
    """A catalogue, index or retrieval bundle that does not fit what was expected; the message names it."""
