"""The benchmark scripts' --smoke paths, in-process, on tiny random models (seconds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TP_INSTALL = "pip install -c constraints.txt torch-pruning==1.6.1"


def _run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script> args`` in a fresh interpreter; fail with its stderr if it fails."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_smoke_models_are_seeded() -> None:
    """Each smoke run is a fresh process: the tiny models must not draw new weights every time (an unseeded
    init made the equal-counts assertion of the decoder smoke fail in about one run in twelve)."""
    assets = _load_script("assets")
    first, _ = assets.tiny_smollm2()
    second, _ = assets.tiny_smollm2()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_peer_smoke(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch_pruning") is None:
        pytest.fail(f"Torch-Pruning is not installed (the dev extra pins it): `{TP_INSTALL}`.", pytrace=False)
    peer = _load_script("peer_torch_pruning")
    output = tmp_path / "peer.json"
    peer.main(["--smoke", "--output", str(output)])
    data = json.loads(output.read_text())

    assert set(data) == {"meta", "probes", "results"}
    meta = data["meta"]
    for key in ("machine", "device", "torch", "transformers", "torch_pruning", "hf_prune", "command", "setup"):
        assert meta[key], key
    assert meta["torch_pruning"] == "1.6.1" and meta["smoke"] is True and meta["complete"] is True
    assert {"terminated", "max_channel_index_reached"} <= set(data["probes"]["llama_rope_trace"])
    assert "error" in data["probes"]["llama_sdpa_gqa"]

    results = data["results"]
    assert [(r["model"], r["target"]) for r in results] == [
        ("tiny-bert", {"heads": f, "neurons": f}) for f in (0.25, 0.5, 0.75)
    ] + [("tiny-llama", {"params": f}) for f in (0.1, 0.2, 0.3)]
    for r in results:
        hfp, tp = r["hf_prune"], r["torch_pruning"]
        where = f"{r['model']} {r['target']}"
        # Torch-Pruning built exactly what it was asked for, with Taylor scores too, and removed whole units.
        assert tp["matches_request"] and not tp["consistency_problems"], where
        assert tp["taylor"]["matches_request"], where
        assert tp["equivalent_to_masked_dense"]["ok"], where
        assert hfp["layers_after"] != r["layers_before"], f"{where}: nothing was pruned"
        for result in (hfp, tp):
            assert result["latency"]["dense_ms"] > 0 and result["latency"]["pruned_ms"] > 0
        assert "ok" in tp["reload"] and (tp["reload"]["ok"] or tp["reload"]["error"]), where
        assert tp["flops_ratio"] > 1 and hfp["flops_ratio"] > 1, where
        if r["model"] == "tiny-bert":
            assert tp["matches_hf_prune"] and tp["parameters"] == hfp["parameters"], where
            assert tp["flops_ratio"] == hfp["flops_ratio"], where
        else:
            # GQA: TP keeps every KV head; the query heads and neurons are hf_prune's.
            for got, want in zip(tp["layers_after"], hfp["layers_after"], strict=True):
                assert (got["heads"], got["neurons"]) == (want["heads"], want["neurons"]), where
                assert got["kv_heads"] == r["layers_before"][0]["kv_heads"], where
    # hf_prune removes whole KV groups at -30% (6q/2kv); TP's nearest keeps 3 KV heads and says so.
    last = results[-1]["torch_pruning"]
    assert not last["matches_hf_prune"] and last["request_notes"] and last["differences_from_hf_prune"]


@pytest.mark.parametrize(
    ("script", "result"),
    [
        ("speed.py", "speed-smoke.json"),
        ("quality_encoder.py", "quality_encoder-smoke.json"),
        ("quality_decoder.py", "quality_decoder-smoke.json"),
    ],
)
def test_benchmark_scripts_smoke(script: str, result: str) -> None:
    """Each benchmark script runs end to end on tiny random models and writes its JSON."""
    path = BENCHMARKS / "results" / result
    path.unlink(missing_ok=True)
    extra = ["--criteria", "magnitude", "taylor"] if script.startswith("quality") else []
    _run_script(script, "--smoke", *extra)
    data = json.loads(path.read_text())
    assert data["meta"]["smoke"] is True
    assert path.with_suffix(".png").stat().st_size > 0
    for key in ("device", "machine", "torch", "transformers", "hf_prune", "command"):
        assert data["meta"][key], key
    if script == "speed.py":
        assert {r["model"] for r in data["results"]} == {"minilm", "smollm2"}
        assert all(row["forward_speedup"] > 0 for r in data["results"] for row in r["rows"])
        return
    # The plot can be redrawn from the JSON alone.
    path.with_suffix(".png").unlink()
    _run_script(script, "--smoke", "--replot", timeout=120)
    assert path.with_suffix(".png").stat().st_size > 0
    curves = data["curves"]
    x = "flops_removed" if script == "quality_encoder.py" else "params_removed"
    for criterion in ("magnitude", "taylor"):
        assert f"hf_prune {criterion}, one-shot, global" in curves
    for name, points in curves.items():
        assert all(0 < p[x] < 1 for p in points), name
    # Same per-layer counts for both tools (the decoder plans with the layouts TP can build under GQA).
    for criterion in ("magnitude", "taylor"):
        if script == "quality_encoder.py":
            ours = curves[f"hf_prune {criterion}, one-shot, uniform"]
            theirs = curves[f"Torch-Pruning {criterion}, one-shot, uniform"]
        else:
            ours = curves[f"hf_prune {criterion}, one-shot, global, query heads only"]
            theirs = curves[f"Torch-Pruning {criterion}, one-shot, at hf_prune's counts"]
        assert [p[x] for p in ours] == pytest.approx([p[x] for p in theirs])
        assert all(p.get("matches_hf_prune_counts", True) for p in theirs)
    if script == "quality_decoder.py":
        assert data["meta"]["complete"] is True
        assert any(name.endswith("-step recovery") for name in curves)
        assert data["dense_fine_tuned_perplexity"] > 0


def test_summary_prints_the_committed_results() -> None:
    """benchmarks/summary.py turns the committed result files into the README's tables."""
    run = _run_script("summary.py", timeout=120)
    for name in ("speed-cpu.json", "quality_encoder.json", "quality_decoder.json", "peer_torch_pruning.json"):
        if (BENCHMARKS / "results" / name).is_file():
            data = json.loads((BENCHMARKS / "results" / name).read_text())
            assert data["meta"]["command"] in run.stdout, name


def test_tp_counts_check_smoke() -> None:
    """At the counts Torch-Pruning builds, hf_prune's own Taylor choice is evaluated (tiny random Llama)."""
    path = BENCHMARKS / "results" / "tp_counts_check-smoke.json"
    path.unlink(missing_ok=True)
    _run_script("tp_counts_check.py", "--smoke")
    data = json.loads(path.read_text())
    for key in ("hf_prune_plan_perplexity", "torch_pruning_perplexity", "hf_prune_at_torch_pruning_counts_perplexity"):
        assert data[key] > 0, key
    assert isinstance(data["layers_differing"], list) and data["meta"]["smoke"] is True


def test_quality_oneshot_smoke(tmp_path: Path) -> None:
    """The one-shot benchmark measures every criterion x reconstruction x calibration source on two held-out
    texts, with standard errors, and the default path at the other targets."""
    output = tmp_path / "oneshot.json"
    _run_script("quality_oneshot.py", "--smoke", "--output", str(output), "--default", "taylor:bias+scales")
    data = json.loads(output.read_text())
    assert data["meta"]["smoke"] is True and data["meta"]["complete"] is True
    assert set(data["dense"]) == {"hamlet", "modern_prose"}
    sweep = [p for p in data["points"] if p["target"] == 0.2]
    combos = {(p["calibration"], p["criterion"], p["reconstruction"]) for p in sweep}
    reconstructions = ("none", "bias", "bias+scales", "bias+weights")
    sources, criteria = ("plays", "self-generated"), ("taylor", "fluctuation")
    assert combos == {(s, c, r) for s in sources for c in criteria for r in reconstructions}
    for point in data["points"]:
        for text in ("hamlet", "modern_prose"):
            assert point["eval"][text]["ppl"] > 0 and point["eval"][text]["se"] >= 0
        assert 0 < point["params_removed"] < 1
        assert bool(point["reconstruction_summary"]) == (point["reconstruction"] != "none")
    assert all(p["reconstruction_summary"]["refit_weights"] == 0 for p in sweep if p["reconstruction"] == "bias")


def test_oneshot_cost_smoke(tmp_path: Path) -> None:
    """The cost benchmark times calibration and reconstruction apart and reports peak memory against the model."""
    output = tmp_path / "cost.json"
    _run_script("oneshot_cost.py", "--smoke", "--threads", "1", "--output", str(output))
    data = json.loads(output.read_text())
    assert data["meta"]["smoke"] is True and data["threads"] == 1
    assert data["calibrate_seconds"] > 0 and data["prune_and_reconstruct_seconds"] > 0
    assert data["total_seconds"] == pytest.approx(
        data["calibrate_seconds"] + data["prune_and_reconstruct_seconds"], abs=0.11
    )
    assert data["rss_peak_bytes"] >= data["rss_before_bytes"] > data["rss_interpreter_bytes"] > 0
    assert data["model_fp32_bytes"] > 0 and 0 < data["params_removed"] < 1
    assert data["reconstruction_summary"]["projections"] > 0


def test_quality_oneshot_peer_smoke(tmp_path: Path) -> None:
    """Torch-Pruning is measured in the same run as hf_prune's default path, at identical per-layer counts."""
    output = tmp_path / "peer.json"
    args = ["--criteria", "taylor", "--reconstructions", "bias+weights", "--default-targets", "--sources", "plays"]
    _run_script("quality_oneshot.py", "--smoke", *args, "--peer", "--output", str(output))
    data = json.loads(output.read_text())
    assert data["meta"]["complete"] is True and "self_calibration_seconds" not in data
    ours, theirs = (p for p in data["points"] if p.get("peer_comparison"))
    assert ours["criterion"] == "taylor, query heads only" and ours["reconstruction"] == "bias+weights"
    assert theirs["criterion"] == "Torch-Pruning taylor" and theirs["matches_hf_prune_counts"] is True
    # Same heads and neurons; hf_prune's bias compensation adds bias vectors (a few per mille on a real model,
    # more on this tiny one), so it removed slightly fewer parameters than TP did.
    assert ours["params_removed"] < theirs["params_removed"] < ours["params_removed"] + 0.02
    for point in (ours, theirs):
        assert point["eval"]["hamlet"]["ppl"] > 0 and point["eval"]["modern_prose"]["ppl"] > 0


def test_quality_encoder_default_path_smoke() -> None:
    """The encoder's default one-shot path is measured with its ablation and Torch-Pruning at its counts,
    each difference with a paired standard error."""
    path = BENCHMARKS / "results" / "quality_encoder_default-smoke.json"
    path.unlink(missing_ok=True)
    _run_script("quality_encoder.py", "--smoke", "--default-path")
    data = json.loads(path.read_text())
    methods = [p["method"] for p in data["points"]]
    assert methods == [
        "hf_prune default (fisher, reconstruction)",
        "hf_prune, no reconstruction",
        "Torch-Pruning taylor, at hf_prune's counts",
    ]
    default, bare, peer = data["points"]
    assert default["reconstruction_summary"]["projections"] > 0 and default["vs_dense"]["se"] >= 0
    for point in (bare, peer):
        assert point["flops_removed"] == default["flops_removed"] and point["default_minus"]["se"] >= 0


def test_export_onnx_runtime_smoke(tmp_path: Path) -> None:
    output = tmp_path / "ort.json"
    _run_script("export_onnx_runtime.py", "--smoke", "--output", str(output))
    data = json.loads(output.read_text(encoding="utf-8"))
    layouts = data["layouts"]
    assert list(layouts) == ["dense", "uniform", "global"]
    assert len({json.dumps(s) for s in layouts["global"]["layers"]}) > 1  # global ranking: layers differ
    for entry in layouts.values():
        assert entry["max_abs_diff_vs_torch"] <= 1e-4
        assert [row["batch_size"] for row in entry["rows"]] == [1, 8]
        assert all(row["median_ms"] > 0 and row["speedup"] > 0 for row in entry["rows"])
    assert layouts["uniform"]["flops_ratio"] > 1


def test_quality_depth_smoke(tmp_path: Path) -> None:
    """Sublayers alone, depth (each criterion), width at the same parameter count and the mix, each scored and
    timed."""
    output = tmp_path / "depth.json"
    _run_script("quality_depth.py", "--smoke", "--sublayers", "--output", str(output))
    data = json.loads(output.read_text())
    assert data["meta"]["complete"] is True and data["dense"]["blocks"] == 2
    kinds = [(p["kind"], p["method"]) for p in data["points"]]
    assert [k for k, _ in kinds] == ["sublayers", "sublayers", "depth", "depth", "depth", "width", "mixed"]
    assert [m for k, m in kinds if k == "depth"] == ["block_influence", "angular", "loss"]
    attention, mlp = data["points"][:2]
    assert [list(p["removed_sublayers"]) for p in (attention, mlp)] == [["attention"], ["mlp"]]
    assert attention["layers_after"][attention["removed_sublayers"]["attention"][0]]["heads"] == 0
    assert 0 < attention["params_removed"] < mlp["params_removed"] < 0.5  # an MLP holds more than an attention
    depth = data["points"][2]
    assert depth["blocks"] == 1 and len(depth["removed_layers"]) == 1
    width = data["points"][5]
    assert width["blocks"] == 2 and width["params_removed"] == pytest.approx(depth["params_removed"], abs=0.05)
    for point in [data["dense"], *data["points"]]:
        assert point["eval"]["hamlet"]["ppl"] > 0 and point["decode_ms"]["batch_1"] > 0
    # Re-timing rebuilds each point's shapes (the parameter count is checked inside) and rewrites the timings.
    _run_script("quality_depth.py", "--smoke", "--latency-only", str(output))
    again = json.loads(output.read_text())
    assert again["meta"]["latency"]["retimed"] is True
    assert [p["eval"] for p in again["points"]] == [p["eval"] for p in data["points"]]


def test_quality_experts_smoke(tmp_path: Path) -> None:
    """A small Mixtral is trained, then each criterion removes 25% and 50% of its experts, and of the neurons inside
    every expert (the criteria that score them); every point is scored."""
    output = tmp_path / "experts.json"
    run = _run_script("quality_experts.py", "--smoke", "--output", str(output))
    assert "magnitude scores destroy" not in run.stderr  # that warning measured heads and neurons, not experts
    data = json.loads(output.read_text())
    assert data["meta"]["smoke"] is True and data["model"]["num_local_experts"] == 8
    criteria = {"experts": ["random", "magnitude", "frequency", "reap", "taylor"]}
    criteria["expert_neurons"] = ["random", "magnitude", "taylor"]  # routing statistics score whole experts only
    assert [(p["kind"], p[f"{p['kind']}_removed"], p["criterion"]) for p in data["points"]] == [
        (k, f, c) for k in ("experts", "expert_neurons") for f in (0.25, 0.5) for c in criteria[k]
    ]
    width = data["model"]["intermediate_size"]
    for point in data["points"]:
        removed = point[f"{point['kind']}_removed"]
        if point["kind"] == "experts":
            assert point["experts_after"] == [8 - int(8 * removed)] * 2 and point["expert_width_after"] == [width] * 2
        else:  # the same number of neurons from every expert, FLOPs per token lower
            assert point["experts_after"] == [8] * 2 and point["expert_width_after"] == [int(width * (1 - removed))] * 2
            assert point["flops_ratio"] > 1.05
        assert point["parameters"] < data["model"]["parameters"]
        assert all(point["eval"][text]["ppl"] > 1 for text in ("hamlet", "modern_prose"))
    assert all(abs(sum(shares) - 1) < 1e-3 for shares in data["expert_share"])


@pytest.mark.real_model
def test_compaction_speed_smoke() -> None:
    """The compaction benchmark on 64 real reviews: each run prints its row, and compaction lands on the masking
    run's structure."""
    run = _run_script("compaction_speed.py", "--max-train-samples", "64", "--flops", "0.6")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"run"')]
    assert [r["run"] for r in rows] == ["dense", "masked 60%", "compact 60%"]
    assert rows[1]["parameters_after"] == rows[2]["parameters_after"] < 22_713_986
