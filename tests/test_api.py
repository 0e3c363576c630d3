"""The notebook API: ``ctrzoo.load(bundle).predict(rows)`` scores raw rows like the service does."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import ctrzoo
from ctrzoo.errors import BundleError, CtrzooError, SpecError


@pytest.fixture(scope="module")
def raw_rows(synth_prepared):
    from ctrzoo.data.dataset import PreparedDataset

    table = pq.read_table(PreparedDataset.open(synth_prepared["criteo"]).raw_path("test")).slice(0, 300)
    return table.drop_columns(["label"])


def test_predict_equals_the_service_scores_for_the_same_rows(serving_bundles, raw_rows):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    model = ctrzoo.load(serving_bundles["deepfm"], backend="onnxruntime")
    got = model.predict(raw_rows.to_pandas())
    assert got.shape == (raw_rows.num_rows,) and got.dtype == np.float32
    rows = raw_rows.to_pylist()
    with TestClient(create_app(bundle=str(serving_bundles["deepfm"]), backend="onnxruntime")) as client:
        served = np.concatenate([client.post("/rank", json={"candidates": rows[i:i + 100]}).json()["scores"]
                                 for i in range(0, len(rows), 100)])
    np.testing.assert_allclose(got, served, atol=1e-6)
    assert got.std() > 0  # real scores, not a constant


def test_frames_tables_and_dicts_give_the_same_scores_in_any_chunking(serving_bundles, raw_rows):
    model = ctrzoo.load(serving_bundles["deepfm"])  # torch
    ref = model.predict(raw_rows)
    np.testing.assert_array_equal(model.predict(raw_rows.to_pandas()), ref)
    np.testing.assert_array_equal(model.predict(raw_rows.to_pylist()), ref)
    np.testing.assert_allclose(model.predict(raw_rows, chunk_rows=7), ref, atol=1e-6)
    assert model.predict(raw_rows.slice(0, 0)).shape == (0,) and model.predict([]).shape == (0,)


def test_a_missing_column_is_an_error_naming_it_not_a_constant(serving_bundles, raw_rows):
    model = ctrzoo.load(serving_bundles["deepfm"])
    frame = raw_rows.to_pandas()
    with pytest.raises(SpecError) as err:
        model.predict(frame.drop(columns=["C3"]))
    assert err.value.field == "C3" and "allow_missing" in str(err.value)
    with pytest.raises(SpecError, match="none of the columns"):
        model.predict(frame.rename(columns=lambda c: c.lower()))
    partial = model.predict(frame.drop(columns=["C3"]), allow_missing=True)  # on purpose: encoded as missing
    assert partial.shape == (len(frame),) and not np.array_equal(partial, model.predict(frame))


def test_features_bad_inputs_and_bad_paths(serving_bundles, tmp_path):
    model = ctrzoo.load(serving_bundles["din"])
    kinds = {f.name: f.kind for f in model.features}
    assert "sequence" in kinds.values() and "categorical" in kinds.values()
    assert model.name == "din" and "din" in repr(model)
    with pytest.raises(CtrzooError, match="takes a pandas DataFrame"):
        model.predict({"adgroup_id": [1, 2]})
    with pytest.raises(CtrzooError, match="chunk_rows"):
        model.predict([{}], chunk_rows=0)
    with pytest.raises(BundleError):
        ctrzoo.load(tmp_path / "nope")
    with pytest.raises(AttributeError):
        ctrzoo.no_such_thing  # noqa: B018
