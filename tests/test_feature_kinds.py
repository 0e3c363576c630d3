"""Multi-value bags and dense vectors: fitting, layout, encoding by hand, and offline/online parity."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ctrzoo.errors import SpecError
from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature, SpecFitter
from ctrzoo.features.spec import DenseVector, MultiValue
from ctrzoo.features.vocab import FIRST_ID, MISSING_ID, OOV_ID


def _table() -> pa.Table:
    return pa.table({
        "label": [1, 0, 1, 0],
        "item": ["a", "b", "a", "c"],
        "tags": ["x|y", "y", None, "y|z|x|w"],
        "genres": [["a", "b"], [], None, ["zz"]],
        "kw": ["k1|k2", "k3", "", "k1"],
        "emb": [[0.5, 1.0, -1.0], None, [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]],
        "price": [1.0, 2.0, 3.0, 4.0],
        "hist": ["a^b", "", "c", "a"],
    })


def _spec() -> FeatureSpec:
    return FeatureSpec([
        Categorical("item"),
        MultiValue("tags", max_len=3, min_count=2),                   # own vocabulary: y(3), x(2); z, w rare
        MultiValue("genres", shares="item", max_len=2, pooling="sum"),  # the item table
        MultiValue("kw", hash_buckets=8, max_len=2),
        Numeric("price"),
        DenseVector("emb", dim=3, fill=-9.0),
        SequenceFeature("hist", shares="item", max_len=2),
    ], label="label")


def _fit(spec=None, table=None) -> FeatureSpec:
    fitter = SpecFitter(spec or _spec())
    fitter.update(table or _table())
    return fitter.finalize()


def test_layout_places_bags_in_seq_with_their_tables_and_vectors_in_dense():
    spec = _fit()
    assert spec["tags"].vocab.values.to_pylist() == ["y", "x"]
    # genres' items count towards item's vocabulary (a 2+1, b 1+1, c 1, zz 1)
    assert spec["item"].vocab.values.to_pylist() == ["a", "b", "c", "zz"]
    lay = spec.compile().layout
    item = lay.sparse[0]
    assert lay.n_sparse == 1 and [s.name for s in lay.seq] == ["tags", "genres", "kw", "hist"]
    tags, genres, kw, hist = lay.seq
    assert (tags.kind, tags.shares, tags.shares_index, tags.offset, tags.size) == ("multi_value", None, None,
                                                                                  item.offset + item.size, 2 + 2)
    assert (genres.shares, genres.shares_index, genres.offset, genres.pooling) == ("item", 0, item.offset, "sum")
    assert kw.offset == tags.offset + tags.size and kw.size == 8 + 2
    assert hist.is_sequence and [k for k, _ in lay.sequences] == [3] and [k for k, _ in lay.bags] == [0, 1, 2]
    assert lay.num_embeddings == kw.offset + kw.size and lay.seq_len == 3
    assert lay.dense == ("price", "emb[0]", "emb[1]", "emb[2]") and lay.n_scalar_dense == 1
    assert lay.vectors[0].start == 1 and lay.vectors[0].dim == 3


def test_encoding_by_hand():
    spec = _fit()
    codec = spec.compile()
    b = codec.encode(_table())
    lay = codec.layout
    tags = lay.seq[0]
    t = lambda local: tags.offset + local  # noqa: E731
    y, x = t(FIRST_ID), t(FIRST_ID + 1)
    # first max_len=3 items kept for bags; rare -> OOV; missing row -> all padding
    assert b.seq[:, 0, :3].tolist() == [[x, y, 0], [y, 0, 0], [0, 0, 0], [y, t(OOV_ID), x]]
    item = lay.sparse[0].offset
    a_, b_, zz = item + FIRST_ID, item + FIRST_ID + 1, item + FIRST_ID + 3
    assert b.seq[:, 1, :2].tolist() == [[a_, b_], [0, 0], [0, 0], [zz, 0]]
    assert ((b.seq[:, 2, :2] >= lay.seq[2].offset) | (b.seq[:, 2, :2] == 0)).all()
    assert b.seq[2, 2].tolist() == [0, 0, 0]  # "" is an empty bag
    np.testing.assert_array_equal(b.dense[:, 1:], [[0.5, 1.0, -1.0], [-9.0] * 3, [0, 0, 2.0], [1.0, 1.0, 1.0]])
    assert b.seq[:, 3, :2].tolist()[0] == [a_, b_]  # the sequence keeps the most recent: unchanged behaviour
    freq = codec.id_frequencies()
    assert freq[y] == 3 and freq[x] == 2 and freq[t(OOV_ID)] == 0 and freq[item + MISSING_ID] == 0


def test_request_and_table_front_ends_agree_on_every_new_kind():
    codec = _fit().compile()
    rows = _table().to_pylist()
    for r in rows:  # lists of items (a missing one dropped) are the same as joined strings; so for vectors
        r["tags"] = None if r["tags"] is None else [*r["tags"].split("|"), None]
        r["emb"] = None if r["emb"] is None else ",".join(map(str, r["emb"]))
    context = {"emb": [1.0, 2.0, 3.0], "kw": ["k1"]}
    merged = [{**r, **context} for r in rows]
    a, b = codec.encode_request(context, rows), codec.encode(merged)
    for k in ("sparse", "dense", "seq"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert (a.dense[:, 1:] == [1.0, 2.0, 3.0]).all()
    joined = codec.encode(_table())  # the same bags sent as joined strings
    np.testing.assert_array_equal(a.seq[:, 0], joined.seq[:, 0])
    as_text, as_list = codec.encode([{"emb": "0.5, 1, -1"}]), codec.encode([{"emb": [0.5, 1, -1]}])
    np.testing.assert_array_equal(as_text.dense, as_list.dense)


@pytest.mark.parametrize("value,match", [([1.0, 2.0], "row 0: a vector of 2 values, expected 3"),
                                         ("1,x,2", "expected a number"),
                                         ([1.0, float("nan"), 2.0], "NaN"),
                                         ({"a": 1}, "expected a list")])
def test_a_bad_vector_names_the_field(value, match):
    codec = _fit().compile()
    with pytest.raises(SpecError, match=match) as err:
        codec.encode_request({}, [{"emb": value}])
    assert err.value.field == "emb"


def test_bad_definitions_fail_naming_the_field():
    with pytest.raises(SpecError, match="shares 'nope'") as err:
        FeatureSpec([MultiValue("tags", shares="nope")])
    assert err.value.field == "tags"
    with pytest.raises(SpecError, match="dim must be a positive integer"):
        FeatureSpec([DenseVector("v", dim=0)])
    with pytest.raises(SpecError, match="pooling must be one of"):
        FeatureSpec([MultiValue("tags", pooling="median")])


def test_save_load_round_trip_with_new_kinds(tmp_path):
    spec = _fit()
    spec.save(tmp_path)
    loaded = FeatureSpec.load(tmp_path)
    assert loaded.equals(spec) and loaded["emb"].dim == 3 and loaded["genres"].pooling == "sum"
    data = _table()
    for k in ("sparse", "dense", "seq"):
        want = getattr(spec.compile().encode(data), k)
        np.testing.assert_array_equal(getattr(loaded.compile().encode(data), k), want)


# -- bucketized numbers, clipping, time derivations ---------------------------------------------------------
def test_bucketized_quantiles_by_hand_and_in_the_layout():
    from ctrzoo.features.spec import Bucketized

    x = np.arange(1, 101, dtype=float)  # 1..100: quartile cut points 26, 51, 76
    spec = FeatureSpec([Categorical("c"), Bucketized("age", buckets=4), Bucketized("cl", source="age", buckets=2,
                                                                                 clip=(10, 20))], label=None)
    fitter = SpecFitter(spec)
    fitter.update(pa.table({"c": ["a"] * 100, "age": x}))
    fitted = fitter.finalize()
    assert fitted["age"].boundaries == (26.0, 51.0, 76.0)
    assert fitted["cl"].boundaries == (20.0,)  # clipped to [10, 20]: 90 rows at 20, so the middle is 20
    codec = fitted.compile()
    lay = codec.layout
    assert [f.name for f in lay.sparse] == ["c", "age", "cl"] and lay.sparse[1].size == 4 + 2
    b = codec.encode(pa.table({"c": ["a", "a", "a", "a"], "age": [1.0, 26.0, 1000.0, None]}))
    age = lay.sparse[1].offset
    assert b.sparse[:, 1].tolist() == [age + 2, age + 3, age + 5, age + MISSING_ID]
    req = codec.encode_request({"c": "a"}, [{"age": 1}, {"age": 26}, {"age": 1000}, {}])
    np.testing.assert_array_equal(req.sparse, b.sparse)
    assert FeatureSpec.from_dict(fitted.to_dict()).equals(fitted)


def test_quantiles_do_not_depend_on_blocks_or_workers():
    from ctrzoo.features.quantiles import QuantileCounter

    rng = np.random.default_rng(0)
    x = rng.lognormal(size=20_000)
    whole = QuantileCounter()
    whole.update(x)
    parts = [QuantileCounter() for _ in range(3)]
    for p, chunk in zip(parts, np.array_split(x[::-1], 3)):
        p.update(chunk)
    merged = QuantileCounter()
    for p in parts:
        merged.add_counts(*p.result())
    assert whole.boundaries(10) == merged.boundaries(10)
    cuts = np.array(whole.boundaries(10))
    share = np.histogram(x, bins=[-np.inf, *cuts, np.inf])[0] / x.size
    assert np.all(np.abs(share - 0.1) < 0.01)  # ten equal ranges


def test_numeric_clip_applies_to_the_raw_value_on_both_front_ends():
    spec = FeatureSpec([Numeric("p", transform="log1p", clip=(0, 99))], label=None)
    fitter = SpecFitter(spec)
    fitter.update(pa.table({"p": [1.0, 5.0]}))
    codec = fitter.finalize().compile()
    b = codec.encode(pa.table({"p": [1e9, -5.0, 3.0]}))
    np.testing.assert_allclose(b.dense[:, 0], np.log1p([99.0, 0.0, 3.0]), rtol=1e-6)
    np.testing.assert_array_equal(codec.encode_request({}, [{"p": 1e9}, {"p": -5}, {"p": 3}]).dense, b.dense)
    assert "clip" not in FeatureSpec([Numeric("q")], label=None).to_dict()["features"][0]  # spec.json unchanged


@pytest.mark.parametrize("derive,values,expected", [
    ("hour", ["2024-05-01 13:45:00", "2024-05-01T07:00:00Z", "1714521600", None], ["13", "7", "0", None]),
    ("weekday", [1714521600, 1714608000], ["2", "3"]),  # 2024-05-01 was a Wednesday (Monday = 0)
    ("month:%d/%m/%Y", ["03/04/2020"], ["4"]),
    ("hour:unix_ms", [1714521600000 + 3_600_000], ["1"]),
])
def test_time_derivations(derive, values, expected):
    from ctrzoo.features.transforms import derive as apply

    assert apply(derive, pa.array(values), "t").to_pylist() == expected


def test_time_derivations_encode_online_like_offline_and_refuse_garbage():
    spec = FeatureSpec([Categorical("hour", source="ts", derive="hour"), Categorical("dow", source="ts",
                                                                                  derive="weekday")], label=None)
    rows = pa.table({"ts": ["2024-05-01 13:45:00", "2024-05-02 01:00:00"]})
    fitter = SpecFitter(spec)
    fitter.update(rows)
    codec = fitter.finalize().compile()
    np.testing.assert_array_equal(codec.encode_request({}, rows.to_pylist()).sparse, codec.encode(rows).sparse)
    with pytest.raises(SpecError, match="expected a time") as err:
        codec.encode([{"ts": "yesterday"}])
    assert err.value.field in ("hour", "dow")
    with pytest.raises(SpecError, match="unknown derivation"):
        FeatureSpec([Categorical("x", derive="fortnight")])
