"""The ``ctrzoo`` command line: one subcommand per job, thin wrappers over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctrzoo.errors import CtrzooError


def _cmd_synth(args: argparse.Namespace) -> None:
    from ctrzoo.synth import generate

    summary = generate(args.kind, args.rows, args.seed, args.out, progress=sys.stderr.isatty())
    print(f"wrote {summary['rows']} {args.kind} rows to {args.out}: base CTR {summary['base_ctr']:.4f}, "
          f"oracle AUC {summary['oracle_auc']:.4f}, oracle logloss {summary['oracle_logloss']:.4f}")


def _load_spec_file(path: str | None):
    if path is None:
        return None
    import yaml

    from ctrzoo.features import FeatureSpec

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CtrzooError(f"{p}: no such spec file") from None
    except yaml.YAMLError as exc:
        raise CtrzooError(f"{p}: not valid YAML/JSON ({exc})") from None
    data.setdefault("format_version", 1)
    return FeatureSpec.from_dict(data)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ctrzoo.data.formats import FORMATS
    from ctrzoo.data.prepare import PrepareOptions, prepare
    from ctrzoo.data.splits import SplitConfig
    from ctrzoo.features import FeatureSpec

    spec = _load_spec_file(args.spec) or FORMATS[args.kind].default_spec()
    if args.drop:
        unknown = set(args.drop) - {f.name for f in spec.features}
        if unknown:
            raise CtrzooError(f"--drop: unknown features {sorted(unknown)}")
        spec = FeatureSpec([f for f in spec.features if f.name not in args.drop], spec.label, spec.user_id)
    for c in spec.categorical:
        if args.min_count is not None:
            c.min_count = args.min_count
        if args.max_vocab is not None:
            c.max_vocab = args.max_vocab
            c.overflow = "hash" if args.hash_overflow else "truncate"
    opts = PrepareOptions(
        split=SplitConfig(args.split, tuple(args.ratios), args.seed),
        strict=args.strict,
        block_bytes=int(args.block_mb * (1 << 20)),
        max_line_bytes=int(args.max_line_mb * (1 << 20)),
        keep_raw_test=not args.no_raw,
        workers=args.workers,
    )
    meta = prepare(args.kind, args.input, args.out, spec, opts)
    print(f"prepared {args.out} in {meta['seconds']:.1f}s")
    print(format_summary(args.out))
    for warning in meta.get("warnings", []):
        print(f"ctrzoo prepare: warning: {warning}", file=sys.stderr)


def format_summary(path: str | Path) -> str:
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.prepare import split_warnings

    ds = PreparedDataset.open(path)
    m = ds.meta
    lines = [f"dataset {ds.path} ({m['kind']}, fingerprint {m['fingerprint'][:24]}...)"]
    for name, s in m["splits"].items():
        ctr = s["positives"] / s["rows"] if s["rows"] else float("nan")
        lines.append(f"  {name:<5} {s['rows']:>10,d} rows  CTR {ctr:.4f}  {len(s['shards'])} shard(s)")
    layout = ds.spec.layout()
    sizes = ", ".join(f"{f.name}:{f.size}" for f in layout.sparse)
    lines.append(f"  features: {layout.n_sparse} categorical ({sizes}), {layout.n_dense} numeric, {layout.n_seq} sequence")
    lines.append(f"  embedding rows: {layout.num_embeddings:,d}")
    bad = m["bad_rows"]
    if bad["total"]:
        lines.append(f"  bad rows skipped: {bad['total']}")
        for reason, info in bad["by_reason"].items():
            lines.append(f"    {info['count']:>8} x {reason}  (first: {', '.join(info['first'][:3])})")
    else:
        lines.append("  bad rows skipped: 0")
    lines += [f"  warning: {w}" for w in split_warnings(m["splits"])]
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> None:
    if args.verify:
        _verify(args.path)
    if args.json:
        from ctrzoo.data.dataset import PreparedDataset

        print(json.dumps(PreparedDataset.open(args.path).meta, indent=1))
    else:
        print(format_summary(args.path))


def _verify(path: str) -> None:
    """Read every file of the dataset; print each damaged one; fail (exit 2) if any is."""
    from ctrzoo.data.dataset import verify
    from ctrzoo.errors import DatasetError

    problems = verify(path)
    for p in problems:
        print(f"damaged: {p}")
    if problems:
        raise DatasetError(f"{path}: {len(problems)} damaged file(s); prepare the data again")
    print(f"verified {path}: every shard and the raw test file read back, row counts match dataset.json")


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from ctrzoo.train.distributed import relaunch_with_torchrun

        argv = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
        if "--nproc" in sys.argv[1:]:  # drop the value that followed "--nproc"
            i = sys.argv[1:].index("--nproc")
            argv = sys.argv[1:][:i] + sys.argv[1:][i + 2:]
        code = relaunch_with_torchrun(argv, args.nproc)
        if code:
            raise CtrzooError(f"distributed training failed (torchrun exit code {code})")
        return
    from ctrzoo.train.run import train_bundle

    overrides = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "regularization": args.reg, "reg_lambda": args.reg_lambda, "patience": args.patience,
        "checkpoint_every": args.checkpoint_every, "threads": args.threads, "max_steps": args.max_steps,
        "bf16": args.bf16,
        "sparse_updates": False if args.dense_updates else None,
        "hparams": {k: v for k, v in {"emb_dim": args.emb_dim, "mlp": args.mlp, "dropout": args.dropout}.items()
                    if v is not None},
    }
    train_bundle(args.model, args.data, args.out, args.config, overrides, resume=args.resume)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.evaluate import evaluate_bundle
    from ctrzoo.train.run import format_auc

    bundle = load_bundle(args.bundle)
    m = evaluate_bundle(bundle, PreparedDataset.open(args.data), args.split)
    line = f"{bundle.model_name} on {args.split} ({m['rows']:,d} rows): {format_auc(m, args.split)}  logloss {m['logloss']:.4f}"
    if "gauc" in m:
        line += f"  GAUC {m['gauc']:.4f} ({m['gauc_users']} users, {m['gauc_users_skipped']} one-class users skipped)"
    print(line)
    if args.json:
        print(json.dumps(m))


def _cmd_compare(args: argparse.Namespace) -> None:
    from ctrzoo.compare import compare, write_report

    report = compare(args.bundles, args.data, args.split, args.baseline, args.slice_by, args.bootstrap, args.seed)
    out = write_report(report, args.report)
    for v in report["verdicts"]:
        print(v)
    print(f"report: {out / 'report.html'} (also report.md, report.json)")


def _cmd_export(args: argparse.Namespace) -> None:
    from ctrzoo.export import export_onnx

    record = export_onnx(args.bundle)
    print(f"wrote {Path(args.bundle) / record['file']} (opset {record['opset']}; onnxruntime vs torch max |diff| "
          f"{record['parity_max_abs_diff']:.1e}; golden rows max |diff| {record['golden_max_abs_diff']:.1e})")


def _cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "retrieval":
        _bench_retrieval(args)
        return
    if not args.bundle:
        raise CtrzooError("bench inference: --bundle is required")
    from ctrzoo.runtime.bench import bench_inference, format_table

    rows = bench_inference(args.bundle, args.backends, args.batch_sizes, args.seconds, threads=args.threads)
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows))


def _index_params(args: argparse.Namespace):
    from ctrzoo.retrieval.index import IndexParams

    given = {"m": args.m, "ef_construction": args.ef_construction, "ef_search": getattr(args, "ef_search", None),
             "nlist": args.nlist, "pq_m": args.pq_m, "nprobe": getattr(args, "nprobe", None),
             "threads": args.index_threads}
    return IndexParams(**{k: v for k, v in given.items() if v is not None})


def _bench_retrieval(args: argparse.Namespace) -> None:
    import numpy as np

    from ctrzoo.retrieval.bench import bench_vectors, format_builds, format_table, goals, plot

    if bool(args.bundle) == bool(args.synthetic):
        raise CtrzooError("bench retrieval: give either --bundle R (a retrieval bundle) or --synthetic N_ITEMS")
    n_q = args.queries_n
    if args.synthetic:
        from ctrzoo.retrieval.synth import zipf_factorized

        items, users = zipf_factorized(n_items=args.synthetic, n_users=max(args.synthetic // 2, 2 * n_q), seed=args.seed)
        users = users[np.linalg.norm(users, axis=1) > 0]
        title = f"synthetic popularity-skewed vectors ({args.synthetic:,d} items)"
    else:
        from ctrzoo.retrieval.bundle import load_retrieval_bundle
        from ctrzoo.retrieval.retriever import catalogue_vectors, held_out_queries

        bundle = load_retrieval_bundle(args.bundle)
        model = bundle.build_model()
        items, _ = catalogue_vectors(bundle, model, bundle.catalogue())
        users = held_out_queries(bundle, model, args.queries, limit=2 * n_q, seed=args.seed)
        title = f"two-tower item vectors of {args.bundle} ({len(items):,d} items)"
    rng = np.random.default_rng(args.seed)
    users = users[rng.permutation(len(users))]
    if len(users) < 4:
        raise CtrzooError(f"bench retrieval: only {len(users)} distinct queries; need at least 4")
    half = min(n_q, len(users) // 2)
    result = bench_vectors(items, users[:half], users[half : 2 * half], k=args.k, kinds=args.kinds,
                           params=_index_params(args), targets=args.targets, log=print)
    result["goals"] = goals(result)
    result["title"] = title
    print(format_table(result))
    print(format_builds(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "retrieval.md").write_text(f"## {title}\n\n{format_table(result)}\n\n{format_builds(result)}\n")
        plot(result, out / "retrieval.png", title)
        print(f"wrote {out / 'retrieval.md'}, retrieval.json, retrieval.png")
    if args.json:
        print(json.dumps(result["goals"]))


def _cmd_train_retrieval(args: argparse.Namespace) -> None:
    from ctrzoo.retrieval.towers import TowerSplit
    from ctrzoo.retrieval.train import RetrievalConfig, train_retrieval

    split = None
    if args.item_features:
        from ctrzoo.data.dataset import PreparedDataset

        spec = PreparedDataset.open(args.data).spec
        item = list(args.item_features)
        user = args.user_features or [f.name for f in spec.features if f.name not in item]
        split = TowerSplit(args.item_id or item[0], item, user, args.history_attributes or [])
    elif args.item_id or args.user_features or args.history_attributes:
        raise CtrzooError("train-retrieval: --item-id, --user-features and --history-attributes need --item-features")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "emb_dim": args.emb_dim,
             "hidden": args.hidden, "out_dim": args.out_dim, "normalize": args.normalize,
             "temperature": args.temperature, "random_negatives": args.random_negatives,
             "hard_negatives": args.hard_negatives, "hard_ranks": args.hard_ranks, "recall_k": args.recall_k,
             "seed": args.seed, "threads": args.threads, "max_steps": args.max_steps, "patience": args.patience}
    cfg = RetrievalConfig(**{k: v for k, v in given.items() if v is not None}, logq=not args.no_logq)
    train_retrieval(args.data, args.out, split, cfg)


def _cmd_index(args: argparse.Namespace) -> None:
    from ctrzoo.retrieval.retriever import index_catalogue

    index_catalogue(args.bundle, args.kind, args.items, args.out, args.queries, _index_params(args),
                    target=args.target, k=args.k, allow_unknown=args.allow_unknown_items)


def _cmd_serve(args: argparse.Namespace) -> None:
    import os

    try:
        import uvicorn
    except ImportError:
        raise CtrzooError("serving needs its extra: pip install 'ctrzoo[serving]'") from None
    from ctrzoo.bundle import load_bundle

    bundle = load_bundle(args.bundle)  # fail here, clearly (one line), before starting workers
    if args.retrieval:
        from ctrzoo.retrieval.bundle import load_retrieval_bundle

        load_retrieval_bundle(args.retrieval)
    if args.backend not in ("torch", "fused") and not (bundle.path / "model.onnx").exists():
        raise CtrzooError(f"{args.bundle} has no model.onnx: run `ctrzoo export --bundle {args.bundle}` or use "
                          "--backend torch")
    # workers are separate processes: they read their settings from the environment
    os.environ["CTRZOO_BUNDLE"] = str(Path(args.bundle).resolve())
    os.environ["CTRZOO_BACKEND"] = args.backend
    if args.threads:
        os.environ["CTRZOO_THREADS"] = str(args.threads)
    if args.retrieval:
        os.environ["CTRZOO_RETRIEVAL"] = str(Path(args.retrieval).resolve())
    if args.read_timeout is not None:
        os.environ["CTRZOO_READ_TIMEOUT_S"] = str(args.read_timeout)
    from serving.server import protocol_class

    # the protocol closes connections that send no complete headers within the read timeout (serving.server)
    uvicorn.run("serving.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False, http=protocol_class())


def _cmd_tune(args: argparse.Namespace) -> None:
    from ctrzoo.runtime.tvm import DEFAULT_BUCKETS, require_tvm, tune_tvm

    require_tvm()
    s = tune_tvm(args.bundle, trials=args.trials, max_minutes=args.minutes,
                 buckets=tuple(args.buckets) if args.buckets else DEFAULT_BUCKETS, focus=tuple(args.focus))
    print(f"tuned {args.bundle} for batch buckets {', '.join(map(str, s['buckets']))}: {s['trials']} trials in "
          f"{s['tuning_seconds']:.0f}s (stopped by {s['stopped_by']}); library rebuilt in {s['build_seconds']:.0f}s")
    for t in sorted(s["tasks"], key=lambda t: -(t["best_us"] or 0) * t["weight"])[:8]:
        best = f"{t['best_us']:.1f} us" if t["best_us"] is not None else "n/a"
        print(f"  {t['task']:<60} x{t['weight']:.0f}  {t['trials']:>5} trials  best {best}")
    print(f"database and library in {Path(args.bundle) / 'tvm'}; `ctrzoo bench inference --backends onnxruntime tvm` "
          f"times them")


def _cmd_demo(args: argparse.Namespace) -> None:
    from ctrzoo.demo import run_demo

    run_demo(Path(args.out), rows=args.rows, seed=args.seed, epochs=args.epochs)


def _add_index_build_args(p) -> None:
    p.add_argument("--m", type=int, default=None, help="graph degree M of the HNSW kinds (default 32)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction (default 200)")
    p.add_argument("--nlist", type=int, default=None, help="ivfpq-ip: inverted lists (default 4 sqrt(n))")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq-ip: bytes per vector (default d/2)")
    p.add_argument("--index-threads", type=int, default=None, help="threads for building indexes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrzoo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic raw logs with known click probabilities")
    s.add_argument("kind", choices=["criteo", "avazu", "taobao"])
    s.add_argument("--rows", type=int, default=100_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="raw file to write (.gz to compress)")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("prepare", help="raw logs -> prepared dataset (spec + Parquet shards)")
    s.add_argument("kind", choices=["criteo", "avazu", "taobao"])
    s.add_argument("--input", nargs="+", required=True, help="raw file(s); .gz is read transparently")
    s.add_argument("--out", required=True, help="dataset directory (replaced atomically)")
    s.add_argument("--split", choices=["random", "order"], default="random",
                   help="random: hashed per line with --seed; order: the last fractions (time-ordered logs)")
    s.add_argument("--ratios", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VALID", "TEST"))
    s.add_argument("--seed", type=int, default=2024)
    s.add_argument("--strict", action="store_true", help="fail at the first bad row instead of skipping it")
    s.add_argument("--min-count", type=int, default=None, help="override every categorical feature's min count")
    s.add_argument("--drop", nargs="+", default=None, metavar="FEATURE", help="leave these features out")
    s.add_argument("--spec", default=None, help="YAML/JSON feature spec instead of the dataset's default")
    s.add_argument("--no-raw", action="store_true", help="do not keep the raw test rows")
    s.add_argument("--block-mb", type=float, default=32, help="bytes read per block (memory vs overhead)")
    s.add_argument("--max-line-mb", type=float, default=1,
                   help="a longer line is a counted bad row, skipped without being held in memory")
    s.add_argument("--workers", type=int, default=1, help="processes; each input file is one unit of work")
    s.add_argument("--max-vocab", type=int, default=None, help="cap every vocabulary at this many values")
    s.add_argument("--hash-overflow", action="store_true",
                   help="with --max-vocab: hash fields whose vocabulary would exceed it, instead of truncating")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("info", help="summary of a prepared dataset")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verify", action="store_true",
                   help="read every shard and the raw test file back, check row counts (slow; exit 2 if damaged)")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("train", help="train a model on a prepared dataset and write a bundle")
    s.add_argument("--model", required=True, help="wide_deep, deepfm, dcn or din")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--config", default=None, help="YAML with 'train:' settings and 'models: {NAME: hparams}'")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--emb-dim", type=int)
    s.add_argument("--mlp", type=lambda v: [int(x) for x in v.split(",")], help="hidden sizes, e.g. 400,400,400")
    s.add_argument("--dropout", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--reg", choices=["none", "l2", "mba"], help="embedding regularization")
    s.add_argument("--reg-lambda", type=float)
    s.add_argument("--patience", type=int, help="epochs without validation AUC gain before stopping")
    s.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: each epoch)")
    s.add_argument("--resume", action="store_true", help="continue from OUT.work/checkpoint.pt")
    s.add_argument("--threads", type=int)
    s.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the matmuls while training (default: on where the CPU has AVX512-BF16 or AMX)")
    s.add_argument("--dense-updates", action="store_true", help="dense Adam on embeddings instead of row-sparse Adam")
    s.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    s.add_argument("--nproc", type=int, default=1,
                   help="training processes on this machine (torchrun; gloo on CPU, nccl on GPU)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="AUC, logloss and GAUC of a bundle on a prepared split")
    s.add_argument("--bundle", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("compare", help="A/B comparison of bundles on the same rows, with significance")
    s.add_argument("bundles", nargs="+", help="two or more bundle directories")
    s.add_argument("--data", required=True, help="the prepared dataset the bundles were trained from")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--baseline", default=None, help="bundle to compare the others with (default: the first)")
    s.add_argument("--slice-by", default=None, help="raw field for per-slice AUC (e.g. C1, pid)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for logloss and GAUC")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--report", required=True, help="output directory for report.{json,md,html}")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("export", help="write model.onnx into a bundle (checked against torch)")
    s.add_argument("--bundle", required=True)
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", help="benchmarks: `ctrzoo bench inference --bundle B`, `ctrzoo bench retrieval ...`")
    s.add_argument("what", choices=["inference", "retrieval"])
    s.add_argument("--bundle", help="inference: a model bundle; retrieval: a retrieval bundle")
    s.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "fused"])
    s.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100, 1024])
    s.add_argument("--seconds", type=float, default=1.0, help="time per (backend, batch size)")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--json", action="store_true")
    g = s.add_argument_group("retrieval", "recall@k vs QPS per index kind (efSearch / nprobe sweeps), auto's picks")
    g.add_argument("--synthetic", type=int, default=None, metavar="N_ITEMS",
                   help="popularity-skewed vectors (factorized Zipf clicks) instead of a bundle's catalogue")
    g.add_argument("--queries", default=None, help="prepared dataset (its test split) or .npy of user vectors")
    g.add_argument("--queries-n", type=int, default=2000, help="evaluation queries (as many again select auto's)")
    g.add_argument("--kinds", nargs="+", default=["flat-ip", "hnsw-ip", "mobius-hnsw", "ivfpq-ip"],
                   choices=["flat-ip", "hnsw-ip", "mobius-hnsw", "ivfpq-ip"])
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.99], help="auto's recall targets")
    g.add_argument("--out", default=None, help="directory for retrieval.md, retrieval.json, retrieval.png")
    g.add_argument("--seed", type=int, default=0)
    _add_index_build_args(g)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("train-retrieval", help="train the two-tower retrieval model and write a retrieval bundle")
    s.add_argument("--data", required=True, help="prepared dataset directory (clicked rows are the positives)")
    s.add_argument("--out", required=True, help="retrieval bundle directory to write")
    s.add_argument("--item-features", nargs="+", default=None, metavar="FEATURE",
                   help="features of the item tower (default for taobao: the ad's fields)")
    s.add_argument("--item-id", default=None, help="the item tower feature naming the item (default: the first)")
    s.add_argument("--user-features", nargs="+", default=None, metavar="FEATURE",
                   help="features of the user/context tower (default: every other feature)")
    s.add_argument("--history-attributes", nargs="+", default=None, metavar="FEATURE",
                   help="item features also pooled over the user's history (e.g. cate_id)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int, help="clicks per batch (each one's negatives are the others)")
    s.add_argument("--lr", type=float)
    s.add_argument("--emb-dim", type=int)
    s.add_argument("--hidden", type=lambda v: [int(x) for x in v.split(",") if x], help="tower MLP sizes, e.g. 128")
    s.add_argument("--out-dim", type=int, help="vector size")
    s.add_argument("--normalize", choices=["both", "user", "none"])
    s.add_argument("--temperature", type=float)
    s.add_argument("--no-logq", action="store_true", help="no sampling-bias correction of in-batch negatives")
    s.add_argument("--random-negatives", type=int, help="uniform catalogue negatives added to each batch")
    s.add_argument("--hard-negatives", type=int, help="per click, mined from the current index each epoch")
    s.add_argument("--hard-ranks", type=int, nargs=2, metavar=("LO", "HI"), help="ranks hard negatives come from")
    s.add_argument("--recall-k", type=int, nargs="+", help="cut-offs of the recall report (default 10 50 100)")
    s.add_argument("--patience", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--max-steps", type=int)
    s.set_defaults(func=_cmd_train_retrieval)

    s = sub.add_parser("index", help="index a catalogue with a retrieval bundle's item tower (FAISS)")
    s.add_argument("--bundle", required=True, help="retrieval bundle directory")
    s.add_argument("--items", default=None, help="catalogue file (Parquet/CSV; default: the bundle's catalogue)")
    s.add_argument("--kind", required=True, choices=["flat-ip", "hnsw-ip", "mobius-hnsw", "ivfpq-ip", "auto"])
    s.add_argument("--out", default=None, help="index directory (default: BUNDLE/index)")
    s.add_argument("--queries", default=None, help="auto: held-out queries, a prepared dataset (test split) or "
                   ".npy of user vectors (default: the bundle's training dataset)")
    s.add_argument("--target", type=float, default=0.95, help="auto: recall@k the index must reach")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--ef-search", type=int, default=None, help="default efSearch of the graph kinds")
    s.add_argument("--nprobe", type=int, default=None, help="default nprobe of ivfpq-ip")
    s.add_argument("--allow-unknown-items", action="store_true",
                   help="index items whose id the model never saw (by their other features)")
    _add_index_build_args(s)
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("serve", help="run the /rank service on a bundle under uvicorn")
    s.add_argument("--bundle", required=True)
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "onnxruntime-int8", "torch", "fused", "tvm"])
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    s.add_argument("--retrieval", default=None, help="a retrieval bundle with its index: also serve POST /recommend")
    s.add_argument("--log-level", default="info")
    s.add_argument("--read-timeout", type=float, default=None,
                   help="seconds a client has to send a request's headers, and then its body (default 10, "
                   "or CTRZOO_READ_TIMEOUT_S); slower clients get a 408 or a closed connection")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("tune", help="tune the tvm backend's kernels for a bundle (MetaSchedule; extra: tvm)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--trials", type=int, default=2000, help="measured schedules, in total")
    s.add_argument("--minutes", type=float, default=10.0, help="time budget, in total")
    s.add_argument("--buckets", type=int, nargs="+", default=None, metavar="BATCH",
                   help="batch sizes compiled (default: 1 16 128 1024); other batches are padded or split")
    s.add_argument("--focus", type=int, nargs="+", default=[], metavar="BATCH",
                   help="batch sizes that matter most: the buckets serving them get 4x the tuning weight")
    s.set_defaults(func=_cmd_tune)

    s = sub.add_parser("demo", help="the main job end to end on built-in synthetic data")
    s.add_argument("--out", default="demo")
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=2)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CtrzooError as exc:
        print(f"ctrzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk fault in a write not wrapped closer to it: still one line, not a traceback
        from ctrzoo.atomic import disk_reason

        reason = disk_reason(exc)
        if reason is None:
            raise
        print(f"ctrzoo {args.command}: error: {reason}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctrzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
