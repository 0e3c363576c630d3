"""FastAPI dependencies shared by the routers: the app's ``ServiceState``.

The state hangs on ``app.state.service`` (set by ``create_app``), not in module globals or closures, so
several apps live in one process (tests) and a router module can be read on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from serving.app import ServiceState


async def get_state(request: Request) -> ServiceState:  # async: FastAPI runs a sync dependency in a worker thread
    return request.app.state.service
