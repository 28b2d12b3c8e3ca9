"""Calibration data: every source kind, packing, self-calibration, and the errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import transformers

import hf_prune
from hf_prune.calibration import CalibrationError, prepare_calibration, self_generate

from .text_data import byte_tokenizer, texts

SEQ_LEN = 16


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_bert_classifier() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    return transformers.BertForSequenceClassification(config).eval()


def _write_sources(root: Path, rows: list[str]) -> dict[str, Path]:
    labels = [i % 2 for i in range(len(rows))]
    (root / "data.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "data.jsonl").write_text("".join(json.dumps({"body": r}) + "\n" for r in rows), encoding="utf-8")
    frame = datasets.Dataset.from_dict({"text": rows, "label": labels})
    frame.to_csv(str(root / "data.csv"), index=False)
    frame.to_parquet(str(root / "data.parquet"))
    datasets.DatasetDict({"train": frame}).save_to_disk(str(root / "saved"))
    return {
        "txt": root / "data.txt",
        "jsonl": root / "data.jsonl",
        "csv": root / "data.csv",
        "parquet": root / "data.parquet",
        "datasets folder": root / "saved",
    }


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet", "datasets folder"])
def test_every_source_kind_gives_the_same_windows(tmp_path: Path, kind: str) -> None:
    """A causal LM's windows are the same tokens whatever file kind carries the text."""
    rows = texts(40)
    source = _write_sources(tmp_path, rows)[kind]
    column = "body" if kind == "jsonl" else None
    data = prepare_calibration(tiny_llama(), source, byte_tokenizer(), column=column, samples=6, seq_len=SEQ_LEN)
    assert data.num_sequences == 6 and not data.self_generated and data.source == str(source)
    ids = torch.cat([b["input_ids"] for b in data.batches])
    assert ids.shape == (6, SEQ_LEN)
    assert all(torch.equal(b["labels"], b["input_ids"]) for b in data.batches)
    # The first window starts the text; a .txt file is one document, the others one row per text.
    decoded = byte_tokenizer().decode(ids[0])
    assert decoded.startswith(rows[0][: SEQ_LEN // 2])


def test_encoder_batches_carry_labels_and_padding(tmp_path: Path) -> None:
    source = _write_sources(tmp_path, texts(30))["csv"]
    data = prepare_calibration(tiny_bert_classifier(), source, byte_tokenizer(), samples=10, seq_len=24, batch_size=4)
    assert [b["input_ids"].shape[0] for b in data.batches] == [4, 4, 2]
    for batch in data.batches:
        assert batch["input_ids"].shape[1] <= 24
        assert set(batch["labels"].tolist()) <= {0, 1}
        assert batch["attention_mask"].shape == batch["input_ids"].shape


def test_short_texts_are_packed_into_windows(caplog: pytest.LogCaptureFixture) -> None:
    """Texts shorter than a window are concatenated (EOS between them), not padded or dropped."""
    short = ["abc", "defg", "hi"] * 10
    data = prepare_calibration(tiny_llama(), short, byte_tokenizer(), samples=4, seq_len=SEQ_LEN)
    stream = torch.cat([b["input_ids"] for b in data.batches]).flatten().tolist()
    assert stream.count(2) >= 4  # EOS separators inside the windows


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: root / "empty.txt", "is empty"),
        (lambda root: root / "missing.jsonl", "does not exist"),
        (lambda root: root / "table.xlsx", "cannot read"),
    ],
)
def test_bad_files_name_the_fix(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    if path.name != "missing.jsonl":
        path.write_bytes(b"")
    with pytest.raises(CalibrationError, match=match):
        prepare_calibration(tiny_llama(), path, byte_tokenizer(), samples=2, seq_len=SEQ_LEN)


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    source = _write_sources(tmp_path, texts(20))["jsonl"]
    with pytest.raises(CalibrationError, match=r"no column 'text'.*\['body'\]"):
        prepare_calibration(tiny_llama(), source, byte_tokenizer(), column="text", samples=2, seq_len=SEQ_LEN)


def test_fewer_samples_than_asked() -> None:
    with pytest.raises(CalibrationError, match="fewer than the 50 asked"):
        prepare_calibration(tiny_llama(), texts(5), byte_tokenizer(), samples=50, seq_len=SEQ_LEN)
    with pytest.raises(CalibrationError, match="fewer than the 50 asked"):
        prepare_calibration(tiny_bert_classifier(), texts(5), byte_tokenizer(), samples=50, seq_len=SEQ_LEN)


def test_text_without_a_tokenizer() -> None:
    with pytest.raises(CalibrationError, match="needs the model's tokenizer"):
        prepare_calibration(tiny_llama(), texts(5), None, samples=2, seq_len=SEQ_LEN)


def test_self_calibration_is_reproducible_with_a_seed() -> None:
    model = tiny_llama()
    first = self_generate(model, samples=3, seq_len=SEQ_LEN, seed=7, batch_size=2)
    again = self_generate(model, samples=3, seq_len=SEQ_LEN, seed=7, batch_size=2)
    other = self_generate(model, samples=3, seq_len=SEQ_LEN, seed=8, batch_size=2)
    ids = [torch.cat([b["input_ids"] for b in d.batches]) for d in (first, again, other)]
    assert ids[0].shape == (3, SEQ_LEN) and (ids[0][:, 0] == 1).all()  # starts at BOS, full length
    assert torch.equal(ids[0], ids[1]) and not torch.equal(ids[0], ids[2])
    assert first.self_generated and first.describe()["seed"] == 7
    # The global RNG is left alone.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    self_generate(model, samples=1, seq_len=4, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_an_encoder_cannot_calibrate_itself() -> None:
    with pytest.raises(CalibrationError, match="cannot calibrate itself"):
        self_generate(tiny_bert_classifier(), samples=1, seq_len=4)


def test_prune_without_data_self_calibrates_a_causal_lm_and_records_it() -> None:
    model = tiny_llama()
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, calibration_samples=4, calibration_seq_len=SEQ_LEN)
    assert report.extra["calibration"]["self_generated"] is True
    assert report.extra["calibration"]["sequences"] == 4
    assert report.config["importance"] == hf_prune.prune.__globals__["AUTO_CAUSAL_LM"]
    assert report.extra["reconstruction"]["projections"] > 0


def test_auto_criterion_without_reconstruction_is_fisher_on_self_generated_text_only() -> None:
    """On a model's own samples the expected loss gradient is zero, so Taylor scores are noise there: without
    reconstruction to make up for it, 'auto' picks Fisher; on real text it stays Taylor."""
    settings = {"heads": 0.5, "neurons": 0.5, "reconstruct": False, "calibration_samples": 4}
    report = hf_prune.prune(tiny_llama(), calibration_seq_len=SEQ_LEN, **settings)
    assert report.extra["calibration"]["self_generated"] and report.config["importance"] == "fisher"
    given = hf_prune.prune(
        tiny_llama(), calibration=texts(40), tokenizer=byte_tokenizer(), calibration_seq_len=16, **settings
    )
    assert given.config["importance"] == "taylor"


def test_an_encoder_without_data_warns_and_names_the_flag() -> None:
    model = tiny_bert_classifier()
    with pytest.warns(UserWarning, match="--calibration-data"):
        report = hf_prune.prune(model, heads=0.5, neurons=0.5)
    assert report.config["importance"] == "magnitude" and "reconstruction" not in report.extra


def test_reconstruction_or_a_data_criterion_without_data_is_an_error() -> None:
    model = tiny_bert_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for settings in ({"reconstruct": True}, {"importance": "fisher", "reconstruct": False}):
        with pytest.raises(ValueError, match="needs calibration data"):
            hf_prune.prune(model, heads=0.5, neurons=0.5, **settings)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_magnitude_on_a_causal_lm_warns_with_the_measurement() -> None:
    with pytest.warns(UserWarning, match="76,094"):
        hf_prune.prune(tiny_llama(), heads=0.5, importance="magnitude", reconstruct=False)


# ---------------------------------------------------------------------------------------------------------
# The CLI: --calibration-data of every kind, self-calibration cached next to the output, nothing written on error.
# ---------------------------------------------------------------------------------------------------------


def _saved_llama(tmp_path: Path) -> Path:
    folder = tmp_path / "dense"
    tiny_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    from hf_prune.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


SMALL = ("--heads", "0.5", "--neurons", "0.5", "--calibration-samples", "4", "--calibration-seq-len", SEQ_LEN)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "datasets folder"])
def test_cli_calibration_data_of_every_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    source = _write_sources(tmp_path, texts(40))[kind]
    column = ["--calibration-column", "body"] if kind == "jsonl" else []
    output = tmp_path / "pruned"
    code, err = _cli(
        capsys, "prune", _saved_llama(tmp_path), *SMALL, "--calibration-data", source, *column, "-o", output
    )
    assert code == 0, err
    report = json.loads((output / "pruning_report.json").read_text())
    assert report["extra"]["calibration"]["source"] == str(source)
    assert report["extra"]["calibration"]["self_generated"] is False
    assert report["extra"]["reconstruction"]["projections"] > 0
    assert "Calibration data: `" in (output / "README.md").read_text()


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (lambda root: (root / "empty.txt").write_text(""), ["--calibration-data", "empty.txt"], "is empty"),
        (lambda root: None, ["--calibration-data", "missing.csv"], "does not exist"),
        (
            lambda root: (root / "rows.jsonl").write_text('{"body": "a b c"}\n'),
            ["--calibration-data", "rows.jsonl", "--calibration-column", "text"],
            "no column 'text'",
        ),
        (
            lambda root: (root / "few.txt").write_text("only a few words"),
            ["--calibration-data", "few.txt"],
            "fewer than the 4 asked",
        ),
    ],
)
def test_cli_bad_calibration_data_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup, flags: list[str], message: str
) -> None:
    setup(tmp_path)
    flags = [str(tmp_path / f) if f.endswith((".txt", ".csv", ".jsonl")) else f for f in flags]
    output = tmp_path / "pruned"
    code, err = _cli(capsys, "prune", _saved_llama(tmp_path), *SMALL, *flags, "-o", output)
    assert code == 2 and message in err
    assert not output.exists()


def test_cli_self_calibration_is_cached_next_to_the_output_and_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense, output = _saved_llama(tmp_path), tmp_path / "pruned"
    code, err = _cli(capsys, "prune", dense, *SMALL, "-o", output)
    assert code == 0 and "sampling 4 calibration sequences" in err
    cached = json.loads((output / "self_calibration.json").read_text())
    assert len(cached["input_ids"]) == 4 and cached["details"]["seed"] == 0
    card = (output / "README.md").read_text()
    assert "self-calibration" in card
    first = (output / "model.safetensors").read_bytes()
    code, err = _cli(capsys, "prune", dense, *SMALL, "-o", output, "--overwrite")
    assert code == 0 and "reusing the self-generated calibration text" in err
    assert (output / "model.safetensors").read_bytes() == first  # same text, same model
    code, err = _cli(capsys, "prune", dense, *SMALL, "-o", output, "--overwrite", "--seed", "1")
    assert code == 0 and "sampling 4 calibration sequences" in err  # another seed: sampled anew
