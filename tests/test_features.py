"""Feature contract: fitting, vocabularies, encoding from files and dicts, save/load round trips."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from ctrzoo.errors import SpecError
from ctrzoo.features import (
    MISSING_ID,
    OOV_ID,
    Categorical,
    FeatureCodec,
    FeatureSpec,
    Numeric,
    SequenceFeature,
    SpecFitter,
)
from ctrzoo.features import request as request_module


def _table() -> pa.Table:
    return pa.table(
        {
            "label": [1, 0, 1, 0, 0, 1],
            "item": ["a", "b", "a", "c", None, "a"],
            "user": [7, 7, 8, 9, 9, 8],
            "price": [1.0, None, 3.0, 100.0, 5.0, 2.0],
            "hist": ["a^b", "", None, "b^a^c^a^b", "zz", "a"],
        }
    )


def _spec(**kw) -> FeatureSpec:
    return FeatureSpec(
        [
            Categorical("item", min_count=2),
            Categorical("user", hash_buckets=16),
            Numeric("price", transform="log1p", standardize=True, fill=0.0),
            SequenceFeature("hist", shares="item", max_len=3, **kw),
        ],
        label="label",
    )


def _fit(spec: FeatureSpec, table: pa.Table) -> FeatureSpec:
    fitter = SpecFitter(spec)
    fitter.update(table)
    return fitter.finalize()


def test_vocabulary_min_count_order_and_reserved_ids():
    spec = _fit(_spec(), _table())
    vocab = spec["item"].vocab
    # counts include the sequences that share the table: a=3+4, b=1+3, c=1+1, zz=1 (< min_count 2)
    assert vocab.values.to_pylist() == ["a", "b", "c"]
    assert vocab.counts.tolist() == [7, 4, 2]
    ids = spec.compile().local_ids("item", pa.array(["a", "c", "zz", None, "b"]))
    assert ids.tolist() == [2, 4, OOV_ID, MISSING_ID, 3]


def test_encoder_layout_offsets_sequences_and_numeric():
    spec = _fit(_spec(), _table())
    enc = spec.compile()
    b = enc.encode(_table())
    layout = spec.compile().layout
    item, user = layout.sparse
    assert b.sparse.dtype == np.int64 and b.sparse.shape == (6, 2)
    assert b.dense.dtype == np.float32 and b.dense.shape == (6, 1)
    assert b.seq.dtype == np.int64 and b.seq.shape == (6, 1, 3)
    assert b.sparse[:, 0].tolist() == [item.offset + i for i in (2, 3, 2, 4, MISSING_ID, 2)]
    assert (b.sparse[:, 1] >= user.offset).all() and (b.sparse[:, 1] < user.offset + user.size).all()
    assert b.sparse[0, 1] != user.offset  # hashed, not missing
    # sequences: most recent last, truncated to the last 3, right-padded with 0, OOV -> item's OOV id
    a, bb, c, oov = (item.offset + i for i in (2, 3, 4, OOV_ID))
    assert b.seq[:, 0].tolist() == [[a, bb, 0], [0, 0, 0], [0, 0, 0], [c, a, bb], [oov, 0, 0], [a, 0, 0]]
    # numeric: log1p, standardized with training statistics, fill for missing
    x = np.log1p(np.array([1.0, 3.0, 100.0, 5.0, 2.0]))
    assert spec["price"].mean == pytest.approx(x.mean())
    assert b.dense[1, 0] == 0.0
    assert b.dense[0, 0] == pytest.approx((np.log1p(1.0) - x.mean()) / x.std(), rel=1e-6)


def test_dicts_encode_like_table_rows_and_types_are_canonical():
    spec = _fit(_spec(), _table())
    enc = spec.compile()
    from_table = enc.encode(_table())
    rows = _table().to_pylist()
    for r in rows:  # a list is the same as the ^-joined string
        r["hist"] = None if r["hist"] is None else [x for x in r["hist"].split("^") if x]
    rows[2]["user"] = "8"  # "8" and 8 are the same category
    rows[3]["price"] = 100  # int and float are the same number
    del rows[4]["item"]  # absent = missing
    from_dicts = enc.encode(rows)
    for k in ("sparse", "dense", "seq"):
        np.testing.assert_array_equal(getattr(from_dicts, k), getattr(from_table, k))


def test_unknown_feature_names_are_ignored_and_bad_values_name_the_field():
    spec = _fit(_spec(), _table())
    enc = spec.compile()
    ok = enc.encode([{"item": "a", "unknown_field": 3}])
    assert ok.sparse.shape == (1, 2)
    with pytest.raises(SpecError, match="'price'"):
        enc.encode([{"price": "cheap"}])
    with pytest.raises(SpecError, match="'price'.*NaN"):
        enc.encode([{"price": float("nan")}])
    with pytest.raises(SpecError, match="'item'"):
        enc.encode([{"item": "a"}, {"item": 3.5}, {"item": [1]}])


def test_too_long_error_mode():
    spec = _fit(_spec(too_long="error"), _table())
    with pytest.raises(SpecError, match="'hist'.*exceeds max_len 3"):
        spec.compile().encode(_table())


def test_save_load_round_trip_is_identical(tmp_path, monkeypatch):
    import ctrzoo.features.spec as spec_mod

    monkeypatch.setattr(spec_mod, "INLINE_VOCAB_MAX", 2)  # force the Parquet path for "item"
    spec = _fit(_spec(), _table())
    spec.save(tmp_path)
    assert (tmp_path / "vocab" / "item.parquet").exists()
    loaded = FeatureSpec.load(tmp_path)
    assert loaded.equals(spec)
    rows = _table().to_pylist()
    for data in (_table(), rows):
        a, b = spec.compile().encode(data), loaded.compile().encode(data)
        for k in ("sparse", "dense", "seq"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert loaded["price"].mean == spec["price"].mean  # floats bit-identical through JSON


def test_spec_validation_errors():
    with pytest.raises(SpecError, match="shares 'nope'"):
        FeatureSpec([Categorical("a"), SequenceFeature("h", shares="nope")])
    with pytest.raises(SpecError, match="duplicate"):
        FeatureSpec([Categorical("a"), Categorical("a")])
    with pytest.raises(SpecError, match="unknown transform"):
        FeatureSpec([Numeric("x", transform="sqrt3")])
    with pytest.raises(SpecError, match="not fitted"):
        _spec().compile()


def test_load_rejects_corrupt_or_foreign_spec(tmp_path):
    (tmp_path / "spec.json").write_text('{"format_version": 99, "features": []}')
    with pytest.raises(SpecError, match="version 99"):
        FeatureSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(SpecError, match="spec.json:1"):
        FeatureSpec.load(tmp_path)


def test_avazu_hour_derivations():
    spec = FeatureSpec(
        [
            Categorical("hour_of_day", source="hour", derive="yymmddhh_hour"),
            Categorical("weekday", source="hour", derive="yymmddhh_weekday"),
        ],
        label=None,
    )
    t = pa.table({"hour": ["14102100", "14102213", "14102100"]})
    fitted = _fit(spec, t)
    assert fitted["hour_of_day"].vocab.values.to_pylist() == ["0", "13"]
    # 2014-10-21 was a Tuesday (Monday = 0), 2014-10-22 a Wednesday
    assert fitted["weekday"].vocab.values.to_pylist() == ["1", "2"]


def test_request_encoding_broadcasts_context_like_merged_rows():
    spec = _fit(_spec(), _table())
    enc = spec.compile()
    context = {"user": 8, "hist": "b^a^c^a^b", "price": 3.0}
    candidates = [{"item": "a"}, {"item": "zz"}, {"item": None}, {}]
    merged = [{**c, **context} for c in candidates]
    a, b = enc.encode_request(context, candidates), enc.encode(merged)
    for k in ("sparse", "dense", "seq"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    empty = enc.encode_request(context, [])
    assert empty.sparse.shape == (0, 2) and empty.seq.shape == (0, 1, 3)


def test_spec_saves_after_its_vocabularies_were_used(tmp_path):
    spec = _fit(_spec(), _table())
    spec.compile().encode(_table())  # builds the lookup tables
    spec.save(tmp_path)
    assert FeatureSpec.load(tmp_path).equals(spec)


def _request_spec() -> FeatureSpec:
    table = pa.table({"item": ["a", "b", "a", "12", "7", "a"], "shop": ["s1", "s2", "s1", "s1", None, "s3"],
                      "user": [7, 7, 8, 9, 9, 8], "price": [1.0, None, 3.0, 100.0, 5.0, 2.0],
                      "clicks": [0, 3, 40, 2, None, 1], "hist": ["a^b", "", None, "b^a", "zz", "a"],
                      "label": [1, 0, 1, 0, 0, 1]})
    spec = FeatureSpec([Categorical("item"), Categorical("shop"), Categorical("user", hash_buckets=16),
                        Numeric("price", transform="log1p", standardize=True, fill=-1.0),
                        Numeric("clicks", transform="criteo_log", fill=0.5),
                        SequenceFeature("hist", shares="item", max_len=3)], label="label")
    return _fit(spec, table)


REQUEST_VALUES = {
    "item": ["a", "b", "12", 12, "zz", None, "", 7.0, 7.5, True, np.int64(12), np.str_("b")],  # numpy: via arrow
    "shop": ["s1", "s3", "nope", None, 3],
    "user": [7, "7", 8, None, "x"],
    "price": [1.0, 3, None, 0.25, 1e6, -2.0, "4.5", True],
    "clicks": [0, 2, 40, None, 1.5, 1000, "7"],
    "hist": ["a^b", ["b", "a"], "", None],
}


NATIVE = pytest.param(True, id="c-gathers"), pytest.param(False, id="python-steps")


def _request_encoder(native: bool) -> FeatureCodec:
    enc = _request_spec().compile()
    if native and request_module.native is None:
        pytest.skip("ctrzoo.features._gather was not built (no C compiler): the Python steps serve")
    enc.request_encoder.use_native = native
    return enc


def test_the_c_gathers_are_built_where_a_compiler_is():
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the optional extension is skipped by design")
    assert request_module.native is not None, "pip install -e . should have built ctrzoo.features._gather"


class _CountingGathers:
    """The C gathers, counting the calls that decided a request (returned True) and those that passed."""

    def __init__(self, module):
        self.module, self.decided, self.passed = module, 0, 0

    def _count(self, ok: bool) -> bool:
        self.decided += ok
        self.passed += not ok
        return ok

    def gather_ids(self, *args):
        return self._count(self.module.gather_ids(*args))

    def gather_floats(self, *args):
        return self._count(self.module.gather_floats(*args))


@pytest.mark.parametrize("native", NATIVE)
def test_request_fast_path_equals_per_column_encoding_on_random_requests(native, monkeypatch):
    """The joint-lookup path (ctrzoo.features.request) must give the per-column encoding exactly, whatever
    mix of types, missing values and context fields a request has (odd mixes fall back per column), and
    refuse exactly what the per-column path refuses, naming the same field: with the C gathers and without."""
    enc = _request_encoder(native)
    gathers = _CountingGathers(request_module.native)
    monkeypatch.setattr(request_module, "native", gathers)
    rng = np.random.default_rng(0)
    names = list(REQUEST_VALUES)
    outcomes = {"equal": 0, "refused": 0}
    for _ in range(400):
        in_context = {n for n in names if rng.random() < 0.3}

        def draw(n):
            values = REQUEST_VALUES[n]
            return values[rng.integers(len(values))]

        context = {n: draw(n) for n in in_context}
        candidates = [{n: draw(n) for n in names if n not in in_context and rng.random() < 0.9}
                      for _ in range(int(rng.integers(0, 6)))]
        results = []
        for encode in (enc.encode_request, enc.encode_request_columns):
            try:
                results.append(encode(context, candidates))
            except SpecError as exc:
                results.append(exc.field)
        fast, slow = results
        if isinstance(slow, str) or isinstance(fast, str):
            assert fast == slow, (context, candidates)
            outcomes["refused"] += 1
            continue
        merged = enc.encode([{**c, **context} for c in candidates]) if candidates else slow
        for k in ("sparse", "dense", "seq"):
            np.testing.assert_array_equal(getattr(fast, k), getattr(slow, k), err_msg=f"{k}: {context} {candidates}")
            np.testing.assert_array_equal(getattr(fast, k), getattr(merged, k), err_msg=k)
        outcomes["equal"] += 1
    assert outcomes["equal"] > 200 and outcomes["refused"] > 10, outcomes
    if native:  # both outcomes of the C gathers were exercised
        assert gathers.decided > 200 and gathers.passed > 50, vars(gathers)
    else:
        assert gathers.decided == gathers.passed == 0


@pytest.mark.parametrize("native", NATIVE)
def test_request_fast_path_refuses_what_the_per_column_path_refuses(native):
    enc = _request_encoder(native)
    for bad, field in (({"price": float("nan")}, "price"), ({"clicks": float("inf")}, "clicks"),
                       ({"price": "cheap"}, "price"), ({"item": {"x": 1}}, "item")):
        with pytest.raises(SpecError) as err:
            enc.encode_request({}, [{"item": "a"}, bad])
        assert err.value.field == field


def test_c_gathers_check_their_arguments_and_pass_what_they_do_not_decide():
    gather = request_module.native
    if gather is None:
        pytest.skip("ctrzoo.features._gather was not built (no C compiler)")
    rows = [{"a": "x", "b": 2}, {"b": None, "a": "y"}]
    ids = np.zeros((2, 3), dtype=np.int64)
    assert gather.gather_ids(rows, ("a", "b"), ({"x": 5, None: 1}, {2: 7, None: 1}), (9, 8), (2, 0), ids)
    np.testing.assert_array_equal(ids, [[7, 0, 5], [1, 0, 9]])  # [row, col]; None = missing; "y" = OOV
    assert gather.gather_ids(rows, ("c",), ({None: 1},), (9,), (1,), ids) and (ids[:, 1] == 1).all()  # absent key
    assert not gather.gather_ids([{"a": True}], ("a",), ({1: 5},), (9,), (0,), np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="8-byte cells with 2 rows"):
        gather.gather_ids(rows, ("a",), ({},), (0,), (0,), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        gather.gather_ids(rows, ("a",), ({},), (0,), (3,), ids)
    x = np.zeros((1, 3))
    assert gather.gather_floats([{"v": 1}, {"v": 2.5}, {}], ("v",), x)
    np.testing.assert_array_equal(x, [[1.0, 2.5, np.nan]])
    for odd in (10**400, float("inf"), "1", np.float64(1.0)):  # too large, non-finite, text, numpy: not decided
        assert not gather.gather_floats([{"v": odd}], ("v",), np.zeros((1, 1)))


def test_spec_is_frozen_and_changes_make_a_new_spec():
    import dataclasses

    spec = _spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec["item"].min_count = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.label = "other"
    assert isinstance(spec.features, tuple)
    changed = spec.replace_features({"item": dataclasses.replace(spec["item"], min_count=5)})
    assert changed["item"].min_count == 5 and spec["item"].min_count == 2  # the original is untouched
    assert [f.name for f in spec.without(["user"]).features] == ["item", "price", "hist"]
    with pytest.raises(SpecError, match="no such feature"):
        spec.replace_features({"nope": spec["item"]})
    with pytest.raises(SpecError, match="overflow must be one of"):
        FeatureSpec([Categorical("a", overflow="drop")])


def test_codec_owns_the_layout_and_one_lookup_table_per_vocabulary_field():
    """The table front-end and the request front-end (Python and C) read the same table object."""
    spec = _fit(_spec(), _table())
    codec = spec.compile()
    item = codec.parts.categorical("item")
    assert codec.layout.sparse[0].offset == item.offset and codec.layout.n_sparse == 2
    assert codec.parts.categorical("user").table is None  # hashed: no vocabulary table
    mapping = item.table.mapping
    assert mapping is item.table.mapping  # built once
    request = codec.request_encoder
    assert all(c.table is item.table for c in request._cats if c.name == "item")
    # a row looked up through either front-end lands on the table's row
    from_request = codec.encode_request({}, [{"item": "b"}]).sparse[0, 0]
    assert codec.encode([{"item": "b"}]).sparse[0, 0] == mapping["b"] == from_request
    assert codec.random_batch(5).sparse.shape == (5, 2)
    assert codec.id_frequencies()[mapping["a"]] == 7
