"""`ctrzoo compare`: same-bundle null result, shuffled-label model, cross-spec comparison, reports."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctrzoo.cli import main
from ctrzoo.compare import compare, write_report
from ctrzoo.data.prepare import prepare
from ctrzoo.errors import CtrzooError
from ctrzoo.synth import generate
from ctrzoo.train.run import train_bundle

SMALL = {"emb_dim": 8, "mlp": [64, 32]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One raw file, two prepared views of it (full spec, one feature dropped) and bundles."""
    root = tmp_path_factory.mktemp("cmp")
    raw = root / "c.tsv"
    generate("criteo", 30_000, 11, raw)
    prepare("criteo", [raw], root / "full")
    prepare("criteo", [raw], root / "dropped", spec=_dropped_spec())
    for name, data in (("a", "full"), ("b", "dropped")):
        train_bundle("deepfm", root / data, root / name, overrides={"epochs": 2, "hparams": SMALL},
                     progress=False, verbose=False)
    # a model trained on shuffled labels: same raw data, labels permuted in the training shards
    shuffled = root / "shuffled_data"
    shutil.copytree(root / "full", shuffled)
    for shard in sorted((shuffled / "train").glob("*.parquet")):
        t = pq.read_table(shard)
        perm = np.random.default_rng(0).permutation(t.num_rows)
        pq.write_table(t.set_column(0, "label", t.column("label").take(perm)), shard)
    train_bundle("deepfm", shuffled, root / "noise", overrides={"epochs": 1, "hparams": SMALL},
                 progress=False, verbose=False)
    return root


def _dropped_spec():
    from ctrzoo.data.formats import FORMATS
    from ctrzoo.features import FeatureSpec

    spec = FORMATS["criteo"].default_spec()
    return FeatureSpec([f for f in spec.features if f.name != "C3"], spec.label, spec.user_id)


def test_same_bundle_twice_is_a_null_result(world):
    r = compare([world / "a", world / "a"], world / "full", n_boot=200)
    c = r["comparisons"][0]
    assert c["auc"]["diff"] == 0 and c["auc"]["p_value"] == 1.0
    assert c["logloss"]["diff"] == 0 and c["logloss"]["p_value"] == 1.0
    assert r["verdicts"][0].startswith("no significant AUC difference")


def test_shuffled_labels_lose_with_tiny_p(world):
    r = compare([world / "noise", world / "a"], world / "full", baseline="noise", n_boot=200)
    c = r["comparisons"][0]
    assert c["auc"]["p_value"] < 1e-6 and c["auc"]["ci_low"] > 0
    assert r["verdicts"][0].startswith("a beats noise")


def test_bundles_with_different_specs_compare_on_the_same_raw_rows(world):
    r = compare([world / "a", world / "b"], world / "full", n_boot=200, slice_by="C9")
    assert set(r["models"]) == {"a", "b"}
    test_rows = pq.read_metadata(world / "full" / "raw" / "test.parquet").num_rows
    assert r["data"]["rows"] == test_rows
    slices = r["slices"]["slices"]
    assert len(slices) >= 2 and sum(s["rows"] for s in slices) == test_rows
    assert all(set(s["auc"]) == {"a", "b"} for s in slices)
    # scoring b through its own encoder on raw rows equals b's own evaluation on its prepared test split
    b_meta = json.loads((world / "b" / "bundle.json").read_text())
    assert r["models"]["b"]["auc"] == pytest.approx(b_meta["metrics"]["test"]["auc"], abs=1e-6)


def test_bootstrap_reproducible_with_seed(world):
    r1 = compare([world / "a", world / "b"], world / "full", n_boot=100, seed=5)
    r2 = compare([world / "a", world / "b"], world / "full", n_boot=100, seed=5)
    r3 = compare([world / "a", world / "b"], world / "full", n_boot=100, seed=6)
    assert r1["comparisons"] == r2["comparisons"]
    assert r1["comparisons"][0]["logloss"] != r3["comparisons"][0]["logloss"]


def test_bundles_from_other_raw_data_are_refused(world, tmp_path):
    raw = tmp_path / "other.tsv"
    generate("criteo", 3000, 99, raw)
    prepare("criteo", [raw], tmp_path / "other")
    train_bundle("deepfm", tmp_path / "other", tmp_path / "x",
                 overrides={"epochs": 1, "max_steps": 1, "hparams": SMALL}, progress=False, verbose=False)
    with pytest.raises(CtrzooError, match="other raw data"):
        compare([world / "a", tmp_path / "x"], world / "full")
    with pytest.raises(CtrzooError, match="no such raw column"):
        compare([world / "a", world / "b"], world / "full", slice_by="nope")
    with pytest.raises(CtrzooError, match="at least two"):
        compare([world / "a"], world / "full")


def test_cli_writes_three_reports_and_a_verdict(world, tmp_path, capsys):
    code = main(["compare", str(world / "noise"), str(world / "a"), str(world / "b"), "--data", str(world / "full"),
                 "--slice-by", "C6", "--bootstrap", "100", "--report", str(tmp_path / "rep")])
    assert code == 0
    out = capsys.readouterr().out
    assert "a beats noise" in out and "b beats noise" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert all("p_holm" in c["auc"] for c in rep["comparisons"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| model | AUC | logloss |" in md and "Holm" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    for alt in ("roc plot", "calibration plot", "slices plot"):
        assert f'alt="{alt}" src="data:image/png;base64,' in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(world, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the HTML report was not rendered")
    report = compare([world / "noise", world / "a"], world / "full", n_boot=50)
    out = write_report(report, tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
         (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # the plots are colourful: ROC lines and calibration markers put many non-grey pixels on the page
    spread = img.max(axis=2) - img.min(axis=2)
    assert (spread > 0.2).mean() > 0.001
    assert (img.mean(axis=2) < 0.9).mean() > 0.01  # not a blank page
