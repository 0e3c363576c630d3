"""Two training processes with gloo on this machine: convergence, ranks in sync, a bundle that scores."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from ctrzoo.bundle import load_bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.evaluate import evaluate_bundle
from ctrzoo.train.distributed import DistContext, data_parallel
from ctrzoo.train.loop import TrainingLoop
from ctrzoo.train.run import train_bundle

# Same global batch (2 ranks x 256 = 512) and so the same number of steps as the single process; the
# ranks see other row orders (each shuffles its own row groups), so the result is close, not equal.
TOLERANCE_AUC = 0.02


@pytest.fixture(scope="module")
def runs(synth_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = synth_prepared["criteo"]
    args = ["train", "--model", "deepfm", "--data", str(data), "--epochs", "2", "--batch-size", "256",
            "--emb-dim", "8", "--mlp", "64,32", "--seed", "5", "--threads", "1", "--patience", "5"]
    proc = subprocess.run([sys.executable, "-m", "ctrzoo", *args, "--out", str(root / "ddp"), "--nproc", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    train_bundle("deepfm", data, root / "single", overrides={
        "epochs": 2, "batch_size": 512, "seed": 5, "threads": 1, "patience": 5,
        "hparams": {"emb_dim": 8, "mlp": [64, 32]}}, progress=False, verbose=False)
    return root, data


def test_two_gloo_processes_converge_and_stay_in_sync(runs):
    root, _ = runs
    meta = load_bundle(root / "ddp").meta
    assert meta.train["processes"] == 2
    history = meta.history
    assert history[-1]["train_logloss"] < history[0]["train_logloss"]
    for h in history:
        a, b = h["rank_weight_checksums"]
        assert a == b  # identical weights on both ranks after every epoch
    assert not (root / "ddp.work").exists()


def test_rank0_bundle_scores_like_a_single_process_bundle(runs):
    root, data = runs
    ds = PreparedDataset.open(data)
    ddp = evaluate_bundle(load_bundle(root / "ddp"), ds)
    single = evaluate_bundle(load_bundle(root / "single"), ds)
    assert ddp["rows"] == single["rows"]
    assert abs(ddp["auc"] - single["auc"]) < TOLERANCE_AUC, (ddp["auc"], single["auc"])
    assert ddp["auc"] > 0.6


# -- the tables' touched rows, exchanged apart from DDP (ctrzoo.train.distributed) -------------------------------
ROWS, DIM, STEPS, HALF = 64, 4, 6, 8  # a 64-row table; 6 steps of a global batch of 2 x 8 rows of 3 fields
TOLERANCE_WEIGHTS = 1e-6  # 2 processes vs 1 on the same rows: the same sums in another float order


class Tiny(nn.Module):
    """``FeatureEmbedding``'s shape of the problem: a ``dim``-wide and a 1-wide sparse table, a dense layer."""

    def __init__(self):
        super().__init__()
        self.table, self.linear = nn.Embedding(ROWS, DIM, sparse=True), nn.Embedding(ROWS, 1, sparse=True)
        self.out = nn.Linear(3 * DIM, 1)

    def forward(self, ids):  # [B, 3] -> [B]
        return self.out(self.table(ids).flatten(1)).squeeze(-1) + self.linear(ids).sum(dim=(1, 2))


class TinyLoop(TrainingLoop):
    """The shared loop on fixed batches: a rank takes its half of each global batch, one process the whole."""

    def __init__(self, rank: int, world: int):
        torch.manual_seed(rank)  # other initial weights per rank: data_parallel must start all from rank 0's
        model = Tiny()
        ctx = DistContext(rank, world)
        self.forward = data_parallel(model, torch.device("cpu")) if ctx.enabled else model
        super().__init__(model, epochs=1, lr=0.05, patience=1, dist=ctx, progress=False)
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(1, ROWS // 2, (STEPS, 2 * HALF, 3), generator=g)  # rows >= 32 are never touched
        targets = torch.rand(STEPS, 2 * HALF, generator=g)
        part = slice(rank * HALF, (rank + 1) * HALF) if ctx.enabled else slice(None)
        self.ids, self.targets = ids[:, part], targets[:, part]
        self.global_ids = ids
        self.steps_per_epoch = STEPS
        self.exchanged_rows: list[int] = []

    def batches(self):
        return iter(range(STEPS))

    def loss(self, step):
        loss = ((self.forward(self.ids[step]) - self.targets[step]) ** 2).mean()
        return loss, loss, len(self.ids[step])

    def after_step(self):
        self.exchanged_rows.append(int(self.model.table.weight.grad._nnz()))

    def validate(self):
        return {}

    def score(self, metrics):
        return None

    def record(self, epoch, loss_sum, n_seen, steps, seconds, metrics):
        return {"epoch": epoch}


def _train_rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        loop = TinyLoop(rank, world)
        ignored = list(loop.model._ddp_params_and_buffers_to_ignore)
        loop.fit()
        torch.save({"state": loop.model.state_dict(), "exchanged": loop.exchanged_rows, "ignored": ignored,
                    "touched": [len(torch.unique(loop.global_ids[s])) for s in range(STEPS)]},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_exchange_touched_rows_and_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_train_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = TinyLoop(0, 1)
    single.fit()
    for name, want in single.model.state_dict().items():
        a, b = (r["state"][name] for r in ranks)
        assert torch.equal(a, b), name  # bit-identical on both ranks, tables and dense layer alike
        assert torch.allclose(a, want, atol=TOLERANCE_WEIGHTS, rtol=0), (name, (a - want).abs().max())
    r0 = ranks[0]
    assert sorted(r0["ignored"]) == ["linear.weight", "table.weight"]  # the tables are out of DDP's all-reduce
    # each step's gradient holds the union of the rows the two halves touched, never the 64-row table
    assert r0["exchanged"] == r0["touched"] and max(r0["touched"]) < ROWS // 2
    start = TinyLoop(0, 1).model.state_dict()
    for name in ("table.weight", "linear.weight"):  # untouched rows keep rank 0's initial values (lazy Adam)
        assert torch.equal(r0["state"][name][ROWS // 2:], start[name][ROWS // 2:])
        assert not torch.equal(r0["state"][name][: ROWS // 2], start[name][: ROWS // 2])
