"""Synthetic Taobao display-ad log: users with interests and growing click histories, items in categories.

The click model adds a user-interest term driven by how the candidate relates to the history: the
*maximum* similarity between the candidate and any clicked item, plus whether its category is among the
last few clicks. Target attention (DIN) can pick out the one matching click; an average of the history
(sum pooling) blurs it, so the gap between the two is measurable against the oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.errors import CtrzooError
from ctrzoo.synth.common import Synth, log_bucket, rng_for, zipf_sample

COLUMNS = (
    "clk,time_stamp,userid,adgroup_id,pid,cate_id,campaign_id,customer,brand,price,cms_segid,cms_group_id,"
    "final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level,click_sequence"
)
ITEM_FIELDS = ("cate_id", "campaign_id", "customer", "brand")
PROFILE_FIELDS = tuple(COLUMNS.split(",")[10:18])
PRICE_BUCKETS = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class TaobaoSynth(Synth):
    """Fixed per seed: item attributes (category, campaign -> customer, brand, price), user profiles,
    interest categories and click timelines. A row picks an active user, a candidate (from the user's
    interest categories or anywhere) and shows the timeline prefix reached at its time, most recent last.
    """

    header = COLUMNS
    delimiter = ","

    def __init__(self, cfg: dict, seed: int):
        super().__init__(cfg, seed)
        expected = {"userid", "adgroup_id", "pid", *ITEM_FIELDS, *PROFILE_FIELDS}
        if set(self.fields) != expected:
            raise CtrzooError(f"taobao fields must be exactly: {', '.join(sorted(expected))}")
        f = self.fields
        n_items, n_users, n_cats = f["adgroup_id"].card, f["userid"].card, f["cate_id"].card
        rng = rng_for(seed, "items")
        self.item = {name: f[name].sample(rng, n_items) for name in ("cate_id", "campaign_id", "brand")}
        self.item["customer"] = f["customer"].derive(seed, f["campaign_id"])[self.item["campaign_id"]]
        cat_price = rng.normal(0.0, float(cfg["price"]["sigma_category"]), n_cats + 1)
        price = np.exp(
            cfg["price"]["mu"] + cat_price[self.item["cate_id"]] + rng.normal(0, cfg["price"]["sigma_item"], n_items)
        )
        # cheap items priced to the tenth (3.9), the rest to the unit (189.0), as in the real log
        self.price_tenths = (
            np.where(price < 20, np.round(price * 10), np.round(price) * 10).clip(1, 1e8).astype(np.int64)
        )
        self.price = self.price_tenths / 10.0

        # items of each category, most popular (lowest id) first
        cate = self.item["cate_id"]
        self.by_cate = np.argsort(cate, kind="stable")
        self.cate_start = np.searchsorted(cate[self.by_cate], np.arange(n_cats + 2))

        rng = rng_for(seed, "users")
        self.profile = {name: f[name].sample(rng, n_users) for name in PROFILE_FIELDS}
        no_profile = rng.random(n_users) < float(cfg["profile_missing"])
        for name in PROFILE_FIELDS:
            self.profile[name][no_profile] = f[name].card
        lo, hi = (int(v) for v in cfg["interests"])
        self.n_interests = rng.integers(lo, hi + 1, n_users)
        # interest categories are those of popular items, so every one holds at least one item
        self.interests = cate[zipf_sample(rng, f["adgroup_id"].cdf, n_users * hi)].reshape(n_users, hi)
        h = int(cfg["history_max"])
        self.history_len = np.minimum((rng.random(n_users) ** 1.5 * (h + 1)).astype(np.int64), h)
        users = np.repeat(np.arange(n_users), h)
        from_interest = rng.random(n_users * h) < float(cfg["history_interest_share"])
        self.history = (
            np.where(from_interest, self.interest_item(users, rng), zipf_sample(rng, f["adgroup_id"].cdf, n_users * h))
            .astype(np.int32)
            .reshape(n_users, h)
        )

        rng = rng_for(seed, "similarity")
        d = int(cfg["interest_dim"])
        topic = _unit(rng.normal(size=(int(cfg["topics"]), d)))
        noise = float(cfg["category_noise"]) / np.sqrt(d)
        cat_vec = _unit(topic[rng.integers(0, len(topic), n_cats + 1)] + rng.normal(0, noise, (n_cats + 1, d)))
        noise = float(cfg["item_noise"]) / np.sqrt(d)
        self.item_vec = _unit(cat_vec[cate] + rng.normal(0, noise, (n_items, d)))
        self.build_model()

    def cards(self) -> dict[str, int]:
        return {**super().cards(), "price": PRICE_BUCKETS}

    def interest_item(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An item of a random interest category of each user, skewed to the category's popular items."""
        pick = (rng.random(len(users)) * self.n_interests[users]).astype(np.int64)
        cat = self.interests[users, pick]
        start, count = self.cate_start[cat], self.cate_start[cat + 1] - self.cate_start[cat]
        return self.by_cate[start + (rng.random(len(users)) ** 2 * count).astype(np.int64)]

    def features(self, t: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        n, f, cfg = len(t), self.fields, self.cfg
        user = f["userid"].sample(rng, n)
        pid = f["pid"].sample(rng, n)
        from_interest = rng.random(n) < float(cfg["candidate_interest_share"])
        item = np.where(from_interest, self.interest_item(user, rng), f["adgroup_id"].sample(rng, n))
        growth = float(cfg["history_growth"])
        seq_len = (self.history_len[user] * (1.0 - growth + growth * t)).astype(np.int64)
        ids = {
            "userid": user,
            "adgroup_id": item,
            "pid": pid,
            "price": log_bucket(self.price[item], buckets=PRICE_BUCKETS),
        }
        ids.update({name: self.item[name][item] for name in ITEM_FIELDS})
        ids.update({name: self.profile[name][user] for name in PROFILE_FIELDS})
        seconds = (t * 86400 * int(cfg["days"])).astype(np.int64)
        return {
            "ids": ids,
            "num": {"price": self.price[item]},
            "seq_len": seq_len,
            "time": np.datetime64(cfg["start_time"], "s") + seconds,
        }

    def extra_logit(self, feats: dict[str, Any]) -> np.ndarray:
        """Interest term: max similarity of the candidate to the history, and a recent same-category click."""
        user, item, seq_len = feats["ids"]["userid"], feats["ids"]["adgroup_id"], feats["seq_len"]
        cand, cand_cate = self.item_vec[item], self.item["cate_id"][item]
        best = np.full(len(item), -np.inf, dtype=np.float32)
        recent = np.zeros(len(item), dtype=bool)
        window = int(self.cfg["recent_window"])
        for j in range(int(seq_len.max(initial=0))):
            seen = j < seq_len
            past = self.history[user, j]
            best = np.where(seen, np.maximum(best, np.einsum("ij,ij->i", cand, self.item_vec[past])), best)
            recent |= seen & (j >= seq_len - window) & (self.item["cate_id"][past] == cand_cate)
        best = np.where(seq_len > 0, best, float(self.cfg["no_history_similarity"]))
        return float(self.cfg["interest_scale"]) * best + float(self.cfg["recent_scale"]) * recent

    def table(self, feats: dict[str, Any], label: np.ndarray) -> pa.Table:
        ids, seq_len = feats["ids"], feats["seq_len"]
        h = self.history.shape[1]
        past = self.history[ids["userid"]][np.arange(h) < seq_len[:, None]]
        offsets = np.concatenate([[0], np.cumsum(seq_len)]).astype(np.int32)
        tokens = pa.array(self.fields["adgroup_id"].table[past]).cast(pa.string())
        tenths = self.price_tenths[ids["adgroup_id"]]
        cols = {
            "clk": pa.array(label),
            "time_stamp": pa.array(feats["time"]),
            **{name: self.fields[name].format(ids[name]) for name in COLUMNS.split(",")[2:9]},
            "price": pc.binary_join_element_wise(
                pa.array(tenths // 10).cast(pa.string()), pa.array(tenths % 10).cast(pa.string()), "."
            ),
            **{name: self.fields[name].format(ids[name]) for name in PROFILE_FIELDS},
            "click_sequence": pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), tokens), "^"),
        }
        return pa.table(cols)
