"""``POST /admin/reload``: load, check and swap in a bundle (``ServiceState.reload``), guarded by a bearer token.

The token check is a dependency (``require_admin``, constant-time comparison); without ``CTRZOO_ADMIN_TOKEN``
the endpoint is disabled (403). A refused bundle is a 409 (422 for a path the OS cannot use, 403 outside
``CTRZOO_BUNDLE_ROOT``) and the old model keeps serving.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response

from ctrzoo.errors import CtrzooError
from serving.deps import get_state
from serving.errors import ApiError, error_response, error_responses
from serving.schemas import ReloadRequest

if TYPE_CHECKING:
    from serving.app import ServiceState

log = logging.getLogger("ctrzoo.serving")


async def require_admin(authorization: str | None = Header(default=None),
                        s: ServiceState = Depends(get_state)) -> None:
    token = s.settings.admin_token
    if not token:
        raise ApiError(403, "reload is disabled: set CTRZOO_ADMIN_TOKEN to enable it")
    given = (authorization or "").encode("latin-1", "replace")  # header bytes, as sent
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):  # constant time: no token by timing
        raise ApiError(401, "missing or wrong admin token (Authorization: Bearer ...)", "authorization")


router = APIRouter(dependencies=[Depends(require_admin)])


@router.post("/admin/reload", responses=error_responses(400, 401, 403, 408, 409, 413, 422))
async def reload(body: ReloadRequest | None = None, s: ServiceState = Depends(get_state)):
    path = body.bundle if body else None
    if path is not None:
        path, problem = _checked_bundle_path(path, s.settings.bundle_root)
        if problem is not None:
            return problem
    try:
        model = await s.reload(path, allow_model_change=bool(body and body.allow_model_change))
    except (CtrzooError, OSError, ValueError) as exc:  # ValueError: e.g. a NUL in the path
        current = s.model.version if s.model else None
        status = 409 if isinstance(exc, CtrzooError) else 422
        return error_response(status, f"bundle refused, still serving version {current}: {exc}", "bundle")
    except Exception as exc:  # any other load failure is the bundle's too: a 409, the old model keeps serving
        current = s.model.version if s.model else None
        log.exception("reload failed unexpectedly; still serving version %s", current)
        return error_response(409, f"bundle refused, still serving version {current}: {exc.__class__.__name__}: "
                                   f"{str(exc)[:300]}", "bundle")
    return {"status": "reloaded", "model": model.name, "version": model.version}


def _checked_bundle_path(path: str, root: str | None) -> tuple[str, Response | None]:
    """(the path to load, None), or a 4xx naming ``bundle`` for a path the OS cannot use (a name too long, a
    NUL byte) or, with a bundle root set, one that resolves (symlinks followed) outside it. Under a root the
    resolved path is what gets loaded, so a link changed after this check cannot lead outside."""
    try:
        resolved = Path(path).resolve()
        with contextlib.suppress(FileNotFoundError):  # a missing bundle is the loader's to report
            os.stat(resolved)
        inside = root is None or resolved.is_relative_to(Path(root).resolve())
    except (OSError, ValueError) as exc:
        return path, error_response(422, f"unusable bundle path: {type(exc).__name__}: {str(exc)[:200]}", "bundle")
    if not inside:
        return path, error_response(403, f"bundle {path} is outside the allowed bundle root (CTRZOO_BUNDLE_ROOT)",
                                    "bundle")
    return (path if root is None else str(resolved)), None
