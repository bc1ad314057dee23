"""`sonichu-jax evaluate`: MRE of one or more models (and their ensemble) on a data set,
printed in the card's table layout and written as JSON."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "MRE per task (weighted and unweighted) of one or more models on a labelled data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="checkpoint directory; repeat for several models (adds an ensemble column)")
    parser.add_argument("--predictions", action="append", default=[], metavar="CSV",
                        help="a prediction file written by predict --out x.csv, scored as a column of its own; "
                        "repeatable, and may be mixed with --model")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="a .jsonl manifest, an FM_UIA .csv, or a folder of CSVs (or with manifest.jsonl)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="evaluate only these tasks")
    parser.add_argument("--no-tta", action="store_true", help="skip the horizontally flipped second pass")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--ensemble", choices=("median", "mean"), default="median",
                        help="how to combine several models' keypoints, coordinate-wise (default median)")
    parser.add_argument("--json", metavar="OUT",
                        help="write the results as JSON, with every image's errors (per keypoint and mean, px and mm)")
    parser.add_argument("--strict", action="store_true", help="any bad record is an error (exit 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _column_names(paths: list[str]) -> list[str]:
    """Folder names of models, file stems of prediction files; numbered if they clash."""
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    names = [n[:-4] if n.lower().endswith(".csv") else n for n in names]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def _task_table(configs, prediction_files, model_paths):
    """The first model's task table, or the prediction files' tasks; every prediction
    file's task must fit it."""
    from sonichu_jax.errors import InputError

    table = list(configs[0].tasks) if configs else []
    for path, (spec, _) in prediction_files.items():
        known = {t.name: t for t in table}
        if spec.name not in known:
            if configs:
                raise InputError(f"{path}: task {spec.name} is not one of {model_paths[0]}'s tasks")
            table.append(spec)
        elif known[spec.name].num_keypoints != spec.num_keypoints:
            raise InputError(f"{path}: task {spec.name} has {spec.num_keypoints} keypoints, "
                             f"expected {known[spec.name].num_keypoints}")
    return tuple(table)


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.config import ModelConfig
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.errors import InputError, UnknownTaskError
    from sonichu_jax.evaluation import score
    from sonichu_jax.fileio import check_output_file, write_json
    from sonichu_jax.metrics import format_table, table_dict
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor
    from sonichu_jax.results import image_errors, load_predictions, match_predictions, predict_columns

    if not args.model and not args.predictions:
        raise InputError("nothing to evaluate: give --model DIR or --predictions CSV")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json:
        check_output_file(args.json, (".json",))
    # Configs and prediction files first (cheap, no JAX): bad tasks or bad data fail
    # before any weights load.
    configs = [ModelConfig.load(path) for path in args.model]
    for path, cfg in zip(args.model[1:], configs[1:]):
        for spec in configs[0].tasks:
            if spec.name in cfg.task_names and cfg.task(spec.name).num_keypoints != spec.num_keypoints:
                raise InputError(
                    f"{path}: task {spec.name} has {cfg.task(spec.name).num_keypoints} keypoints, "
                    f"{args.model[0]} has {spec.num_keypoints}"
                )
    prediction_files = {path: load_predictions(path) for path in args.predictions}
    task_table = _task_table(configs, prediction_files, args.model)
    wanted = list(args.tasks) if args.tasks else None
    for task in wanted or []:
        for cfg in configs:
            if task not in cfg.task_names:
                raise UnknownTaskError(task, cfg.task_names)

    source = load_source(args.data, tasks=task_table, strict=args.strict)
    records = [r for r in source if r.has_label and (wanted is None or r.task in wanted)]
    unlabelled = sum(1 for r in source if not r.has_label)
    if unlabelled:
        print(f"{unlabelled} unlabelled records not evaluated", file=sys.stderr)
    for task in {r.task for r in records}:  # the first table filtered the source
        for cfg in configs[1:]:
            if task not in cfg.task_names:
                raise UnknownTaskError(task, cfg.task_names)
    all_names = _column_names(args.model + args.predictions)
    names, pred_names = all_names[:len(args.model)], all_names[len(args.model):]
    records, predicted, missing = match_predictions(records, dict(zip(pred_names, prediction_files.values())))
    for name, path in zip(pred_names, args.predictions):
        if missing[name]:
            message = f"{path}: no prediction for {missing[name]} labelled images; they are not scored"
            if args.strict:
                raise InputError(message)
            print(message, file=sys.stderr)
    if not records:
        raise InputError(f"no labelled records to evaluate in {args.data}"
                         + (f" for tasks {', '.join(wanted)}" if wanted else ""))
    rank = {spec.name: i for i, spec in enumerate(task_table)}
    records.sort(key=lambda r: rank[r.task])  # stable: the card's task order, then file order

    models = {name: (SonichuModel.from_pretrained(path), SonichuPreprocessor.from_pretrained(path))
              for name, path in zip(names, args.model)}
    per_column = {name: (records, preds) for name, preds in predict_columns(
        models, records, tta=not args.no_tta, batch_size=args.batch_size,
        ensemble_method=args.ensemble, progress=not args.quiet).items()}
    for name, (spec, _) in zip(pred_names, prediction_files.values()):
        per_column[name] = ([r for r in records if r.task == spec.name], predicted[name])
    columns = {name: score(recs, preds) for name, (recs, preds) in per_column.items()}

    print(format_table(columns))
    if any(t.n_mm for t in next(iter(columns.values())).tasks.values()):
        print()
        print(format_table(columns, unit="mm"))
    if args.json:
        write_json(args.json, {
            "data": os.path.abspath(args.data),
            "models": {name: os.path.abspath(path) for name, path in zip(names, args.model)},
            "predictions": {name: os.path.abspath(path) for name, path in zip(pred_names, args.predictions)},
            "tta": not args.no_tta,
            "ensemble": args.ensemble if len(models) >= 2 else None,
            "load_report": source.report.to_dict(),
            "results": table_dict(columns),
            "per_image": {name: image_errors(recs, preds) for name, (recs, preds) in per_column.items()},
        })
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
