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
