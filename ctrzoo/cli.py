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
        keep_raw_test=not args.no_raw,
        workers=args.workers,
    )
    meta = prepare(args.kind, args.input, args.out, spec, opts)
    print(f"prepared {args.out} in {meta['seconds']:.1f}s")
    print(format_summary(args.out))


def format_summary(path: str | Path) -> str:
    from ctrzoo.data.dataset import PreparedDataset

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
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> None:
    if args.json:
        from ctrzoo.data.dataset import PreparedDataset

        print(json.dumps(PreparedDataset.open(args.path).meta, indent=1))
    else:
        print(format_summary(args.path))


def _cmd_train(args: argparse.Namespace) -> None:
    from ctrzoo.train.run import train_bundle

    overrides = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "regularization": args.reg, "reg_lambda": args.reg_lambda, "patience": args.patience,
        "checkpoint_every": args.checkpoint_every, "threads": args.threads, "max_steps": args.max_steps,
        "bf16": True if args.bf16 else None,
        "sparse_updates": False if args.dense_updates else None,
        "hparams": {k: v for k, v in {"emb_dim": args.emb_dim, "mlp": args.mlp, "dropout": args.dropout}.items()
                    if v is not None},
    }
    train_bundle(args.model, args.data, args.out, args.config, overrides, resume=args.resume)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.evaluate import evaluate_bundle

    bundle = load_bundle(args.bundle)
    m = evaluate_bundle(bundle, PreparedDataset.open(args.data), args.split)
    line = f"{bundle.model_name} on {args.split} ({m['rows']:,d} rows): AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}"
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
          f"{record['parity_max_abs_diff']:.1e})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from ctrzoo.runtime.bench import bench_inference, format_table

    rows = bench_inference(args.bundle, args.backends, args.batch_sizes, args.seconds, threads=args.threads)
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows))


def _cmd_serve(args: argparse.Namespace) -> None:
    import os

    try:
        import uvicorn
    except ImportError:
        raise CtrzooError("serving needs its extra: pip install 'ctrzoo[serving]'") from None
    from ctrzoo.bundle import load_bundle

    load_bundle(args.bundle)  # fail here, clearly, before starting workers
    # workers are separate processes: they read their settings from the environment
    os.environ["CTRZOO_BUNDLE"] = str(Path(args.bundle).resolve())
    os.environ["CTRZOO_BACKEND"] = args.backend
    if args.threads:
        os.environ["CTRZOO_THREADS"] = str(args.threads)
    uvicorn.run("serving.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False)


def _cmd_demo(args: argparse.Namespace) -> None:
    from ctrzoo.demo import run_demo

    run_demo(Path(args.out), rows=args.rows, seed=args.seed, epochs=args.epochs)


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
    s.add_argument("--workers", type=int, default=1, help="processes; each input file is one unit of work")
    s.add_argument("--max-vocab", type=int, default=None, help="cap every vocabulary at this many values")
    s.add_argument("--hash-overflow", action="store_true",
                   help="with --max-vocab: hash fields whose vocabulary would exceed it, instead of truncating")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("info", help="summary of a prepared dataset")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
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
    s.add_argument("--bf16", action="store_true", help="bf16 autocast for the matmuls (AVX512-BF16 CPUs)")
    s.add_argument("--dense-updates", action="store_true", help="dense Adam on embeddings instead of SparseAdam")
    s.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
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

    s = sub.add_parser("bench", help="benchmarks: `ctrzoo bench inference --bundle B`")
    s.add_argument("what", choices=["inference"])
    s.add_argument("--bundle", required=True)
    s.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "fused"])
    s.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100, 1024])
    s.add_argument("--seconds", type=float, default=1.0, help="time per (backend, batch size)")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("serve", help="run the /rank service on a bundle under uvicorn")
    s.add_argument("--bundle", required=True)
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "fused", "tvm"])
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_cmd_serve)

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
    except KeyboardInterrupt:
        print(f"ctrzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
