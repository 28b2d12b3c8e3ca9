"""``hf-prune``: prune, inspect, export and list recipes from the command line.

Every ``prune`` flag is generated from :class:`PruningConfig`, so the CLI, YAML and Python share defaults.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import torch
import transformers

from . import __version__
from .calibration import (
    SELF_CALIBRATION_FILE,
    CalibrationData,
    is_causal_lm,
    load_self_calibration,
    prepare_calibration,
    save_self_calibration,
    usable_seq_len,
)
from .card import card_files, source_license
from .checkpoint import check_output_dir, from_pretrained, save_pretrained
from .config import PruningConfig
from .evaluation import METRICS, Evaluation, check_overlap, choose_metric
from .export import FORMATS, export_checkpoint
from .flops import measure_cost
from .hub import check_repo_id, check_token, push_to_hub
from .legacy import LEGACY_KEY, LegacyCheckpointError, legacy_pruned_heads
from .loading import resolve_model_class
from .prune import calibration_needs, gather_calibration, prune
from .recipe import recipes_dir, shipped_recipes
from .sentence_files import sentence_transformers_files
from .structure import LayerShape, ModelStructure
from .surgery import recorded_meta

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_CLASS_HELP = (
    "load as this class: an Auto class (AutoModel, AutoModelForSequenceClassification...) or a transformers class "
    "name (default: the class whose weights the checkpoint holds)"
)


def load_model(
    path: str, gguf_file: str | None = None, dtype: str | None = None, model_class: str | None = None
) -> tuple[Any, Any]:
    """Load a model and its tokenizer, if it has one, from a path or Hub id.

    The class is ``model_class`` (an Auto class or transformers class name) or, by default, the one whose weights
    the checkpoint holds (:func:`hf_prune.loading.choose_model_class`); a GGUF file loads as a causal LM.
    """
    kwargs: dict[str, Any] = {}
    if dtype:
        kwargs["dtype"] = DTYPES[dtype]
    if gguf_file:
        # transformers dequantizes GGUF weights to plain tensors; hf_prune saves them as a plain checkpoint.
        kwargs.setdefault("dtype", torch.float32)
        cls: Any = transformers.AutoModelForCausalLM
        if model_class:
            cls = resolve_model_class(transformers.AutoConfig.from_pretrained(path, gguf_file=gguf_file), model_class)
        model = cls.from_pretrained(path, gguf_file=gguf_file, **kwargs)
    else:
        model = from_pretrained(path, model_class, **kwargs)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer


def _pipeline_files(source: str, model: Any) -> dict[str, bytes]:
    """The source's sentence-transformers files (``modules.json``, ``1_Pooling/``...), checked against the model."""
    files = sentence_transformers_files(source, getattr(model.config.get_text_config(), "hidden_size", None))
    if files:
        print(f"carrying the sentence-transformers pipeline over: {', '.join(sorted(files))}", file=sys.stderr)
    return files


def _step_or_fraction(text: str) -> int | float:
    """``100`` is a step, ``0.5`` a fraction of training."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    for spec in dataclasses.fields(PruningConfig):
        flag = "--" + spec.name.replace("_", "-")
        kind = spec.type if not isinstance(spec.type, str) else eval(spec.type, {}, {})
        help_text = spec.metadata.get("help", "")
        args = [a for a in get_args(kind) if a is not type(None)]
        base = args[0] if get_origin(kind) in (Union, types.UnionType) else kind
        if base is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"{help_text} (default: {spec.default})"
            )
        elif int in args and float in args:
            parser.add_argument(
                flag, type=_step_or_fraction, default=None, help=f"{help_text} (default: {spec.default})"
            )
        elif get_origin(base) is list:
            parser.add_argument(flag, type=int, nargs="*", default=None, help=help_text)
        elif get_origin(base) is dict:
            parser.add_argument(flag, type=_name_and_fraction, nargs="+", metavar="NAME=FRACTION", help=help_text)
        else:
            parser.add_argument(flag, type=base, default=None, help=f"{help_text} (default: {spec.default})")


def _name_and_fraction(text: str) -> tuple[str, float]:
    """``adapter_neurons=0.5`` -> ``("adapter_neurons", 0.5)``."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError(text)
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=FRACTION (e.g. adapter_neurons=0.5), got {text!r}") from None


def _config_from_args(args: argparse.Namespace) -> PruningConfig:
    base = PruningConfig.from_yaml(args.config) if args.config else PruningConfig()
    changes = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(PruningConfig) if getattr(args, f.name) is not None
    }
    if "kinds" in changes:  # flags add to (and override) the YAML's kinds
        changes["kinds"] = {**(base.kinds or {}), **dict(changes["kinds"])}
    return base.replace(**changes)


def cmd_prune(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    output = Path(args.output)
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"'{output}' exists and is not empty; pass --overwrite or choose another --output.")
    if args.push_to_hub:  # fail now rather than after loading and pruning
        check_repo_id(args.push_to_hub)
        check_token()
    print(f"loading {args.model} ...", file=sys.stderr)
    model, tokenizer = load_model(args.model, args.gguf_file, args.dtype, args.model_class)
    print(f"loaded as {type(model).__name__}", file=sys.stderr)
    pipeline = _pipeline_files(args.model, model)
    evaluation = _evaluation(args, config, model, tokenizer)  # bad eval data fails here, before any pruning
    if config.calibration_data is None:
        calibration = _self_calibration(model, config, output)
    else:  # read now, to fail before the evaluation and to compare the two
        calibration = gather_calibration(model, config, None, tokenizer, fitted=False)
    if evaluation is not None:
        if calibration is not None:
            check_overlap(evaluation.data, calibration, tokenizer)
        print(f"evaluating the dense model on {evaluation.data.source} ...", file=sys.stderr)
        evaluation.before(model)
    cached = calibration is not None and calibration.self_generated
    dense = copy.deepcopy(model) if args.measure_latency else None
    report = prune(model, config, calibration=calibration, tokenizer=tokenizer)
    if evaluation is not None:
        report.extra["eval"] = evaluation.after(model)
    if dense is not None:
        from .latency import compare_latency

        before, after = compare_latency(dense, model)
        report.extra["latency_before"], report.extra["latency_after"] = before.to_dict(), after.to_dict()
        del dense
    card = card_files(
        report,
        config=model.config,
        model_class_name=type(model).__name__,
        repo_id=args.push_to_hub,
        **source_license(args.model),
    )
    save_pretrained(
        model,
        output,
        tokenizer=tokenizer,
        overwrite=args.overwrite,
        extra_files={
            **pipeline,
            "pruning_report.json": report.to_json(),
            **card,
            **({SELF_CALIBRATION_FILE: save_self_calibration(calibration)} if cached else {}),
        },
    )
    print(report.summary())
    if "eval" in report.extra:
        before, after = report.extra["eval"]["before"], report.extra["eval"]["after"]
        print("evaluation: " + ", ".join(f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in after if k in before))
    print(f"saved to {output} (model card: {output / 'README.md'})")
    if args.push_to_hub:
        _print_pushed(push_to_hub(output, args.push_to_hub, force=args.force))
    return 0


def _evaluation(args: argparse.Namespace, config: PruningConfig, model: Any, tokenizer: Any) -> Evaluation | None:
    """The evaluation data and metric of ``--eval-data``, checked before any pruning."""
    if not args.eval_data:
        return None
    data = prepare_calibration(
        model,
        args.eval_data,
        tokenizer,
        split=args.eval_split,
        column=args.eval_column,
        samples=args.eval_samples,
        seq_len=args.eval_seq_len,
        batch_size=config.calibration_batch_size,
        seed=config.seed + 1,  # another draw than calibration's where both read the same rows
    )
    return Evaluation(data, choose_metric(model, data.batches, args.eval_metric))


def _self_calibration(model: Any, config: PruningConfig, output: Path) -> CalibrationData | None:
    """Self-generated calibration text for a causal LM given no data: reused from a previous run's output folder
    when it was made with the same settings (generating it is the slowest part of a CPU run), else sampled."""
    if not is_causal_lm(model) or not calibration_needs(config)[1]:
        return None
    cached = output / SELF_CALIBRATION_FILE
    if cached.is_file():
        data = load_self_calibration(cached, config.calibration_batch_size)
        seq_len = usable_seq_len(model, config.calibration_seq_len)
        same = data.details.get("seed") == config.seed and data.details.get("seq_len") == seq_len
        if same and data.num_sequences == config.calibration_samples:
            print(f"reusing the self-generated calibration text in {cached}", file=sys.stderr)
            return data
    print(f"sampling {config.calibration_samples} calibration sequences from the model ...", file=sys.stderr)
    return gather_calibration(model, config, None, None, fitted=False)


def _print_pushed(info: Any) -> None:
    # An unchanged folder makes no commit (huggingface_hub says so): the URL is then the current head's.
    print(f"pull request: {info.pr_url}" if info.pr_url else f"commit: {info.commit_url}")


def cmd_push(args: argparse.Namespace) -> int:
    info = push_to_hub(
        args.folder,
        args.repo_id,
        force=args.force,
        private=True if args.private else None,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        token=args.token,
    )
    _print_pushed(info)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output_dir(output, args.overwrite)  # before any loading
    removed = legacy_pruned_heads(transformers.AutoConfig.from_pretrained(args.source))
    if not removed:
        raise LegacyCheckpointError(
            f"'{args.source}' has no config.{LEGACY_KEY}: it is no transformers-4 pruned checkpoint, so there is "
            "nothing to convert (hf_prune.from_pretrained and `hf-prune prune` read it as it is)."
        )
    print(f"loading {args.source} (heads removed by transformers 4: {removed}) ...", file=sys.stderr)
    model, tokenizer = load_model(args.source, model_class=args.model_class)
    pipeline = _pipeline_files(args.source, model)
    save_pretrained(model, output, tokenizer=tokenizer, overwrite=args.overwrite, extra_files=pipeline)
    structure = ModelStructure(model)
    print(f"{type(model).__name__}, recipe '{structure.recipe.name}'")
    _print_counts(structure, structure.shapes())
    vanilla = (recorded_meta(model.config.get_text_config()) or {}).get("vanilla_loadable", False)
    how = "plain transformers from_pretrained" if vanilla else "hf_prune.from_pretrained, or trust_remote_code=True"
    print(f"saved to {output}: loads with {how}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    print(f"exporting {args.directory} as {args.format} ...", file=sys.stderr)
    info = export_checkpoint(
        args.directory,
        args.output,
        args.format,
        outtype=args.outtype,
        overwrite=args.overwrite,
        record=not args.no_record,
    )
    details = [f"outtype {info['outtype']}"]
    if args.format == "gguf":
        details.insert(0, f"llama.cpp architecture '{info['arch']}' ({info['layout'].replace('_', '-')} counts)")
    else:
        details.append(f"checked against PyTorch: max abs diff {info['max_abs_diff']:.2e}")
    print(f"wrote {info['file']}: {', '.join(details)}")
    return 0


def _print_counts(structure: ModelStructure, shapes: list[LayerShape]) -> None:
    """One row per block, one column per kind of unit."""
    names = [kind.name for kind in structure.kinds]
    removed = structure.removed_sublayers
    labels = [structure.block_name(i) for i in range(len(shapes))]
    width = max(5, *(len(label) for label in labels))
    print("layer".rjust(width) + "".join(f"  {name}" for name in names))
    for i, shape in enumerate(shapes):
        gone = [part for part, blocks in removed.items() if i in blocks]
        note = f"  ({' and '.join(gone)} removed)" if gone else ""
        print(labels[i].rjust(width) + "".join(f"  {shape[name]:>{len(name)}}" for name in names) + note)


def cmd_inspect(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, args.gguf_file, args.dtype, args.model_class)
    structure = ModelStructure(model, args.recipe)
    cost = measure_cost(structure)
    shapes = structure.shapes()
    info = {
        "model_type": structure.config.model_type,
        "class": type(model).__name__,
        "recipe": structure.recipe.name,
        "layers": len(shapes),
        "head_dim": structure.head_dim,
        "prunable_groups": {kind.name: sum(s[kind.name] for s in shapes) for kind in structure.kinds},
        "per_layer": [dict(s.counts) for s in shapes],
        "removed_sublayers": structure.removed_sublayers,
        **dataclasses.asdict(cost),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['class']} ({info['model_type']}), recipe '{info['recipe']}', head_dim {info['head_dim']}")
    print(f"parameters {cost.parameters:,} (attention+MLP blocks {cost.block_parameters:,})")
    print(f"FLOPs/token @ {cost.seq_len} tokens: {cost.flops_per_token:,} (blocks {cost.block_flops_per_token:,})")
    groups = info["prunable_groups"]
    print("prunable: " + ", ".join(f"{groups[kind.name]} {kind.label}" for kind in structure.kinds))
    _print_counts(structure, shapes)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    recipes = shipped_recipes()
    if args.show:
        if args.show not in recipes:
            raise ValueError(f"no recipe '{args.show}'; shipped: {', '.join(sorted(recipes))}")
        print((recipes_dir() / f"{args.show}.yaml").read_text(encoding="utf-8"), end="")
        return 0
    width = max(len(n) for n in recipes)
    for name, recipe in recipes.items():
        print(f"{name:<{width}}  {', '.join(recipe.model_types):<22} {recipe.description}")
    print(f"\n{len(recipes)} recipes in {recipes_dir()}; `hf-prune recipes --show NAME` prints one.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-prune", description="Structured pruning for transformers models.")
    parser.add_argument("--version", action="version", version=f"hf-prune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("prune", help="remove heads, neurons or whole blocks from a model and save it")
    p.add_argument("model", help="local path or Hub id")
    p.add_argument("--output", "-o", required=True, help="directory to write the pruned model to")
    p.add_argument("--config", help="YAML file with PruningConfig fields (flags override it)")
    p.add_argument("--gguf-file", help="load this GGUF file from the model folder (dequantized to float32)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="load the model in this dtype")
    p.add_argument("--model-class", metavar="NAME", help=MODEL_CLASS_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument(
        "--measure-latency", action="store_true", help="time the model before and after (batch 8, 128 tokens)"
    )
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="after saving, push the output folder to this Hub repo")
    p.add_argument(
        "--eval-data",
        metavar="SOURCE",
        help="held-out data (same kinds as --calibration-data) to measure the model on, before and after pruning",
    )
    p.add_argument("--eval-split", default="train", help="split of a datasets folder or Hub dataset")
    p.add_argument("--eval-column", help="text column of the evaluation data")
    p.add_argument("--eval-samples", type=int, default=16, help="evaluation sequences")
    p.add_argument("--eval-seq-len", type=int, default=512, help="tokens per evaluation sequence")
    p.add_argument("--eval-metric", default="auto", choices=list(METRICS), help="default: the one that fits the model")
    p.add_argument("--force", action="store_true", help="push even when the evaluation measured a collapse")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_prune)

    p = commands.add_parser("inspect", help="show prunable groups, parameters and FLOPs")
    p.add_argument("model")
    p.add_argument("--recipe", default="auto")
    p.add_argument("--gguf-file")
    p.add_argument("--dtype", choices=sorted(DTYPES))
    p.add_argument("--model-class", metavar="NAME", help=MODEL_CLASS_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser(
        "convert", help="convert a checkpoint pruned by transformers 4's prune_heads (config.pruned_heads)"
    )
    p.add_argument("source", metavar="SRC", help="local path or Hub id of the transformers-4 pruned checkpoint")
    p.add_argument("output", metavar="DST", help="directory to write the hf_prune checkpoint to")
    p.add_argument("--model-class", metavar="NAME", help=MODEL_CLASS_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("export", help="export a checkpoint for llama.cpp (GGUF) or ONNX Runtime (ONNX)")
    p.add_argument("directory", metavar="DIR", help="checkpoint folder (pruned by hf_prune, or plain transformers)")
    p.add_argument(
        "--format", required=True, choices=FORMATS, help="gguf: llama.cpp (Llama family); onnx: ONNX Runtime"
    )
    p.add_argument("--output", "-o", required=True, help="file to write (model.gguf, model.onnx)")
    p.add_argument(
        "--outtype",
        help="gguf: f32, f16 (default), q8_0, or q4_k_m... (needs llama-cpp-python); onnx: f32 (default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--no-record", action="store_true", help="do not note the export in DIR's exports.json and model card"
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("push", help="push a pruned folder (with its model card) to the Hub in one commit")
    p.add_argument("folder", metavar="DIR", help="folder written by `hf-prune prune` or hf_prune.save_pretrained")
    p.add_argument("repo_id", metavar="REPO_ID", help="namespace/name; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo is unchanged)")
    p.add_argument("--revision", help="existing branch to push to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--commit-message", help="commit title")
    p.add_argument("--token", help="Hub token with write access (default: the one from `hf auth login` / HF_TOKEN)")
    p.add_argument("--force", action="store_true", help="push even when the saved evaluation measured a collapse")
    p.set_defaults(func=cmd_push)

    p = commands.add_parser("recipes", help="list the shipped recipes")
    p.add_argument("--show", metavar="NAME", help="print one recipe's YAML")
    p.set_defaults(func=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, AttributeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
