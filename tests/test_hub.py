"""push_to_hub against LocalHub: one commit, a card that loads the model as it says, and safe failures."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from huggingface_hub import ModelCard, snapshot_download
from huggingface_hub.utils import _http

import hf_prune
from hf_prune.card import REPO_PLACEHOLDER, write_card
from hf_prune.cli import main
from hf_prune.hub import HubPushError, push_to_hub

from .architectures import CASES_BY_NAME
from .hub_server import LocalHub

REPO = "test-user/tiny-llama-pruned"


def _prune(**overrides: Any) -> tuple[torch.nn.Module, hf_prune.PruningReport]:
    model = CASES_BY_NAME["llama"].build()
    return model, hf_prune.prune(model, heads=0.5, neurons=0.5, **overrides)


def _save(model: torch.nn.Module, report: hf_prune.PruningReport, folder: Path) -> Path:
    hf_prune.save_pretrained(model, folder, extra_files={"pruning_report.json": report.to_json()})
    write_card(folder, report)
    return folder


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 33, 2, 70, 11, 4], [3, 3, 60, 8, 95, 0, 12, 7]])
    with torch.no_grad():
        return model.eval()(ids).logits


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    backend = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _run_card_snippet(code: str) -> torch.nn.Module:
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the card's own code, verbatim
    return namespace["model"]


@pytest.fixture
def pruned_folder(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A uniformly pruned tiny llama saved with its report and card (vanilla-loadable), and its logits."""
    model, report = _prune()
    assert report.vanilla_loadable
    return _save(model, report, tmp_path / "pruned"), _logits(model)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client retries a dropped upload 5 times with 1+2+4+8+8 s of backoff: record the sleeps instead."""
    sleeps: list[float] = []

    class NoSleepTime:
        def sleep(self, seconds: float) -> None:
            sleeps.append(seconds)

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

    monkeypatch.setattr(_http, "time", NoSleepTime())
    return sleeps


def _writes(hub: LocalHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in hub.requests if m in ("POST", "PUT") and p != "/api/validate-yaml"]


def test_push_uniform_folder_then_load_it_as_the_card_says(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor]
) -> None:
    folder, expected = pruned_folder
    local = _digest(folder)

    info = push_to_hub(folder, REPO, commit_message="Add pruned llama")

    commits = local_hub.commits(REPO)
    assert [c.message for c in commits] == ["initial commit", "Add pruned llama"]  # one commit for everything
    assert info.oid == commits[-1].oid and info.commit_url.startswith(local_hub.endpoint)
    assert len([p for m, p in local_hub.requests if m == "POST" and "/commit/" in p]) == 1
    assert _digest(folder) == local  # pushing never writes into the local folder

    snapshot = Path(snapshot_download(REPO))  # into the fixture's fresh, empty cache
    assert sorted(p.name for p in snapshot.iterdir()) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "pruning_report.json",
        "pruning_structure.png",
    ]
    for name in ("model.safetensors", "config.json", "pruning_report.json", "pruning_structure.png"):
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes()
    # The pushed card names the repo where the local one has a placeholder; nothing else differs.
    pushed = (snapshot / "README.md").read_text()
    assert pushed == (folder / "README.md").read_text().replace(REPO_PLACEHOLDER, REPO)

    card = ModelCard.load(snapshot / "README.md")
    card.validate()
    blocks = re.findall(r"```python\n(.*?)```", card.text.split("## How to load it")[1].split("\n## ")[0], re.S)
    assert blocks == [
        f'from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained("{REPO}")\n'
    ]
    model = _run_card_snippet(blocks[0])
    assert type(model) is transformers.LlamaForCausalLM
    assert (_logits(model) - expected).abs().max() <= 1e-5

    again = push_to_hub(folder, REPO)  # the same files again: no new, duplicate commit
    assert again.oid == info.oid and len(local_hub.commits(REPO)) == 2


def test_push_heterogeneous_model_then_load_with_hf_prune_and_remote_code(local_hub: LocalHub, tmp_path: Path) -> None:
    model, report = _prune(protected_layers=[0])
    assert not report.vanilla_loadable
    expected = _logits(model)

    # A model (with its tokenizer) is saved to a temporary folder first.
    push_to_hub(model, REPO, report=report, tokenizer=_tokenizer(), license="apache-2.0")

    snapshot = Path(snapshot_download(REPO))
    assert {p.name for p in snapshot.iterdir()} == {
        ".gitattributes",
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "modeling_pruned.py",
        "surgery.py",
        "pruning_report.json",
        "pruning_structure.png",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert transformers.AutoTokenizer.from_pretrained(REPO)("hello world")["input_ids"] == [1, 2]
    card = ModelCard.load(snapshot / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert f"| Parameters | {report.before.parameters:,} | {report.after.parameters:,} |" in card.text
    hf_prune_code, remote_code = re.findall(r"```python\n(.*?)```", card.text.split("## How to load it")[1], re.S)[:2]
    assert f'hf_prune.from_pretrained("{REPO}")' in hf_prune_code
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", trust_remote_code=True)' in remote_code

    assert (_logits(_run_card_snippet(hf_prune_code)) - expected).abs().max() <= 1e-5

    # transformers alone, in a fresh process where hf_prune cannot be imported: only the repo's loader code runs.
    ids_path, out_path = tmp_path / "ids.pt", tmp_path / "logits.pt"
    torch.save(torch.tensor([[1, 5, 9, 33, 2, 70, 11, 4], [3, 3, 60, 8, 95, 0, 12, 7]]), ids_path)
    script = "\n".join(
        [
            "import sys",
            "sys.modules['hf_prune'] = None  # `import hf_prune` fails",
            "import torch",
            remote_code,
            "with torch.no_grad():",
            "    torch.save(model.eval()(torch.load(sys.argv[1])).logits, sys.argv[2])",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ids_path), str(out_path)],
        env=os.environ.copy(),  # the fixture's HF_ENDPOINT, HF_HOME and HF_TOKEN
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (torch.load(out_path) - expected).abs().max() <= 1e-5


def test_failed_commit_leaves_hub_and_folder_unchanged_and_retry_commits_once(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor]
) -> None:
    folder, _ = pruned_folder
    local = _digest(folder)
    local_hub.fail_next_commit(status=500)

    with pytest.raises(HubPushError) as failure:
        push_to_hub(folder, REPO)

    message = str(failure.value)
    assert f"pushing to '{REPO}' failed" in message and "500" in message
    assert f"Nothing was committed: '{REPO}' (main) is unchanged" in message and "Retrying is safe" in message
    assert [c.message for c in local_hub.commits(REPO)] == ["initial commit"]
    assert _digest(folder) == local

    retry = push_to_hub(folder, REPO)
    assert [c.oid for c in local_hub.commits(REPO)][1:] == [retry.oid]  # exactly one new commit
    assert local_hub.files(REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert push_to_hub(folder, REPO).oid == retry.oid and len(local_hub.commits(REPO)) == 2


def test_dropped_lfs_upload_commits_nothing_and_retry_commits_once(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor], no_backoff: list[float]
) -> None:
    folder, _ = pruned_folder
    local = _digest(folder)
    # Two LFS files (weights and picture), uploaded in parallel: 6 drops each fail the first PUT and 5 retries.
    local_hub.drop_next_lfs_upload(times=12)

    with pytest.raises(HubPushError, match=rf"(?s)pushing to '{REPO}' failed.*Nothing was committed.*safe"):
        push_to_hub(folder, REPO)

    assert len(no_backoff) == 10
    assert not [p for m, p in local_hub.requests if m == "POST" and "/commit/" in p]
    assert len(local_hub.commits(REPO)) == 1 and _digest(folder) == local

    retry = push_to_hub(folder, REPO)
    assert [c.oid for c in local_hub.commits(REPO)][1:] == [retry.oid]
    assert local_hub.files(REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_missing_token_is_refused_before_any_request(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")  # and the fixture's token file does not exist

    with pytest.raises(PermissionError, match=r"token missing or invalid: run `hf auth login` or pass token="):
        push_to_hub(pruned_folder[0], REPO)
    assert local_hub.requests == []


def test_invalid_token_is_refused_before_any_write(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor]
) -> None:
    with pytest.raises(PermissionError, match=r"token missing or invalid.*Invalid user token"):
        push_to_hub(pruned_folder[0], REPO, token="hf_not_a_valid_token")
    assert local_hub.requests == [("GET", "/api/whoami-v2")]


@pytest.mark.parametrize("repo_id", ["bad repo id!!", "a/b/c", "user/name--x", ""])
def test_invalid_repo_id_is_refused_before_any_request(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor], repo_id: str
) -> None:
    with pytest.raises(ValueError, match="invalid repo id"):
        push_to_hub(pruned_folder[0], repo_id)
    assert local_hub.requests == []


def test_folder_that_is_not_a_checkpoint_is_refused(
    local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"does not look like a saved checkpoint: no \*\.safetensors"):
        push_to_hub(tmp_path / "empty", REPO)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        push_to_hub(tmp_path / "missing", REPO)
    with pytest.raises(ValueError, match="tokenizer"):
        push_to_hub(pruned_folder[0], REPO, tokenizer=object())
    with pytest.raises(ValueError, match="PruningReport"):
        push_to_hub(torch.nn.Linear(2, 2), REPO)
    assert local_hub.requests == []


def test_pull_request_branch_and_visibility(local_hub: LocalHub, pruned_folder: tuple[Path, torch.Tensor]) -> None:
    folder, _ = pruned_folder
    base = push_to_hub(folder, REPO)
    (folder / "extra.txt").write_text("an addition, proposed as a pull request")

    pr = push_to_hub(folder, REPO, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and local_hub.refs(REPO) == {"main": base.oid, "refs/pr/1": pr.oid}
    assert "extra.txt" in local_hub.files(REPO, "refs/pr/1") and "extra.txt" not in local_hub.files(REPO)

    with pytest.raises(HubPushError, match="branch 'dev' does not exist"):
        push_to_hub(folder, REPO, revision="dev")
    with pytest.raises(HubPushError, match="already exists and is public"):
        push_to_hub(folder, REPO, private=True)
    assert push_to_hub(folder, "test-user/new-private-repo", private=True).oid  # a new repo is created private
    assert local_hub.refs(REPO) == {"main": base.oid, "refs/pr/1": pr.oid}


def test_which_card_and_files_are_pushed(local_hub: LocalHub, tmp_path: Path) -> None:
    model, report = _prune()
    folder = tmp_path / "trainer-output"
    hf_prune.save_pretrained(model, folder, extra_files={"pruning_report.json": report.to_json()})
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"\0" * 64)
    (folder / ".README.md.abc.tmp").write_text("half of an interrupted write")

    push_to_hub(folder, REPO)  # no card in the folder: built from its pruning_report.json

    files = local_hub.files(REPO)
    assert not [name for name in files if name.startswith("checkpoint-") or name.endswith(".tmp")]
    assert not (folder / "README.md").exists()  # the local folder is left as it is
    card = ModelCard(files["README.md"].decode())
    assert card.data.license is None and f'from_pretrained("{REPO}")' in card.text
    assert "pruning_structure.png" in files

    write_card(folder, report)
    push_to_hub(folder, REPO, license="mit")  # card arguments: the card is rebuilt with them
    assert ModelCard(local_hub.files(REPO)["README.md"].decode()).data.license == "mit"
    assert ModelCard.load(folder / "README.md").data.license is None

    (folder / "pruning_report.json").unlink()
    with pytest.raises(ValueError, match=r"license describe the model card, but .* has no pruning_report\.json"):
        push_to_hub(folder, REPO, license="mit")


def test_cli_push_and_prune_with_push_to_hub(
    local_hub: LocalHub,
    pruned_folder: tuple[Path, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _ = pruned_folder
    assert main(["push", str(folder), REPO, "--commit-message", "from the CLI"]) == 0
    assert local_hub.commits(REPO)[-1].message == "from the CLI"
    assert f"commit: {local_hub.endpoint}/{REPO}/commit/" in capsys.readouterr().out

    assert main(["push", str(folder), "bad repo id!!"]) == 2
    assert "error: invalid repo id 'bad repo id!!'" in capsys.readouterr().err
    requests_before = len(local_hub.requests)
    assert main(["push", str(folder), REPO, "--token", "hf_not_a_valid_token"]) == 2
    assert "error: token missing or invalid" in capsys.readouterr().err
    assert local_hub.requests[requests_before:] == [("GET", "/api/whoami-v2")]

    source = tmp_path / "source"
    CASES_BY_NAME["llama"].build().save_pretrained(source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny llama\n")
    output = tmp_path / "cli-pruned"
    repo = "test-user/cli-pruned"
    argv = ["prune", str(source), "-o", str(output), "--heads", "0.5", "--neurons", "0.5", "--push-to-hub", repo]

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert f"saved to {output}" in out and f"commit: {local_hub.endpoint}/{repo}/commit/" in out
    local_card = ModelCard.load(output / "README.md")
    assert local_card.data.license == "apache-2.0"  # carried over from the source model's card
    assert local_card.data.base_model is None  # the source is a local folder: no Hub id to name
    assert f'AutoModelForCausalLM.from_pretrained("{repo}")' in local_card.text
    assert local_hub.files(repo)["README.md"] == (output / "README.md").read_bytes()
    assert (output / "pruning_structure.png").read_bytes() == local_hub.files(repo)["pruning_structure.png"]

    # Without --push-to-hub the folder still gets its card.
    assert main([*argv[:-2], "-o", str(tmp_path / "cli-local")]) == 0
    assert REPO_PLACEHOLDER in (tmp_path / "cli-local" / "README.md").read_text()
