"""Criteo-scale on one machine: prepare + one epoch of DeepFM on 10M synthetic rows, 1 vs 2 processes; the
per-step time as the embedding table grows; the ways to exchange a step's embedding gradients.

    python benchmarks/scale.py [--rows 10000000] [--parts 4] [--max-steps N]      # 1. end to end
    python benchmarks/scale.py --tables 1000000,5000000,20000000 [--nproc 1,2]     # 2. table growth
    python benchmarks/scale.py --comm 100000,1000000                               # 3. exchange options

One ``ctrzoo synth criteo`` file of ``--rows`` rows is cut into ``--parts`` files (the shape of Criteo 1TB's
day files). Then, each as a real ``ctrzoo`` command in its own process tree:

1. ``ctrzoo prepare criteo --input parts... --workers 1`` and ``--workers 2``;
2. ``ctrzoo train --model deepfm --epochs 1`` on that dataset with one process and with ``--nproc 2``
   (torchrun, gloo, DistributedDataParallel; each rank reads half of the row groups).

Measured per run: wall seconds, rows/s, and peak RSS of the whole process tree (the sum over its processes,
sampled every 0.1 s), plus the test AUC of both bundles. On this 2-core machine two processes cannot speed
anything up (each takes one core that one process would use with 2 threads): the 2-process rows measure
the overhead of the distributed path, and are reported as such.

2. ``--tables``: per-step time of DeepFM (embedding 16, MLP 400-400-400, batch 4096 per process) on a Criteo
shape (26 categorical fields sized in proportion to Criteo 1TB's cardinalities, 13 numeric) whose table has
each given number of rows (synthetic vocabularies: Zipf-distributed ids, so a batch touches a few tens of
thousands of rows whatever the table), in the shared training loop, with 1 process (2 threads) and with 2
(gloo, 1 thread each: ``data_parallel`` plus the touched rows' exchange). ``--updates dense`` adds the
dense-gradient path (what DDP did before: the whole table all-reduced and Adam-updated every step). Each
(size, processes, updates) runs in a child process of its own; the first ``--warmup`` steps are not timed.

3. ``--comm``: the options for one step's embedding-gradient exchange between 2 gloo processes (a table of
each given number of rows, dim 16, ~20k touched rows per rank, half of them shared): a dense all-reduce of the
whole gradient, gloo's sparse all-reduce of the COO gradient, an all-gather of (row ids, gradient rows) summed
per row, and the union all-reduce ctrzoo uses (``DistContext.average_row_grads``). Median of ``--repeats``.
TorchRec's sharded tables are measured when ``torchrec`` imports (see docs/criteo_1tb.md for the install).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _common import WORK, synth_file

# Criteo 1TB's per-field cardinalities as TorchRec's DLRM example lists them: the proportions of the synthetic
# vocabularies of --tables (scaled to each table size)
CRITEO_1TB_CARDINALITIES = (45833188, 36746, 17245, 7413, 20243, 3, 7114, 1441, 62, 29275261, 1572176, 345138, 10,
                            2209, 11267, 128, 4, 974, 14, 48937457, 11316796, 40094537, 452104, 12606, 104, 35)


def split_lines(src: Path, parts: int) -> list[Path]:
    """Cut ``src`` into ``parts`` files of whole lines (cached); coreutils ``split`` streams it."""
    out = WORK / f"scale_parts_{src.stem}_{parts}"
    files = [out / f"part-{i:02d}.tsv" for i in range(parts)]
    if not all(f.exists() for f in files):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["split", "-n", f"l/{parts}", "-d", "-a", "2", "--additional-suffix=.tsv", str(src),
                        str(out / "part-")], check=True)
    return files


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds and the peak of the summed RSS of it and all its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
                        total += p.memory_info().rss
                peak = max(peak, total)
            except psutil.Error:
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return {"cmd": " ".join(cmd), "wall_s": wall, "peak_rss_mb": peak / 2**20, "output": output}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=None, help="cap training steps (smoke runs); default: 1 epoch")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tables", default=None, help="2. table rows to time steps at, e.g. 1000000,5000000,20000000")
    ap.add_argument("--nproc", default="1,2", help="2. process counts (default 1,2)")
    ap.add_argument("--updates", default="sparse", help="2. sparse (row-sparse, default) and/or dense: sparse,dense")
    ap.add_argument("--steps", type=int, default=60, help="2. timed steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="2. untimed steps first")
    ap.add_argument("--batch-size", type=int, default=4096, help="2. rows per step and process")
    ap.add_argument("--mlp", default="400,400,400", help="2. DeepFM's hidden sizes")
    ap.add_argument("--comm", default=None, help="3. table rows to measure the exchange options at, e.g. 100000")
    ap.add_argument("--touched", type=int, default=20_000, help="3. rows each rank touches per step")
    ap.add_argument("--repeats", type=int, default=20, help="3. exchanges timed per option")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(json.loads(a.child))
    if a.tables:
        return table_growth(a)
    if a.comm:
        return comm_options(a)

    ctrzoo = [sys.executable, "-m", "ctrzoo"]
    parts = split_lines(synth_file("criteo", a.rows), a.parts)
    results = []
    for workers in (1, 2):
        out = WORK / f"scale_prepared_{a.rows}_w{workers}"
        r = run_measured([*ctrzoo, "prepare", "criteo", "--input", *map(str, parts), "--out", str(out),
                          "--workers", str(workers)])
        splits = json.loads((out / "dataset.json").read_text())["splits"]
        rows = sum(s["rows"] for s in splits.values())
        results.append({"step": "prepare", "processes": workers, "rows": rows, **r})
        print(f"prepare, {workers} worker(s): {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
    data = WORK / f"scale_prepared_{a.rows}_w1"
    train_rows = json.loads((data / "dataset.json").read_text())["splits"]["train"]["rows"]
    for nproc in (1, 2):
        out = WORK / f"scale_deepfm_{a.rows}_p{nproc}"
        cmd = [*ctrzoo, "train", "--model", "deepfm", "--data", str(data), "--out", str(out), "--epochs", "1",
               "--nproc", str(nproc)]
        if a.max_steps:
            cmd += ["--max-steps", str(a.max_steps)]
        r = run_measured(cmd)
        meta = json.loads((out / "bundle.json").read_text())
        hist = meta["history"][0]
        results.append({"step": "train 1 epoch", "processes": nproc, "rows": train_rows, **r,
                        "train_loop_samples_per_s": hist.get("samples_per_s"),
                        "test_auc": meta["metrics"]["test"]["auc"], "train_seconds": meta.get("train_seconds")})
        print(f"train, {nproc} process(es): {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"test AUC {meta['metrics']['test']['auc']:.4f}", flush=True)

    print(f"\n{a.rows:,d} synthetic Criteo rows in {a.parts} files; DeepFM (emb 16, MLP 400-400-400, batch 4096)")
    print("| step | processes | wall s | rows/s | peak RSS (tree) MB | vs 1 process (wall) | test AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = {}
    for r in results:
        base.setdefault(r["step"], r["wall_s"])
        auc = f"{r['test_auc']:.4f}" if "test_auc" in r else ""
        print(f"| {r['step']} | {r['processes']} | {r['wall_s']:.1f} | {r['rows'] / r['wall_s']:,.0f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['wall_s'] / base[r['step']]:.2f}x | {auc} |")
    for r in results:
        if "train_loop_samples_per_s" in r:
            print(f"train loop ({r['processes']} process(es)): {r['train_loop_samples_per_s']:,.0f} samples/s "
                  f"(all ranks together), train_seconds {r['train_seconds']}")
    if a.json:
        Path(a.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "output"} for r in results], indent=1))



# -- 2. per-step time as the table grows --------------------------------------------------------------------------
def criteo_sizes(total: int) -> dict[str, int]:
    """26 field sizes in Criteo 1TB's proportions summing to about ``total`` rows (each at least 3)."""
    weights = np.asarray(CRITEO_1TB_CARDINALITIES, dtype=np.float64)
    sizes = np.maximum(3, np.floor(weights / weights.sum() * total)).astype(int)
    return {f"C{i + 1}": int(n) for i, n in enumerate(sizes)}


def synthetic_batches(layout, n: int, batch: int, seed: int) -> list:
    """``n`` Criteo-shaped batches of Zipf(1.2) ids per field (most rows of a big field are rare, as in logs)."""
    import torch

    from ctrzoo.data.loader import Batch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sparse = np.stack([f.offset + (rng.zipf(1.2, batch) - 1) % f.size for f in layout.sparse], axis=1)
        dense = rng.standard_normal((batch, layout.n_dense)).astype(np.float32)
        label = (rng.random(batch) < 0.25).astype(np.float32)
        out.append(Batch(torch.from_numpy(sparse), torch.from_numpy(dense), torch.zeros(batch, 0, 0, dtype=torch.long),
                         torch.from_numpy(label)))
    return out


def _step_times(rank: int, world: int, job: dict, store: str | None = None) -> dict:
    """Time ``job["steps"]`` DeepFM steps of the shared loop in this process (one rank of ``world``)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from ctrzoo.features.layout import TableLayout
    from ctrzoo.models import build_model
    from ctrzoo.train.distributed import DistContext, data_parallel
    from ctrzoo.train.loop import TrainingLoop

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(job["threads"])
    layout = TableLayout.from_sizes(criteo_sizes(job["rows"]), dense=tuple(f"I{i + 1}" for i in range(13)))
    torch.manual_seed(0)
    model = build_model("deepfm", layout, emb_dim=16, mlp=job["mlp"], sparse_grad=job["updates"] == "sparse")
    ctx = DistContext(rank, world)
    forward = data_parallel(model, torch.device("cpu")) if ctx.enabled else model
    n = job["warmup"] + job["steps"]
    batches = synthetic_batches(layout, n, job["batch_size"], seed=rank)
    marks: list[float] = []

    class Loop(TrainingLoop):
        steps_per_epoch = n

        def batches(self):
            return iter(batches)

        def loss(self, b):
            loss = F.binary_cross_entropy_with_logits(forward(b.sparse, b.dense, b.seq), b.label)
            return loss, loss, len(b)

        def after_step(self):
            marks.append(time.perf_counter())

        def validate(self):
            return {}

        def score(self, metrics):
            return None

        def record(self, epoch, loss_sum, n_seen, steps, seconds, metrics):
            return {"epoch": epoch}

    loop = Loop(model, epochs=1, lr=1e-3, patience=1, dist=ctx, progress=False)
    start = time.perf_counter()
    loop.fit()
    step = np.diff([start, *marks])[job["warmup"]:]
    touched = [int(torch.unique(b.sparse).numel()) for b in batches[:5]]
    if world > 1:
        dist.destroy_process_group()
    return {"ms_per_step": float(np.median(step) * 1e3), "ms_mean": float(step.mean() * 1e3),
            "samples_per_s": world * job["batch_size"] / float(np.median(step)), "touched_rows": int(np.mean(touched)),
            "peak_rss_mb": psutil.Process().memory_info().rss / 2**20}


def _rank_main(rank: int, world: int, job: dict, store: str, out: str) -> None:
    result = _step_times(rank, world, job, store)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def _child(job: dict) -> None:
    """One measured run in this fresh process: prints its JSON result last."""
    import tempfile

    if job["kind"] == "comm":
        result = _comm_child(job)
    elif job["world"] == 1:
        result = _step_times(0, 1, job)
    else:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_rank_main, args=(job["world"], job, f"{tmp}/store", f"{tmp}/out.json"), nprocs=job["world"])
            result = json.loads(Path(f"{tmp}/out.json").read_text())
    print(json.dumps(result))


def _run_child(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}): {job}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_growth(a: argparse.Namespace) -> None:
    sizes = [int(x) for x in a.tables.split(",")]
    mlp = [int(x) for x in a.mlp.split(",")]
    results = []
    for updates in a.updates.split(","):
        for world in (int(x) for x in a.nproc.split(",")):
            for rows in sizes:
                job = {"kind": "steps", "rows": rows, "world": world, "updates": updates, "steps": a.steps,
                       "warmup": a.warmup, "batch_size": a.batch_size, "mlp": mlp, "threads": 2 if world == 1 else 1}
                r = {**job, **_run_child(job)}
                results.append(r)
                print(f"{updates} updates, {world} process(es), {rows:,d} rows: {r['ms_per_step']:.1f} ms/step, "
                      f"{r['samples_per_s']:,.0f} samples/s, ~{r['touched_rows']:,d} rows touched/batch", flush=True)
    print(f"\nDeepFM (emb 16, MLP {a.mlp}), batch {a.batch_size} per process, median of {a.steps} steps "
          f"after {a.warmup}")
    print("| updates | processes | table rows | ms/step | samples/s | vs smallest table | vs 1 process |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        first = next(x for x in results if x["updates"] == r["updates"] and x["world"] == r["world"])
        one = next((x for x in results if x["updates"] == r["updates"] and x["world"] == 1 and x["rows"] == r["rows"]),
                   None)
        vs_one = f"{r['samples_per_s'] / one['samples_per_s']:.2f}x" if one else ""
        print(f"| {r['updates']} | {r['world']} | {r['rows']:,d} | {r['ms_per_step']:.1f} | "
              f"{r['samples_per_s']:,.0f} | {r['ms_per_step'] / first['ms_per_step']:.2f}x | {vs_one} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


# -- 3. the exchange options ----------------------------------------------------------------------------------------
def _comm_rank(rank: int, world: int, job: dict, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from ctrzoo.train.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    rows, dim, touched = job["rows"], 16, min(job["touched"], job["rows"] // 2)
    g = torch.Generator().manual_seed(rank)
    shared = torch.arange(touched // 2)  # half of each rank's rows are touched by the other rank too
    own = torch.randperm(rows - touched // 2, generator=g)[: touched - touched // 2] + touched // 2
    ids = torch.unique(torch.cat([shared, own]))
    values = torch.randn(len(ids), dim, generator=g)
    table = torch.nn.Parameter(torch.zeros(rows, dim))
    ctx = DistContext(rank, world)

    def sparse_grad():
        return torch.sparse_coo_tensor(ids.unsqueeze(0), values, (rows, dim))

    def dense_all_reduce():
        grad = sparse_grad().to_dense()
        dist.all_reduce(grad)

    def gloo_sparse_all_reduce():
        grad = sparse_grad()
        dist.all_reduce(grad)

    def gather_ids_and_rows():
        n = torch.tensor([len(ids)])
        counts = [torch.empty_like(n) for _ in range(world)]
        dist.all_gather(counts, n)
        width = int(max(c.item() for c in counts))
        pid = torch.nn.functional.pad(ids, (0, width - len(ids)), value=-1)
        pval = torch.nn.functional.pad(values, (0, 0, 0, width - len(ids)))
        all_ids = [torch.empty_like(pid) for _ in range(world)]
        all_vals = [torch.empty_like(pval) for _ in range(world)]
        dist.all_gather(all_ids, pid)
        dist.all_gather(all_vals, pval)
        flat_ids, flat_vals = torch.cat(all_ids), torch.cat(all_vals)
        keep = flat_ids >= 0
        union, inverse = torch.unique(flat_ids[keep], return_inverse=True)
        values.new_zeros(len(union), dim).index_add_(0, inverse, flat_vals[keep])

    def union_all_reduce():
        table.grad = sparse_grad()
        ctx.average_row_grads([table])

    options = {"dense all-reduce of the table": dense_all_reduce,
               "gloo sparse all-reduce (COO)": gloo_sparse_all_reduce,
               "all-gather (ids, rows), sum per row": gather_ids_and_rows,
               "union all-reduce (ctrzoo)": union_all_reduce}
    result = {}
    for name, fn in options.items():
        fn()  # warm-up
        times = []
        for _ in range(job["repeats"]):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = float(np.median(times) * 1e3)
    result["touched_per_rank"] = len(ids)
    result.update(_embedding_steps(rank, job))
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def _embedding_steps(rank: int, job: dict) -> dict:
    """A whole embedding step (lookup of a 4096 x 26 batch of Zipf ids in one shared 16-wide table, backward,
    exchange, update) per option: ctrzoo's (``average_row_grads`` + ``RowSparseAdam``), and where ``torchrec``
    imports, its ``DistributedModelParallel`` with each sharding type its CPU kernels allow (fused row-wise
    Adagrad: its CPU kernels have no Adam)."""
    import torch
    import torch.distributed as dist

    from ctrzoo.nn import RowSparseAdam
    from ctrzoo.train.distributed import DistContext

    rows, batch, fields = job["rows"], 4096, 26
    rng = np.random.default_rng(rank)
    batches = [torch.from_numpy((rng.zipf(1.2, (batch, fields)) - 1) % rows) for _ in range(job["repeats"] + 1)]
    out = {}

    def timed(step) -> float:
        times = []
        for i, ids in enumerate(batches):
            dist.barrier()
            t0 = time.perf_counter()
            step(ids)
            if i:  # the first one warms up
                times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)

    table = torch.nn.Embedding(rows, 16, sparse=True)
    opt, ctx = RowSparseAdam(table.parameters(), lr=1e-3), DistContext(rank, dist.get_world_size())

    def ctrzoo_step(ids):
        opt.zero_grad(set_to_none=True)
        unique, inverse = torch.unique(ids, return_inverse=True)  # FeatureEmbedding.lookup's deduplicated read
        table(unique)[inverse].sum().backward()
        ctx.average_row_grads([table.weight])
        opt.step()

    out["step: ctrzoo (union all-reduce + RowSparseAdam)"] = timed(ctrzoo_step)
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.planner.types import ParameterConstraints
    except ImportError:
        return out
    names = [f"C{i}" for i in range(fields)]
    for sharding in ("data_parallel", "table_wise", "column_wise"):
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=16, num_embeddings=rows,
                                                                feature_names=names)], device=torch.device("meta"))
        sharder = EmbeddingBagCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                                                              "learning_rate": 0.01})
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=dist.get_world_size(), compute_device="cpu"),
            constraints={"t": ParameterConstraints(sharding_types=[sharding], min_partition=8)})
        plan = planner.collective_plan(ebc, [sharder], dist.GroupMember.WORLD)
        model = DistributedModelParallel(ebc, device=torch.device("cpu"), plan=plan, sharders=[sharder])
        lengths = torch.ones(batch * fields, dtype=torch.int32)

        def torchrec_step(ids, model=model, lengths=lengths):
            kjt = KeyedJaggedTensor.from_lengths_sync(keys=names, values=ids.t().reshape(-1), lengths=lengths)
            model(kjt).values().sum().backward()  # the fused optimizer updates in the backward pass

        out[f"step: TorchRec {sharding} (fused row-wise Adagrad)"] = timed(torchrec_step)
    # row-wise: what `--shard-embeddings` runs (ctrzoo.train.sharded): unpooled EmbeddingCollection, one bag
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed.embedding import EmbeddingCollectionSharder

    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="t", embedding_dim=16, num_embeddings=rows,
                                                     feature_names=["t"])], device=torch.device("meta"))
    sharder = EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                                                       "learning_rate": 0.01})
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=dist.get_world_size(), compute_device="cpu"),
                                       constraints={"t": ParameterConstraints(sharding_types=["row_wise"])})
    model = DistributedModelParallel(ec, device=torch.device("cpu"), sharders=[sharder],
                                     plan=planner.collective_plan(ec, [sharder], dist.GroupMember.WORLD))

    def row_wise_step(ids, model=model):
        values = ids.reshape(-1)
        kjt = KeyedJaggedTensor(keys=["t"], values=values, lengths=torch.tensor([values.numel()]))
        model(kjt)["t"].values().sum().backward()

    out["step: TorchRec row_wise, EmbeddingCollection (--shard-embeddings; fused row-wise Adagrad)"] = \
        timed(row_wise_step)
    return out


def _comm_child(job: dict) -> dict:
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_comm_rank, args=(2, job, f"{tmp}/store", f"{tmp}/out.json"), nprocs=2)
        return json.loads(Path(f"{tmp}/out.json").read_text())


def comm_options(a: argparse.Namespace) -> None:
    results = []
    for rows in (int(x) for x in a.comm.split(",")):
        job = {"kind": "comm", "rows": rows, "touched": a.touched, "repeats": a.repeats}
        results.append({**job, **_run_child(job)})
    names = [k for k in results[0] if k not in ("kind", "rows", "touched", "repeats", "touched_per_rank")]
    print(f"one step's embedding-gradient exchange, then a whole embedding step (4096 x 26 Zipf ids: lookup, "
          f"backward, exchange, update), 2 gloo processes, dim 16, median of {a.repeats} (ms)")
    print("| option | " + " | ".join(f"{r['rows']:,d} rows ({r['touched_per_rank']:,d} touched/rank)" for r in results)
          + " |")
    print("| --- |" + " ---: |" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r[name]:.2f}" for r in results) + " |")
    try:
        import torchrec  # noqa: F401
    except ImportError as exc:
        print(f"TorchRec: not measured ({exc.__class__.__name__}: {exc}); docs/criteo_1tb.md says how to install it")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
