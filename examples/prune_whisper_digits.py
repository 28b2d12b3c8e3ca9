"""Prune a Whisper model's encoder, decoder and cross-attention: a worked example on a task small enough for a CPU.

No Whisper checkpoint or speech dataset ships in a PyPI package, so this trains one: a Whisper model (3 encoder and
3 decoder blocks, d_model 96, 4 heads) learns to transcribe "spoken digits", utterances of 2 to 5 digits, each digit
a fixed random spectral pattern of 6 frames in a 16-bin log-mel spectrogram, placed with random gaps, gains and noise.
Then it is pruned three ways, each scored on held-out utterances and on a shifted set (6 digits, more noise) that
no step saw:

- one-shot, by weight magnitude (no data);
- one-shot, by Taylor importance on 32 training utterances (``calibration=`` ready batches);
- during one epoch of fine-tuning with ``PruningCallback`` (Taylor, cubic schedule).

    python examples/prune_whisper_digits.py --output outputs/whisper-digits

Figures go to ``OUTPUT/results.json``; the callback's pruned model and its card to ``OUTPUT/pruned``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import transformers as T

import hf_prune
from hf_prune.card import card_files

BINS, FRAMES, DIGIT_FRAMES = 16, 64, 6
PAD, START, EOS, FIRST_DIGIT = 0, 1, 2, 3


class SpokenDigits(torch.utils.data.Dataset):
    """Seeded synthetic utterances: ``input_features`` (BINS x FRAMES) and ``labels`` (digit tokens, EOS, padding)."""

    def __init__(self, size: int, seed: int, digits: tuple[int, int] = (2, 5), noise: float = 0.3) -> None:
        templates = torch.randn(10, BINS, DIGIT_FRAMES, generator=torch.Generator().manual_seed(0))
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(size):
            count = int(torch.randint(digits[0], digits[1] + 1, (1,), generator=generator))
            sequence = torch.randint(0, 10, (count,), generator=generator).tolist()
            features = noise * torch.randn(BINS, FRAMES, generator=generator)
            position = int(torch.randint(0, 4, (1,), generator=generator))
            for digit in sequence:
                gain = 0.8 + 0.4 * float(torch.rand(1, generator=generator))
                features[:, position : position + DIGIT_FRAMES] += gain * templates[digit]
                position += DIGIT_FRAMES + int(torch.randint(0, 4, (1,), generator=generator))
            labels = [FIRST_DIGIT + d for d in sequence] + [EOS]
            labels += [-100] * (digits[1] + 2 - len(labels))  # padding is ignored by the loss
            self.items.append({"input_features": features, "labels": torch.tensor(labels)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def build_model() -> T.WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = T.WhisperConfig(
        vocab_size=16,
        num_mel_bins=BINS,
        d_model=96,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=384,
        decoder_ffn_dim=384,
        max_source_positions=FRAMES // 2,
        max_target_positions=16,
        pad_token_id=PAD,
        bos_token_id=START,
        eos_token_id=EOS,
        decoder_start_token_id=START,
    )
    model = T.WhisperForConditionalGeneration(config)
    model.generation_config.suppress_tokens = None
    model.generation_config.begin_suppress_tokens = None
    model.generation_config.forced_decoder_ids = None
    return model


def accuracy(model: torch.nn.Module, data: SpokenDigits) -> dict[str, float]:
    """Exact-match rate of greedy transcriptions, and the share of digits right at their position."""
    model.eval()
    exact = digits = total = 0
    features = torch.stack([item["input_features"] for item in data.items])
    with torch.no_grad():
        out = model.generate(features, max_new_tokens=10, do_sample=False)
    for row, item in zip(out.tolist(), data.items, strict=True):
        target = [t for t in item["labels"].tolist() if t >= FIRST_DIGIT]
        # Whisper's generate drops the start token and ends a finished row with padding.
        stop = next((i for i, t in enumerate(row) if t < FIRST_DIGIT), len(row))
        predicted = row[:stop]
        exact += predicted == target
        digits += sum(p == t for p, t in zip(predicted, target, strict=False))
        total += len(target)
    return {"exact_match": round(exact / len(data), 4), "digit_accuracy": round(digits / total, 4)}


def train(model: torch.nn.Module, data: SpokenDigits, output: Path, epochs: float, callbacks: list) -> float:
    args = T.TrainingArguments(
        output_dir=str(output),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        warmup_steps=50,
        weight_decay=0.01,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    T.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/whisper-digits"))
    parser.add_argument("--fraction", type=float, default=0.5, help="of heads, cross-attention heads and neurons")
    parser.add_argument("--epochs", type=float, default=6.0, help="training of the dense model")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    train_set, test_set = SpokenDigits(4000, seed=1), SpokenDigits(500, seed=2)
    shifted = SpokenDigits(500, seed=3, digits=(6, 6), noise=0.5)
    dense = build_model()
    seconds = train(dense, train_set, args.output / "dense-run", args.epochs, [])
    results: dict[str, object] = {
        "task": "synthetic spoken digits (2-5 digits, 16 mel bins x 64 frames); shifted: 6 digits, noise 0.5",
        "model": "Whisper, 3+3 blocks, d_model 96, 4 heads, FFN 384, trained from scratch",
        "dense_training_seconds": round(seconds, 1),
        "dense": {"test": accuracy(dense, test_set), "shifted": accuracy(dense, shifted)},
    }
    targets = {"heads": args.fraction, "cross_heads": args.fraction, "neurons": args.fraction}
    calibration = [
        {
            "input_features": torch.stack([train_set[i]["input_features"] for i in range(b, b + 8)]),
            "labels": torch.stack([train_set[i]["labels"] for i in range(b, b + 8)]),
        }
        for b in range(0, 32, 8)
    ]
    for name, settings in (
        ("one-shot magnitude", {"importance": "magnitude"}),
        ("one-shot taylor (32 utterances)", {"importance": "taylor", "calibration": calibration}),
    ):
        model = copy.deepcopy(dense)
        report = hf_prune.prune(model, **targets, **settings, reconstruct=False)
        results[name] = {
            "test": accuracy(model, test_set),
            "shifted": accuracy(model, shifted),
            "parameters": [report.before.parameters, report.after.parameters],
            "block_flops_ratio": round(report.block_flops_ratio, 3),
        }
        print(name, results[name])

    model = copy.deepcopy(dense)
    callback = hf_prune.PruningCallback(
        hf_prune.PruningConfig(**targets, importance="taylor", end=0.7, update_every=10)
    )
    seconds = train(model, train_set, args.output / "pruning-run", 1.0, [callback])
    report = callback.report
    results["fine-tuned 1 epoch with PruningCallback (taylor)"] = {
        "test": accuracy(model, test_set),
        "shifted": accuracy(model, shifted),
        "parameters": [report.before.parameters, report.after.parameters],
        "block_flops_ratio": round(report.block_flops_ratio, 3),
        "training_seconds": round(seconds, 1),
    }
    report.extra["eval"] = {
        "before": {"exact_match": results["dense"]["test"]["exact_match"]},  # type: ignore[index]
        "after": {"exact_match": results["fine-tuned 1 epoch with PruningCallback (taylor)"]["test"]["exact_match"]},
        "dataset": {"type": "synthetic", "name": "spoken digits, 500 held-out utterances", "split": "test"},
        "task_type": "automatic-speech-recognition",
    }
    card = card_files(report, config=model.config, model_class_name=type(model).__name__)
    hf_prune.save_pretrained(
        model, args.output / "pruned", overwrite=True, extra_files={"pruning_report.json": report.to_json(), **card}
    )
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
