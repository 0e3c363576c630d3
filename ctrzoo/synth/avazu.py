"""Synthetic Avazu log: time-ordered hours, site-or-app traffic, hierarchical ids, uint64 row ids."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from ctrzoo.errors import CtrzooError
from ctrzoo.synth.common import Synth

COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)


class AvazuSynth(Synth):
    """A row is app traffic (share ``app_share``: site_* hold Avazu's placeholders) or site traffic (app_*
    placeholders). Fields with a ``parent`` are a fixed function of it (a site's domain and category, a
    creative's banner size), as in the real log. ``hour_of_day`` and ``weekday`` are ids for the click model
    only: the pipeline derives them from ``hour``.
    """

    header = COLUMNS
    delimiter = ","

    def __init__(self, cfg: dict, seed: int):
        super().__init__(cfg, seed)
        if list(self.fields) != COLUMNS.split(",")[3:]:
            raise CtrzooError(f"avazu fields must be, in order: {COLUMNS.split(',', 3)[3]}")
        self.derived = {}
        for name, spec in cfg["fields"].items():
            parent = spec.get("parent")
            if parent is None:
                continue
            if parent not in self.fields or list(self.fields).index(parent) > list(self.fields).index(name):
                raise CtrzooError(f"avazu field {name!r}: parent {parent!r} must be a field listed before it")
            self.derived[name] = (parent, self.fields[name].derive(seed, self.fields[parent]))
        start = dt.datetime.strptime(str(cfg["start_hour"]), "%y%m%d%H")
        hours = [start + dt.timedelta(hours=h) for h in range(24 * int(cfg["days"]))]
        self.hour_text = pa.array([h.strftime("%y%m%d%H") for h in hours])
        self.hour_of_day = np.array([h.hour for h in hours])
        self.weekday = np.array([h.weekday() for h in hours])
        # Traffic follows a daily cycle; rows stay time ordered: row position t in [0, 1) -> hour index.
        volume = 1.0 + float(cfg["traffic_swing"]) * np.sin(2 * np.pi * (self.hour_of_day - 9) / 24)
        self.hour_edges = np.cumsum(volume) / volume.sum()
        self.build_model()

    def cards(self) -> dict[str, int]:
        return {**super().cards(), "hour_of_day": 24, "weekday": 7}

    def features(self, t: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        n = len(t)
        hour = np.minimum(np.searchsorted(self.hour_edges, t, side="right"), len(self.hour_edges) - 1)
        ids = {"hour_of_day": self.hour_of_day[hour], "weekday": self.weekday[hour]}
        is_app = rng.random(n) < float(self.cfg["app_share"])
        for name, field in self.fields.items():
            if name in self.derived:
                parent, mapping = self.derived[name]
                ids[name] = mapping[ids[parent]]
                continue
            ids[name] = field.sample(rng, n)
            if name == "site_id":
                ids[name][is_app] = field.card
            elif name == "app_id":
                ids[name][~is_app] = field.card
        row_id = rng.integers(0, 2**64, size=n, dtype=np.uint64)
        return {"ids": ids, "hour": hour, "row_id": row_id}

    def table(self, feats: dict[str, Any], label: np.ndarray) -> pa.Table:
        cols = {
            "id": pa.array(feats["row_id"]),
            "click": pa.array(label),
            "hour": self.hour_text.take(pa.array(feats["hour"])),
        }
        for name, field in self.fields.items():
            cols[name] = field.format(feats["ids"][name])
        return pa.table(cols)
