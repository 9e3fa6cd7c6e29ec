"""The `ssast` command. Thin: parse arguments, then call library functions; user errors end in one clear line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssast import __version__
from ssast.config import PRECISIONS

HELP_OVERWRITE = "replace an existing output made from another source (by default only a rerun's own output is replaced)"
EPILOG_OVERRIDES = ("Dotted overrides, before or after the options, set any config key, "
                    "e.g. optim.lr=2e-4 data.batch_size=12.")


def _load(args, task: str | None = None):
    from ssast.config import load_config

    return load_config(args.config, args.overrides, task=task)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (only what differs from the defaults)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(positionals="overrides")


def _model_summary(cfg) -> str:
    from ssast.models.tokenizer import grid_shape

    m = cfg.model
    f, t = grid_shape(m.input_fdim, m.input_tdim, m.fshape, m.tshape, m.fstride, m.tstride)
    if cfg.task == "pretrain":
        from ssast.models.pretrain import build_pretrain_model

        model = build_pretrain_model(cfg.model)
    else:
        from ssast.models.classifier import SSASTClassifier

        model = SSASTClassifier(cfg.model, max(cfg.model.num_classes, 1))
    params = sum(p.numel() for p in model.parameters())
    return (f"model: {m.size} dim {m.dim} depth {m.depth} heads {m.heads}; patch {m.fshape}x{m.tshape} stride "
            f"{m.fstride}x{m.tstride}; grid {f}x{t} = {f * t} tokens + {m.num_prefix} prefix; {params / 1e6:.2f}M parameters")


def cmd_train(args) -> int:
    from ssast.atomic import check_output
    from ssast.config import ConfigError, check_length, dump_config, load_config
    from ssast.evaluate.probe import TrainingProbe
    from ssast.train.engine import train
    from ssast.train.runtime import resolve_device

    if args.resume and args.overwrite:
        raise ConfigError(f"--resume and --overwrite: --resume continues {args.resume}, --overwrite replaces a run; "
                          "give one of them")

    resume, overwrite = args.resume, args.overwrite
    if resume == "auto":  # resume train.run_dir when it holds a checkpoint of this same run, else start it
        from ssast.train.checkpoints import auto_resume

        cfg = _load(args, task=args.command)
        found = auto_resume(Path(cfg.train.run_dir), cfg)
        resume = str(found) if found else None
        # this same run stopped before its first checkpoint: nothing to resume, and only its own start to replace
        overwrite = overwrite or (found is None and (Path(cfg.train.run_dir) / "config.yaml").is_file())
    elif args.resume and not args.config:
        cfg_path = Path(args.resume) / "config.yaml"
        cfg = load_config(cfg_path, args.overrides, task=args.command)
    else:
        cfg = _load(args, task=args.command)
    check_output(cfg.train.run_dir, folder=True, what="train.run_dir")
    check_length(cfg)  # what the run would refuse, --dry-run refuses too
    resolve_device(cfg.train.device)
    if args.dry_run:
        print(dump_config(cfg))
        print(_model_summary(cfg))
        return 0
    result = train(cfg, resume=resume, probe=TrainingProbe, overwrite=overwrite)
    final = result.get("final")
    if final:
        print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}))
    return 0


def cmd_evaluate(args) -> int:
    from ssast.evaluate.scoring import evaluate_checkpoint

    from ssast.config import load_config

    if args.ensemble:  # a run's epoch ensemble, re-scored from the predictions it saved (train.epoch_ensemble)
        from ssast.config import ConfigError
        from ssast.train.epoch_ensemble import rescore

        if args.args:
            raise ConfigError(f"evaluate --ensemble RUN takes no checkpoint or override, got {' '.join(args.args)}")
        if args.out:
            from ssast.atomic import check_output

            check_output(args.out, folder=False, what="--out")
        return _print_metrics(rescore(args.ensemble), args.out)
    checkpoints = [a for a in args.args if "=" not in a]
    if not checkpoints:
        from ssast.config import ConfigError

        raise ConfigError("evaluate: name at least one checkpoint folder")
    cfg = load_config(args.config, [a for a in args.args if "=" in a], task="finetune")  # classifiers only
    if args.out:
        from ssast.atomic import check_output

        check_output(args.out, folder=False, what="--out")
    metrics = evaluate_checkpoint(checkpoints, cfg)
    metrics.pop("per_class_ap", None)
    return _print_metrics(metrics, args.out)


def _print_metrics(metrics: dict, out: str | None) -> int:
    from ssast.atomic import atomic_write_text

    text = json.dumps(metrics, indent=2)
    if out:
        atomic_write_text(out, text + "\n")
    print(text)
    return 0


def cmd_predict(args) -> int:
    from ssast.serve.inference import check_timeline_path, predict_files, write_timeline

    if args.top_k < 1:
        from ssast.config import ConfigError

        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.timeline:
        check_timeline_path(args.timeline)
    results = predict_files(args.checkpoint, args.files, top_k=args.top_k, device=args.device, window=args.window,
                            hop=args.hop, aggregate=args.aggregate, precision=args.precision)
    if args.timeline:
        write_timeline(results, args.timeline)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            w = r["windows"]
            print(r["file"] + (f"  ({len(w)} windows, {args.aggregate} over windows)" if len(w) > 1 else ""))
            for i, t in enumerate(r["top"], 1):
                print(f"  {i}. {t['label']:<32} {t['score']:.4f}")
    if args.timeline:
        print(f"timeline of {sum(len(r['windows']) for r in results)} windows: {args.timeline}", file=sys.stderr)
    return 0


def cmd_embed(args) -> int:
    from ssast.atomic import check_output
    from ssast.serve.inference import embed_files

    check_output(args.out, folder=True, what="--out")
    written = embed_files(args.checkpoint, args.files, args.out, tokens=args.tokens, device=args.device,
                          window=args.window, hop=args.hop, timestamps=args.timestamps, precision=args.precision)
    print(f"wrote {len(written)} embeddings to {args.out}")
    return 0


def cmd_prepare(args) -> int:
    from ssast.atomic import check_output
    from ssast.data.shard_writer import prepare_shards

    check_output(args.out, folder=True, what="output folder")
    index = prepare_shards(args.source, args.out, shard_size=args.shard_size, workers=args.workers,
                           label_csv=args.label_csv, strict=args.strict, overwrite=args.overwrite)
    print(f"wrote {len(index['shards'])} shards, {index['num_clips']} clips, "
          f"{index['total_seconds'] / 3600:.2f} h to {args.out}")
    if index["skipped"]:
        from ssast.data.dataset import summarize_skips

        seen = index["num_clips"] + sum(index["skipped"].values())
        print(summarize_skips(seen, index["skipped"], index["skipped_examples"]) + f" (listed in {args.out}/index.json)")
    return 0


def cmd_stats(args) -> int:
    from ssast.data.loader import compute_dataset_stats

    cfg = _load(args, task="finetune")  # reads the data only: no pretraining (masking) checks
    mean, std = compute_dataset_stats(cfg, split="train")
    print(json.dumps({"norm_mean": mean, "norm_std": std}))
    print(f"use: audio.norm_mean={mean:.7g} audio.norm_std={std:.7g}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    import math

    from ssast.atomic import check_output, replaceable
    from ssast.config import DATASET_STATS, ConfigError

    if (args.norm_mean is None) != (args.norm_std is None):
        raise ConfigError("--norm-mean and --norm-std go together: give both, or neither (then --stats)")
    norm = (args.norm_mean, args.norm_std) if args.norm_mean is not None else DATASET_STATS.get(args.stats)
    if norm and not (math.isfinite(norm[0]) and math.isfinite(norm[1]) and norm[1] > 0):
        raise ConfigError(f"--norm-mean/--norm-std: the features are divided by the std, so it must be a positive "
                          f"number and the mean finite; got mean {norm[0]} std {norm[1]}")
    check_output(args.out, folder=True, what="output")
    from ssast.models.checkpoint import imported_here

    replaceable(args.out, holds=lambda p: (p / "model.json").is_file(), kind="an ssast checkpoint",
                same=lambda p: imported_here(p, args.source), overwrite=args.overwrite)
    if Path(args.source).is_dir():  # a transformers AST folder: its config.json says what the options would
        from ssast.serve.export import import_hf

        given = [flag for flag, value in (("--pooling", args.pooling if args.pooling != "cls" else None),
                                          ("--input-tdim", args.input_tdim), ("--fstride", args.fstride),
                                          ("--tstride", args.tstride)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: {args.source} is a transformers AST folder, whose config.json "
                              "sets the model (cls pooling, strides, input length); drop them")
        meta = import_hf(args.source, args.out, norm=norm, overwrite=args.overwrite)
    else:
        from ssast.models.factory import import_authors_checkpoint

        meta = import_authors_checkpoint(args.source, args.out, pooling=args.pooling or "mean",
                                         input_tdim=args.input_tdim, fstride=args.fstride, tstride=args.tstride,
                                         norm=norm or DATASET_STATS["audioset"])
    m = meta.model
    classes = f", {meta.num_classes} classes" if meta.kind == "classifier" else ""
    print(f"converted {args.source} -> {args.out}: {meta.kind}{classes}, dim {m.dim}, depth {m.depth}, "
          f"patch {m.fshape}x{m.tshape} stride {m.fstride}x{m.tstride}, {m.input_tdim} frames, "
          f"normalisation mean {meta.audio.norm_mean:.7g} std {meta.audio.norm_std:.7g}")
    return 0


def cmd_export(args) -> int:
    from ssast.atomic import check_output
    from ssast.config import ConfigError
    from ssast.serve.export import export_checkpoint

    check_output(args.out, folder=args.format == "hf", what="output")
    options = {"input": args.input, "output": args.output, "tokens": args.tokens} if args.format == "onnx" else {}
    if args.format == "hf" and (args.input, args.output, args.tokens) != ("fbank", "logits", False):
        raise ConfigError("--input/--output/--tokens choose what an ONNX graph takes and gives; a transformers folder "
                          "is the model as transformers builds it (a pretraining checkpoint exports as ASTModel)")
    written = export_checkpoint(args.checkpoint, args.out, args.format, overwrite=args.overwrite, **options)
    print(f"exported {args.checkpoint} -> {written} ({args.format})")
    return 0


def cmd_probe(args) -> int:
    from ssast.atomic import check_output
    from ssast.config import ConfigError, load_config
    from ssast.evaluate.probe import default_cache_dir, format_probe_table, probe_checkpoint

    checkpoints = [a for a in args.args if "=" not in a]
    if len(checkpoints) != 1:
        raise ConfigError(f"probe: name one checkpoint folder (or scratch), got {len(checkpoints)}: "
                          f"{' '.join(checkpoints) or 'none'}")
    # read as fine-tuning reads its data; a pretraining config's own probing setting does not apply here
    overrides = [a for a in args.args if "=" in a] + ["train.probe_every=0"]
    cfg = load_config(args.config, overrides, task="finetune")
    check_output(args.out, folder=True, what="--out")
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    result = probe_checkpoint(checkpoints[0], cfg, args.out, cache_dir=cache)
    print(f"probe of {result['encoder']}: {result['metric']} on {result['score_split']} "
          f"({result['num_clips']['test']} clips); regularisation and k chosen on {result['selection']}")
    print(format_probe_table(result))
    print(f"layer weights of the weighted sum: {result['weighted']['layer_weights']}")
    for note in result.get("skipped_clips", []):
        print(f"{note} (probed on the rest)", file=sys.stderr)
    print(f"embeddings: {', '.join(f'{k} {v}' for k, v in result['cache'].items())} in the cache"
          f"{f' {cache}' if cache else ''}; {result['seconds']['embed']:.1f} s embedding, "
          f"{result['seconds']['fit']:.1f} s fitting; wrote {Path(args.out) / 'probe.json'} and probe.png")
    return 0


def cmd_compare(args) -> int:
    from ssast.atomic import check_output
    from ssast.evaluate.compare import compare_runs

    check_output(args.out, folder=True, what="--out")
    table, png = compare_runs(args.runs, args.out)
    print(table)
    print(f"curves: {png}")
    return 0


def cmd_demo(args) -> int:
    from ssast.atomic import check_output
    from ssast.demo.run import run_demo

    check_output(args.out, folder=True, what="--out")
    run_demo(args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssast", description="Self-supervised Audio Spectrogram Transformer")
    parser.add_argument("--version", action="version", version=f"ssast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (("pretrain", "masked spectrogram patch modeling"), ("finetune", "supervised fine-tuning")):
        p = sub.add_parser(name, help=text, epilog=EPILOG_OVERRIDES)
        _add_config_args(p)
        p.add_argument("--resume", metavar="RUN_DIR|auto",
                       help="continue a run from its last checkpoint; auto: continue train.run_dir when it holds a "
                            "checkpoint of this same config, else start it (for requeued and restarted jobs)")
        p.add_argument("--dry-run", action="store_true", help="print the resolved config and model summary, then exit")
        p.add_argument("--overwrite", action="store_true", help="train.run_dir holds an earlier run: remove that run's "
                       "files (checkpoints, final, config, logs...) and start a new one there; without it such a folder "
                       "is refused")
        p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of fine-tuned checkpoint(s) on a labelled list; several = an ensemble",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", "-c", help="YAML config (only what differs from the defaults)")
    p.add_argument("args", nargs="*", metavar="CHECKPOINT_OR_KEY=VALUE",
                   help="checkpoint folder(s) (several are ensembled: mean probabilities) and dotted overrides")
    p.add_argument("--ensemble", metavar="RUN_DIR",
                   help="re-score a run's epoch ensemble (train.epoch_ensemble) from the predictions it saved")
    p.add_argument("--out", help="write the metrics JSON here too")
    p.set_defaults(func=cmd_evaluate, positionals="args")

    for name, text in (("predict", "top-k labels for audio files"), ("embed", "clip or token embeddings to .npy")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint")
        p.add_argument("files", nargs="+")
        p.add_argument("--device", default="cpu")
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto (default): bf16 autocast on GPUs and on CPUs with native bf16 (AMX, AVX512-BF16) "
                       "for models at least 256 wide, as in training; fp32 for scores that match an fp32 export")
        p.add_argument("--window", type=float, metavar="SECONDS",
                       help="cut longer files into windows this long (default: the model's length)")
        p.add_argument("--hop", type=float, metavar="SECONDS", help="start a window every HOP seconds (default: half "
                       "the window)")
        if name == "predict":
            p.add_argument("--top-k", type=int, default=5)
            p.add_argument("--json", action="store_true", help="JSON instead of a table")
            p.add_argument("--timeline", metavar="FILE", help="write every window's top-k here (.csv or .json)")
            p.add_argument("--aggregate", choices=["mean", "max"], default="mean",
                           help="a long file's scores: mean (default) or max of its windows' probabilities")
            p.set_defaults(func=cmd_predict)
        else:
            p.add_argument("--out", required=True, help="output folder")
            p.add_argument("--tokens", action="store_true", help="token embeddings (N, D) instead of pooled (D,)")
            p.add_argument("--timestamps", action="store_true", help="every window's embedding with its start and "
                           "end (one .npz per file) instead of their mean")
            p.set_defaults(func=cmd_embed)

    p = sub.add_parser("prepare", help="write WebDataset shards from a JSON list or a folder of audio")
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--label-csv")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("stats", help="fbank mean and std of the training data (for audio.norm_mean/std)",
                       epilog=EPILOG_OVERRIDES)
    _add_config_args(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("import-checkpoint",
                       help="convert the authors' released .pth or a transformers AST folder to our format")
    p.add_argument("source", help="an authors' .pth, or a folder of transformers' ASTForAudioClassification")
    p.add_argument("out")
    p.add_argument("--pooling", choices=["mean", "cls"],
                   help="authors' fine-tuned checkpoints: mean (default) for SSAST fine-tuning, cls for AST "
                        "(e.g. audioset_10_10_0.4593.pth); a transformers AST is always cls")
    p.add_argument("--input-tdim", type=int, help="fine-tuned checkpoints: input frames (default: inferred)")
    p.add_argument("--fstride", type=int)
    p.add_argument("--tstride", type=int)
    p.add_argument("--stats", choices=["audioset", "esc50", "speechcommands"],
                   help="normalisation statistics stored with the model (default: audioset, as the authors pretrained; "
                        "a transformers folder's preprocessor_config.json has its own)")
    p.add_argument("--norm-mean", type=float, help="own statistics instead of --stats (with --norm-std)")
    p.add_argument("--norm-std", type=float)
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a checkpoint as a transformers folder (hf) or an ONNX file (onnx)")
    p.add_argument("checkpoint")
    p.add_argument("out", help="a folder (hf) or a .onnx file (onnx)")
    p.add_argument("--format", choices=["hf", "onnx"], required=True)
    p.add_argument("--input", choices=["fbank", "waveform"], default="fbank",
                   help="onnx: the normalised fbank (default), or 16 kHz waveforms + lengths with the fbank in the graph")
    p.add_argument("--output", choices=["logits", "embeddings"], default="logits",
                   help="onnx: a classifier's logits (default), or the clip embedding of ssast embed (any checkpoint)")
    p.add_argument("--tokens", action="store_true", help="onnx --output embeddings: also the token embeddings")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("probe", help="frozen-encoder linear probe and k-NN per layer of a checkpoint",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", "-c", help="YAML config naming the labelled lists (data.train/valid/test and "
                                          "data.label_csv, or data.probe_train/probe_test)")
    p.add_argument("args", nargs="+", metavar="CHECKPOINT_OR_KEY=VALUE",
                   help="a pretraining or fine-tuned checkpoint folder, or scratch (a random encoder of the config's "
                        "model), and dotted overrides")
    p.add_argument("--out", default="probe", help="folder for probe.json and probe.png")
    p.add_argument("--cache", help="embedding cache folder (default: $SSAST_CACHE_DIR or ~/.cache/ssast/probe)")
    p.add_argument("--no-cache", action="store_true", help="compute the embeddings without reading or writing a cache")
    p.set_defaults(func=cmd_probe, positionals="args")

    p = sub.add_parser("compare", help="table and curves of several runs (e.g. patch vs frame)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="compare", help="folder for the table and PNG")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the built-in end-to-end demo on synthetic audio (about 6 min on 2 CPU cores)")
    p.add_argument("--out", default="demo_runs")
    p.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")
    p.set_defaults(func=cmd_demo)
    return parser


def user_errors() -> tuple[type, ...]:
    """Exception classes that mean the user has something to fix: reported in one line, no traceback."""
    from ssast.audio.io import AudioError
    from ssast.config import ConfigError
    from ssast.data.manifest import DataError
    from ssast.models.checkpoint import CheckpointError
    from ssast.train.engine import TrainingStopped

    return (ConfigError, DataError, AudioError, CheckpointError, TrainingStopped, FileNotFoundError)


# Commands that never build a model: they must work even where torchvision (imported by timm) cannot load.
NO_MODEL_COMMANDS = ("compare",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse like argparse, but let checkpoints and overrides stand on either side of the options.

    argparse fills a list positional from the first run of arguments only (``CKPT -c FILE key=value`` leaves
    ``key=value`` unrecognised), and its intermixed parsing refuses subcommands; so the leftovers are appended here.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    into = getattr(args, "positionals", None)
    if extra and (into is None or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, into, list(getattr(args, into) or []) + extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssast.environment import EnvironmentMismatch, require

    completed = False
    try:
        if args.command not in NO_MODEL_COMMANDS:
            require("torchvision")  # timm imports it: a mismatched build would fail deep inside the first model import
        code = args.func(args)
        completed = code == 0
        return code
    except EnvironmentMismatch as e:  # before user_errors(), whose imports would fail the same way
        print(f"ssast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except user_errors() as e:
        print(f"ssast {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # a run stopped by a signal: 75 (requeue) or 130 (Ctrl-C)
    except Exception as e:  # a full or read-only disk, a path through a file: outputs are atomic, nothing is half-left
        from ssast.atomic import write_failure

        why = write_failure(e)
        if why is None:
            raise
        print(f"ssast {args.command}: error: {why}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # a command that never imported torch has no process group
            from ssast.train.runtime import leave_distributed

            leave_distributed(completed)


if __name__ == "__main__":
    sys.exit(main())
