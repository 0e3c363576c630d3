"""The built-in formats under the names earlier versions exported: ``FORMATS`` (name -> the preset's
``DatasetSchema``, whose ``default_spec()`` is its feature spec), their column names and ``open_raw``.

The formats themselves are schemas in ``ctrzoo/presets/*.yaml`` (``ctrzoo.data.presets``).
"""

from __future__ import annotations

from ctrzoo.data.presets import PRESETS
from ctrzoo.data.rawfile import GunzipStream, GzipDataError, open_raw

FORMATS = PRESETS
CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))

__all__ = ["CRITEO_CAT", "CRITEO_INT", "FORMATS", "GunzipStream", "GzipDataError", "open_raw"]
