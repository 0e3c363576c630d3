"""The ``ctrzoo`` command line: one subcommand per job; it parses the arguments and calls the library.

Choices come from the library's registries (dataset formats, models, backends, index kinds), read on
first use so that ``ctrzoo --help`` and ``ctrzoo info`` do not import torch. List options take their
values space- or comma-separated (``--backends torch,onnxruntime``, ``--mlp 400 400``, ``--mlp "400 400"``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ctrzoo
from ctrzoo.errors import CtrzooError


class Registry(Sequence[str]):
    """The names of a library registry (``module.attr``: a collection, or a function returning one), read
    each time argparse checks or lists them (so never at import, and models registered later count);
    ``extra`` names are accepted too."""

    def __init__(self, module: str, attr: str, extra: tuple[str, ...] = ()):
        self.module, self.attr, self.extra = module, attr, extra

    def names(self) -> tuple[str, ...]:
        value = getattr(importlib.import_module(self.module), self.attr)
        return (*(value() if callable(value) else value), *self.extra)

    def __getitem__(self, i):
        return self.names()[i]

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __str__(self) -> str:
        return ", ".join(self.names())


class AliasMap(Registry):
    """``alias=name`` pairs of a library alias map (``module.attr()`` -> dict), read when shown."""

    def names(self) -> tuple[str, ...]:
        aliases = getattr(importlib.import_module(self.module), self.attr)()
        return tuple(f"{alias}={name}" for alias, name in aliases.items())


def model_name(text: str) -> str:
    """``--model``'s type: the registered name ``text`` stands for (an alias, other case, ``-`` for ``_``); an
    unknown name is passed on unchanged so that argparse's choices check lists the models."""
    from ctrzoo.models import resolve_model_name

    try:
        return resolve_model_name(text)
    except CtrzooError:
        return text


class ModelChoice(argparse.Action):
    """``--model NAME``: a registered model or an alias of one, stored as the registered name (what a bundle
    records); ``%(choices)s`` and ``%(aliases)s`` in its help list both, read from the registry when shown."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, type=model_name, choices=MODELS, **kwargs)
        self.aliases = MODEL_ALIASES

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)


FORMATS = Registry("ctrzoo.data.formats", "FORMATS")
SYNTH_KINDS = Registry("ctrzoo.synth", "KINDS")
SPLITS = Registry("ctrzoo.data.splits", "SPLITS")
MODELS = Registry("ctrzoo.models", "list_models")
MODEL_ALIASES = AliasMap("ctrzoo.models", "list_aliases")
BACKENDS = Registry("ctrzoo.runtime", "BACKENDS")
INDEX_KINDS = Registry("ctrzoo.retrieval.index", "KINDS")
INDEX_KINDS_AUTO = Registry("ctrzoo.retrieval.index", "KINDS", extra=("auto",))  # ctrzoo index measures, picks
NORMALIZE = Registry("ctrzoo.retrieval.towers", "NORMALIZE")
DEFAULT_RATIOS = [0.8, 0.1, 0.1]  # prepare --ratios when not given (then the schema's split applies)


class ListOf(argparse.Action):
    """A list option: ``--x a b``, ``--x a,b`` and ``--x "a b"`` all give ``[a, b]``.

    ``item`` converts each value, ``known`` (a ``Registry`` or a sequence) restricts them, ``count`` fixes
    how many there are; ``allow_empty`` lets ``--x ""`` mean an empty list. In help texts ``%(known)s``
    lists the known values.
    """

    def __init__(self, option_strings, dest, item: Callable[[str], object] = str, known: Sequence[str] | None = None,
                 count: int | None = None, allow_empty: bool = False, nargs="+", **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.item, self.known, self.count, self.allow_empty = item, known, count, allow_empty

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out = []
        for text in (p for v in values for p in re.split(r"[\s,]+", v) if p):
            try:
                value = self.item(text)
            except ValueError:
                raise argparse.ArgumentError(self, f"invalid {getattr(self.item, '__name__', 'value')} value: "
                                                   f"{text!r}") from None
            if self.known is not None and value not in self.known:
                raise argparse.ArgumentError(self, f"invalid choice: {text!r} (choose from "
                                                   f"{', '.join(map(repr, self.known))})")
            out.append(value)
        if self.count is not None and len(out) != self.count:
            raise argparse.ArgumentError(self, f"expected {self.count} values, got {len(out)}")
        if not out and not self.allow_empty:
            raise argparse.ArgumentError(self, "expected at least one value")
        setattr(namespace, self.dest, out)


def _cmd_synth(args: argparse.Namespace) -> None:
    from ctrzoo.synth import generate

    summary = generate(args.kind, args.rows, args.seed, args.out, progress=sys.stderr.isatty(),
                       conversions=args.conversions)
    print(f"wrote {summary['rows']} {args.kind} rows to {args.out}: base CTR {summary['base_ctr']:.4f}, "
          f"oracle AUC {summary['oracle_auc']:.4f}, oracle logloss {summary['oracle_logloss']:.4f}")
    if args.conversions:
        conv = summary["conversion"]
        print(f"conversions: rate {conv['rate']:.4f} ({conv['rate_among_clicks'] or 0.0:.4f} of clicks), "
              f"oracle AUC {conv['oracle_auc'] or float('nan'):.4f}, oracle logloss {conv['oracle_logloss']:.4f}; "
              f"schema {args.out}.schema.yaml (ctrzoo prepare --schema {args.out}.schema.yaml --input {args.out} "
              "--out DIR)")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ctrzoo.data.prepare import PrepareOptions, prepare
    from ctrzoo.data.presets import load_preset
    from ctrzoo.data.schema import load_schema
    from ctrzoo.data.splits import SplitConfig
    from ctrzoo.data.summary import format_summary
    from ctrzoo.features.spec_file import load_spec_file, with_overrides

    if (args.kind is None) == (args.schema is None):
        raise CtrzooError("give a built-in format (criteo, avazu, taobao) or --schema FILE, not both"
                          if args.kind else "give a built-in format (criteo, avazu, taobao) or --schema FILE")
    schema = load_schema(args.schema) if args.schema else load_preset(args.kind)  # checked before any data is read
    spec = load_spec_file(args.spec) if args.spec else schema.feature_spec()
    spec = with_overrides(spec, drop=args.drop, min_count=args.min_count, max_vocab=args.max_vocab,
                          hash_overflow=args.hash_overflow)
    split = None  # the schema's, unless the command line says otherwise (the default list is never a given one)
    ratios_given = args.ratios is not DEFAULT_RATIOS
    if args.split or ratios_given or args.seed is not None:
        base = schema.split if schema.split is not None and schema.split.method != "time" else SplitConfig()
        split = SplitConfig(args.split or base.method, tuple(args.ratios if ratios_given else base.ratios),
                            base.seed if args.seed is None else args.seed)
    opts = PrepareOptions(
        split=split,
        strict=args.strict,
        block_bytes=int(args.block_mb * (1 << 20)),
        max_line_bytes=int(args.max_line_mb * (1 << 20)),
        keep_raw_test=not args.no_raw,
        workers=args.workers,
    )
    meta = prepare(schema, args.input, args.out, spec, opts)
    print(f"prepared {args.out} in {meta.seconds:.1f}s")
    print(format_summary(args.out))
    for warning in meta.warnings:
        print(f"ctrzoo prepare: warning: {warning}", file=sys.stderr)


def _cmd_schema(args: argparse.Namespace) -> None:
    if args.action == "infer":
        from ctrzoo.data.infer import format_table, infer_schema, write_schema

        if not args.input or not args.label or not args.out:
            raise CtrzooError("schema infer needs --input, --label and --out")
        result = infer_schema(args.input, args.label, positive=args.positive, user=args.user, time=args.time,
                              sample_rows=args.sample_rows)
        print(format_table(result))
        write_schema(result, args.out)
        print(f"wrote {args.out}: check it, then `ctrzoo prepare --schema {args.out} --input ... --out DIR`")
        return
    from ctrzoo.data.inputs import plan_inputs
    from ctrzoo.data.presets import load_preset
    from ctrzoo.data.schema import load_schema

    if (args.file is None) == (args.preset is None):
        raise CtrzooError(f"schema {args.action}: give a schema FILE or --preset NAME")
    schema = load_schema(args.file) if args.file else load_preset(args.preset)
    if args.action == "show":
        import yaml

        print(yaml.safe_dump(schema.to_dict(), sort_keys=False, width=120, default_flow_style=None), end="")
        return
    if args.input:
        plan = plan_inputs(schema, args.input)
        print(f"{args.file or args.preset}: valid; its columns are in {len(plan.files)} input file(s)")
    else:
        print(f"{args.file or args.preset}: valid ({len(schema.labels)} label(s), {len(schema.features)} features)")


def _cmd_info(args: argparse.Namespace) -> None:
    from ctrzoo.info import describe, metadata, verify

    if args.verify:
        print(verify(args.path, report=print))
    print(json.dumps(metadata(args.path), indent=1) if args.json else describe(args.path))


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    overrides = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "regularization": args.reg, "reg_lambda": args.reg_lambda, "patience": args.patience,
        "checkpoint_every": args.checkpoint_every, "threads": args.threads, "max_steps": args.max_steps,
        "bf16": args.bf16, "device": args.device, "label": args.label,
        "sparse_updates": False if args.dense_updates else None,
        "shard_embeddings": True if args.shard_embeddings else None, "shard_lr": args.shard_lr,
        "hparams": {k: v for k, v in {"emb_dim": args.emb_dim, "mlp": args.mlp, "dropout": args.dropout}.items()
                    if v is not None},
    }
    if args.shard_embeddings:  # refused before torchrun starts N processes that would each fail
        from ctrzoo.train.sharded import require_torchrec

        if args.nproc < 2 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise CtrzooError("--shard-embeddings splits the table over several processes: add --nproc N (N >= 2)")
        require_torchrec()
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from ctrzoo.data.dataset import PreparedDataset
        from ctrzoo.train.config import resolve_config
        from ctrzoo.train.distributed import relaunch_with_torchrun

        # the settings are checked here, once, before N processes start and each fails the same way
        resolve_config(args.model, PreparedDataset.open(args.data).meta.kind, args.config, dict(overrides))
        argv = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
        if "--nproc" in sys.argv[1:]:  # drop the value that followed "--nproc"
            i = sys.argv[1:].index("--nproc")
            argv = sys.argv[1:][:i] + sys.argv[1:][i + 2:]
        code = relaunch_with_torchrun(argv, args.nproc)
        if code:
            raise CtrzooError(f"distributed training failed (torchrun exit code {code})")
        return
    from ctrzoo.train.run import train_bundle

    train_bundle(args.model, args.data, args.out, args.config, overrides, resume=args.resume)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.devices import resolve_device
    from ctrzoo.evaluate import evaluate_bundle
    from ctrzoo.train.run import format_auc

    resolve_device(args.device)  # a missing GPU: one line, before anything is read
    bundle = load_bundle(args.bundle)
    m = evaluate_bundle(bundle, PreparedDataset.open(args.data), args.split, device=args.device)
    line = (f"{bundle.model_name} on {args.split} ({m['rows']:,d} rows): {format_auc(m, args.split)}  "
            f"logloss {m['logloss']:.4f}")
    if "gauc" in m:
        line += f"  GAUC {m['gauc']:.4f} ({m['gauc_users']} users, {m['gauc_users_skipped']} one-class users skipped)"
    for task, t in m.get("tasks", {}).items():  # a multi-task bundle: each task's own line
        line += f"\n  task {task}: {format_auc(t, args.split)}  logloss {t['logloss']:.4f}"
    print(line)
    if args.json:
        print(json.dumps(m))


def _cmd_compare(args: argparse.Namespace) -> None:
    from ctrzoo.compare import compare, write_report

    report = compare(args.bundles, args.data, args.split, args.baseline, args.slice_by, args.bootstrap, args.seed,
                     device=args.device)
    out = write_report(report, args.report)
    for v in report["verdicts"]:
        print(v)
    print(f"report: {out / 'report.html'} (also report.md, report.json)")


def _cmd_export(args: argparse.Namespace) -> None:
    from ctrzoo.export import export_onnx

    record = export_onnx(args.bundle)
    print(f"wrote {Path(args.bundle) / record.file} (opset {record.opset}; onnxruntime vs torch max |diff| "
          f"{record.parity_max_abs_diff:.1e}; golden rows max |diff| {record.golden_max_abs_diff:.1e})")


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
    from ctrzoo.retrieval.bench import bench_inputs, bench_vectors, format_builds, format_table, goals, write_report

    items, queries, select, title = bench_inputs(args.bundle, args.synthetic, args.queries, args.queries_n, args.seed)
    result = bench_vectors(items, queries, select, k=args.k, kinds=args.kinds or list(INDEX_KINDS),
                           params=_index_params(args), targets=args.targets, log=print)
    result["goals"] = goals(result)
    result["title"] = title
    print(format_table(result))
    print(format_builds(result))
    if args.out:
        md = write_report(result, args.out, title)
        print(f"wrote {md}, retrieval.json, retrieval.png")
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
             "seed": args.seed, "threads": args.threads, "max_steps": args.max_steps, "patience": args.patience,
             "device": args.device}
    cfg = RetrievalConfig(**{k: v for k, v in given.items() if v is not None}, logq=not args.no_logq)
    train_retrieval(args.data, args.out, split, cfg)


def _cmd_index(args: argparse.Namespace) -> None:
    from ctrzoo.retrieval.retriever import index_catalogue

    index_catalogue(args.bundle, args.kind, args.items, args.out, args.queries, _index_params(args),
                    target=args.target, k=args.k, allow_unknown=args.allow_unknown_items)


def _json_option(text: str | None, option: str) -> object:
    """The JSON value of ``option`` (None when not given); a CtrzooError naming the option when it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CtrzooError(f"{option}: not valid JSON ({exc}), got {text!r}") from None


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
    from serving.settings import ServeSettings
    from serving.tasks import task_ranking

    # a bad CTRZOO_* value is one line here (nothing set yet), not a failure inside every worker
    settings = ServeSettings.from_env(bundle=str(bundle.path), backend=args.backend, threads=args.threads or None,
                                      read_timeout_s=args.read_timeout, rank_by=args.rank_by,
                                      task_weights=_json_option(args.task_weights, "--task-weights"))
    task_ranking(bundle.tasks, settings.rank_by, settings.task_weights, f"{bundle.path} (model {bundle.model_name!r})")
    from ctrzoo.runtime.base import SINGLE_TASK_ONLY, require_single_task

    if args.backend in SINGLE_TASK_ONLY:
        require_single_task(bundle, args.backend)
    # workers are separate processes: they read their settings from the environment
    os.environ["CTRZOO_BUNDLE"] = str(Path(args.bundle).resolve())
    os.environ["CTRZOO_BACKEND"] = args.backend
    if args.threads:
        os.environ["CTRZOO_THREADS"] = str(args.threads)
    if args.retrieval:
        os.environ["CTRZOO_RETRIEVAL"] = str(Path(args.retrieval).resolve())
    if args.read_timeout is not None:
        os.environ["CTRZOO_READ_TIMEOUT_S"] = str(args.read_timeout)
    if args.rank_by is not None:
        os.environ["CTRZOO_RANK_BY"] = args.rank_by
    if args.task_weights is not None:
        os.environ["CTRZOO_TASK_WEIGHTS"] = args.task_weights
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
    p = argparse.ArgumentParser(prog="ctrzoo", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"%(prog)s {ctrzoo.__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one job each:")

    s = sub.add_parser("synth", help="write synthetic raw logs with known click probabilities")
    s.add_argument("kind", choices=SYNTH_KINDS, metavar="FORMAT", help="raw format to write: %(choices)s")
    s.add_argument("--rows", type=int, default=100_000, help="rows to write (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same rows)")
    s.add_argument("--out", required=True, help="raw file to write (.gz to compress)")
    s.add_argument("--conversions", action="store_true",
                   help="add a conversion label (only after a click) as the last column, and OUT.schema.yaml "
                   "that prepares it as a second label")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("prepare", help="raw logs -> prepared dataset (spec + Parquet shards)")
    s.add_argument("kind", nargs="?", choices=FORMATS, metavar="FORMAT",
                   help="a built-in format of the input: %(choices)s (or --schema)")
    s.add_argument("--schema", default=None, help="a dataset schema (YAML): how to read your own logs "
                   "(`ctrzoo schema infer` writes one)")
    s.add_argument("--input", nargs="+", required=True,
                   help="raw file(s) or directories of part files, space-separated (file names may hold commas); "
                   ".gz is read transparently")
    s.add_argument("--out", required=True, help="dataset directory (replaced atomically)")
    s.add_argument("--split", choices=["random", "order"], default=None,
                   help="random: hashed per line with --seed; order: the last fractions (time-ordered logs); "
                   "default: the schema's split, else random (a split by time is set in the schema)")
    s.add_argument("--ratios", action=ListOf, item=float, count=3, default=DEFAULT_RATIOS, metavar="RATIO",
                   help="train, valid and test fractions (default 0.8 0.1 0.1, or 0.8,0.1,0.1)")
    s.add_argument("--seed", type=int, default=None, help="seed of the random split (default 2024)")
    s.add_argument("--strict", action="store_true", help="fail at the first bad row instead of skipping it")
    s.add_argument("--min-count", type=int, default=None, help="override every categorical feature's min count")
    s.add_argument("--drop", action=ListOf, default=None, metavar="FEATURE", help="leave these features out")
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

    s = sub.add_parser("schema", help="dataset schemas: infer one from your logs, check or show one")
    s.add_argument("action", choices=["infer", "check", "show"],
                   help="infer: propose a schema from a sample of --input; check: load FILE (and resolve its "
                   "columns in --input); show: print FILE or --preset NAME as the schema reads it")
    s.add_argument("file", nargs="?", default=None, help="check, show: the schema file")
    s.add_argument("--preset", default=None, choices=FORMATS, metavar="FORMAT",
                   help="check, show: a built-in format's schema: %(choices)s")
    s.add_argument("--input", nargs="+", default=None, help="raw file(s) or directories (infer reads a sample)")
    s.add_argument("--label", default=None, help="infer: the label column")
    s.add_argument("--positive", default=None,
                   help="infer: the value that means a click (e.g. 'yes'), or a comparison such as '>=4'; "
                   "default: the label column holds 0/1")
    s.add_argument("--user", default=None, help="infer: the user id column (GAUC)")
    s.add_argument("--time", default=None,
                   help="infer: the time column: split by time (the last 10%% valid, then 10%% test) and derive "
                   "hour and weekday features")
    s.add_argument("--sample-rows", type=int, default=50_000, help="infer: rows read (default %(default)s)")
    s.add_argument("--out", default=None, help="infer: the schema file to write")
    s.set_defaults(func=_cmd_schema)

    s = sub.add_parser("info", help="summary of a prepared dataset, a model bundle or a retrieval bundle")
    s.add_argument("path", help="a prepared dataset or a (retrieval) bundle directory")
    s.add_argument("--json", action="store_true", help="print its metadata (dataset.json or bundle.json) as JSON")
    s.add_argument("--verify", action="store_true",
                   help="dataset: read every shard and the raw test file back, check row counts; bundle: every "
                   "file against the manifest and the golden rows through torch (slow; exit 2 if damaged)")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("train", help="train a model on a prepared dataset and write a bundle")
    s.add_argument("--model", required=True, action=ModelChoice, metavar="MODEL",
                   help="the model: %(choices)s; aliases: %(aliases)s")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--config", default=None, help="YAML with 'train:' settings and 'models: {NAME: hparams}'")
    s.add_argument("--epochs", type=int, help="most epochs (early stopping may stop sooner)")
    s.add_argument("--batch-size", type=int, help="rows per training step")
    s.add_argument("--lr", type=float, help="learning rate (Adam)")
    s.add_argument("--emb-dim", type=int, help="embedding size of every feature")
    s.add_argument("--mlp", action=ListOf, item=int, metavar="SIZE", help="hidden sizes, e.g. 400,400,400")
    s.add_argument("--dropout", type=float, help="dropout of the MLP layers")
    s.add_argument("--seed", type=int, help="random seed (weights, shuffling)")
    s.add_argument("--reg", choices=["none", "l2", "mba"], help="embedding regularization")
    s.add_argument("--reg-lambda", type=float, help="strength of --reg")
    s.add_argument("--patience", type=int, help="epochs without validation AUC gain before stopping")
    s.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: each epoch)")
    s.add_argument("--resume", action="store_true", help="continue from OUT.work/checkpoint.pt")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    s.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the matmuls while training "
                   "(default: on where the CPU has AVX512-BF16 or AMX)")
    s.add_argument("--dense-updates", action="store_true", help="dense Adam on embeddings instead of row-sparse Adam")
    s.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    s.add_argument("--label", default=None,
                   help="which of the dataset's labels to learn (default: the first; `ctrzoo info DATA` lists them)")
    s.add_argument("--nproc", type=int, default=1,
                   help="training processes on this machine (torchrun; gloo on CPU, nccl on GPU)")
    s.add_argument("--shard-embeddings", action="store_true",
                   help="split the embedding table row-wise over the --nproc processes with TorchRec (CPU, gloo; "
                   "the table then trains with row-wise Adagrad; needs the torchrec extra)")
    s.add_argument("--shard-lr", type=float,
                   help="learning rate of the sharded table's row-wise Adagrad (default 0.01)")
    _add_device_arg(s, "train on")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="AUC, logloss and GAUC of a bundle on a prepared split")
    s.add_argument("--bundle", required=True, help="model bundle directory")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--split", default="test", choices=SPLITS, metavar="SPLIT", help="%(choices)s (default test)")
    s.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    _add_device_arg(s, "score on (fp32)")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("compare", help="A/B comparison of bundles on the same rows, with significance")
    s.add_argument("bundles", nargs="+", help="two or more bundle directories")
    s.add_argument("--data", required=True, help="the prepared dataset the bundles were trained from")
    s.add_argument("--split", default="test", choices=SPLITS, metavar="SPLIT", help="%(choices)s (default test)")
    s.add_argument("--baseline", default=None, help="bundle to compare the others with (default: the first)")
    s.add_argument("--slice-by", default=None, help="raw field for per-slice AUC (e.g. C1, pid)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for logloss and GAUC")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    s.add_argument("--report", required=True, help="output directory for report.{json,md,html}")
    _add_device_arg(s, "score on (fp32)")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("export", help="write model.onnx into a bundle (checked against torch)")
    s.add_argument("--bundle", required=True, help="model bundle directory (model.onnx is added to it)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", help="benchmarks: `ctrzoo bench inference --bundle B`, `ctrzoo bench retrieval ...`")
    s.add_argument("what", choices=["inference", "retrieval"],
                   help="inference: latency of a model bundle per backend; retrieval: recall vs QPS per index kind")
    s.add_argument("--bundle", help="inference: a model bundle; retrieval: a retrieval bundle")
    s.add_argument("--backends", action=ListOf, known=BACKENDS, default=None, metavar="BACKEND",
                   help="inference: backends to time, of %(known)s (default torch onnxruntime fused; fused "
                   "skipped for a multi-task bundle)")
    s.add_argument("--batch-sizes", action=ListOf, item=int, default=[1, 100, 1024], metavar="N",
                   help="inference: batch sizes (default 1 100 1024)")
    s.add_argument("--seconds", type=float, default=1.0, help="time per (backend, batch size)")
    s.add_argument("--threads", type=int, default=None, help="inference: threads per backend")
    s.add_argument("--json", action="store_true", help="also print the results as JSON")
    g = s.add_argument_group("retrieval", "recall@k vs QPS per index kind (efSearch / nprobe sweeps), auto's picks")
    g.add_argument("--synthetic", type=int, default=None, metavar="N_ITEMS",
                   help="popularity-skewed vectors (factorized Zipf clicks) instead of a bundle's catalogue")
    g.add_argument("--queries", default=None, help="prepared dataset (its test split) or .npy of user vectors")
    g.add_argument("--queries-n", type=int, default=2000, help="evaluation queries (as many again select auto's)")
    g.add_argument("--kinds", action=ListOf, known=INDEX_KINDS, default=None, metavar="KIND",
                   help="index kinds to measure, of %(known)s (default: all)")
    g.add_argument("--k", type=int, default=10, help="recall@k and results per query")
    g.add_argument("--targets", action=ListOf, item=float, default=[0.9, 0.95, 0.99], metavar="RECALL",
                   help="auto's recall targets (default 0.9 0.95 0.99)")
    g.add_argument("--out", default=None, help="directory for retrieval.md, retrieval.json, retrieval.png")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors and the query sample")
    _add_index_build_args(g)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("train-retrieval", help="train the two-tower retrieval model and write a retrieval bundle")
    s.add_argument("--data", required=True, help="prepared dataset directory (clicked rows are the positives)")
    s.add_argument("--out", required=True, help="retrieval bundle directory to write")
    s.add_argument("--item-features", action=ListOf, default=None, metavar="FEATURE",
                   help="features of the item tower (default for taobao: the ad's fields)")
    s.add_argument("--item-id", default=None, help="the item tower feature naming the item (default: the first)")
    s.add_argument("--user-features", action=ListOf, default=None, metavar="FEATURE",
                   help="features of the user/context tower (default: every other feature)")
    s.add_argument("--history-attributes", action=ListOf, default=None, metavar="FEATURE",
                   help="item features also pooled over the user's history (e.g. cate_id)")
    s.add_argument("--epochs", type=int, help="most epochs (early stopping on valid recall may stop sooner)")
    s.add_argument("--batch-size", type=int, help="clicks per batch (each one's negatives are the others)")
    s.add_argument("--lr", type=float, help="learning rate")
    s.add_argument("--emb-dim", type=int, help="embedding size of every feature")
    s.add_argument("--hidden", action=ListOf, item=int, allow_empty=True, metavar="SIZE",
                   help="tower MLP sizes, e.g. 128 (\"\" for none)")
    s.add_argument("--out-dim", type=int, help="vector size")
    s.add_argument("--normalize", choices=NORMALIZE, metavar="WHICH",
                   help="which tower's vectors are L2-normalized: %(choices)s")
    s.add_argument("--temperature", type=float, help="softmax temperature of the logits")
    s.add_argument("--no-logq", action="store_true", help="no sampling-bias correction of in-batch negatives")
    s.add_argument("--random-negatives", type=int, help="uniform catalogue negatives added to each batch")
    s.add_argument("--hard-negatives", type=int, help="per click, mined from the current index each epoch")
    s.add_argument("--hard-ranks", action=ListOf, item=int, count=2, metavar="RANK",
                   help="the ranks LO HI hard negatives come from")
    s.add_argument("--recall-k", action=ListOf, item=int, metavar="K",
                   help="cut-offs of the recall report (default 10 50 100)")
    s.add_argument("--patience", type=int, help="epochs without valid recall gain before stopping")
    s.add_argument("--seed", type=int, help="random seed")
    s.add_argument("--threads", type=int, help="torch threads while training")
    s.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    _add_device_arg(s, "train on")
    s.set_defaults(func=_cmd_train_retrieval)

    s = sub.add_parser("index", help="index a catalogue with a retrieval bundle's item tower (FAISS)")
    s.add_argument("--bundle", required=True, help="retrieval bundle directory")
    s.add_argument("--items", default=None, help="catalogue file (Parquet/CSV; default: the bundle's catalogue)")
    s.add_argument("--kind", required=True, choices=INDEX_KINDS_AUTO,
                   metavar="KIND", help="index kind: %(choices)s (auto: measure them, keep the fastest at --target)")
    s.add_argument("--out", default=None, help="index directory (default: BUNDLE/index)")
    s.add_argument("--queries", default=None, help="auto: held-out queries, a prepared dataset (test split) or "
                   ".npy of user vectors (default: the bundle's training dataset)")
    s.add_argument("--target", type=float, default=0.95, help="auto: recall@k the index must reach")
    s.add_argument("--k", type=int, default=10, help="auto: the k of recall@k")
    s.add_argument("--ef-search", type=int, default=None, help="default efSearch of the graph kinds")
    s.add_argument("--nprobe", type=int, default=None, help="default nprobe of ivfpq-ip")
    s.add_argument("--allow-unknown-items", action="store_true",
                   help="index items whose id the model never saw (by their other features)")
    _add_index_build_args(s)
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("serve", help="run the /rank service on a bundle under uvicorn")
    s.add_argument("--bundle", required=True, help="model bundle directory (or a root of versioned bundles)")
    s.add_argument("--backend", default="onnxruntime", choices=BACKENDS, metavar="BACKEND",
                   help="inference backend: %(choices)s (default onnxruntime)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    s.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    s.add_argument("--retrieval", default=None, help="a retrieval bundle with its index: also serve POST /recommend")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    s.add_argument("--read-timeout", type=float, default=None,
                   help="seconds a client has to send a request's headers, and then its body (default 10, "
                   "or CTRZOO_READ_TIMEOUT_S); slower clients get a 408 or a closed connection")
    s.add_argument("--rank-by", default=None, metavar="TASK",
                   help="multi-task bundles: the task /rank orders by (default its first; or CTRZOO_RANK_BY)")
    s.add_argument("--task-weights", default=None, metavar="JSON",
                   help="multi-task bundles: order by a weighted sum of the tasks' probabilities, e.g. "
                   "'{\"click\": 1, \"converted\": 4}' (or CTRZOO_TASK_WEIGHTS); not with --rank-by")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("tune", help="tune the tvm backend's kernels for a bundle (MetaSchedule; extra: tvm)")
    s.add_argument("--bundle", required=True, help="exported model bundle directory (tvm/ is written into it)")
    s.add_argument("--trials", type=int, default=2000, help="measured schedules, in total")
    s.add_argument("--minutes", type=float, default=10.0, help="time budget, in total")
    s.add_argument("--buckets", action=ListOf, item=int, default=None, metavar="BATCH",
                   help="batch sizes compiled (default: 1 16 128 1024); other batches are padded or split")
    s.add_argument("--focus", action=ListOf, item=int, default=[], metavar="BATCH",
                   help="batch sizes that matter most: the buckets serving them get 4x the tuning weight")
    s.set_defaults(func=_cmd_tune)

    s = sub.add_parser("demo", help="the main job end to end on built-in synthetic data")
    s.add_argument("--out", default="demo", help="directory for the raw logs, datasets and bundles")
    s.add_argument("--rows", type=int, default=200_000, help="rows per synthetic log")
    s.add_argument("--seed", type=int, default=0, help="random seed of the logs")
    s.add_argument("--epochs", type=int, default=2, help="most epochs per model")
    s.set_defaults(func=_cmd_demo)
    return p


def _add_device_arg(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--device", default="auto", metavar="DEVICE",
                   help=f"where to {what}: auto (a GPU when there is one), cpu, cuda or cuda:N (default auto)")


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
