"""Adding a kind touches only its module, a recipe and a test row: tests/plugin_kind.py defines a kind hf_prune does
not ship, and every path (one-shot prune, masks, the report and card, save and load, the CLI, the Trainer callback)
handles it without a line of hf_prune naming it. Its units are what hf_prune's own ``neurons`` are, so it must prune
exactly as they do."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml

import hf_prune
from hf_prune import surgery
from hf_prune.cli import main
from hf_prune.kinds import base, register_kind
from hf_prune.recipe import RecipeError
from hf_prune.structure import ModelStructure

from . import plugin_kind
from .architectures import CASES_BY_NAME, STRUCTURE_ONLY
from .test_architectures import ATOL, _assert_same_generation
from .test_callback import _args, _dataset

NAME = plugin_kind.NAME


@pytest.fixture
def recipe() -> Iterator[dict[str, object]]:
    """The plugin kind registered for one test, and its recipe; the registry is put back afterwards, so no other
    test sees the kind (registration is process-wide)."""
    registry, restorers, restored = dict(base._REGISTRY), list(surgery.RESTORERS), set(surgery.RESTORED_KINDS)
    register_kind(plugin_kind.KIND)
    try:
        yield plugin_kind.recipe_dict()
    finally:
        base._REGISTRY.clear()
        base._REGISTRY.update(registry)
        surgery.RESTORERS[:] = restorers
        surgery.RESTORED_KINDS.clear()
        surgery.RESTORED_KINDS.update(restored)


def _llama() -> torch.nn.Module:
    return CASES_BY_NAME["llama"].build()


def _ids() -> torch.Tensor:
    return torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


def test_a_kind_from_outside_prunes_exactly_as_the_shipped_neurons(recipe: dict[str, object]) -> None:
    """The recipe's default target (25% of the FFN channels) removes what neurons=0.25 removes, weight for weight,
    and the report counts it and its cost."""
    plugin, shipped = _llama(), _llama()
    report = hf_prune.prune(plugin, recipe=recipe, **STRUCTURE_ONLY)
    hf_prune.prune(shipped, recipe="llama", heads=0.0, neurons=0.25, neuron_multiple=1, **STRUCTURE_ONLY)
    for (name, a), (_, b) in zip(plugin.state_dict().items(), shipped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    before, after = report.layers_before, report.layers_after
    assert [layer[NAME] for layer in after] == [72] * 3 and [layer[NAME] for layer in before] == [96] * 3
    removed = 3 * 24 * 3 * plugin.config.hidden_size  # 3 blocks x 24 channels x a row of gate and up, a column of down
    assert report.before.block_parameters - report.after.block_parameters == removed
    card = hf_prune.build_model_card(report).content
    assert "| FFN channels kept |" in card and "216 of 288 FFN channels" in card, card


def test_masked_equals_pruned_in_forward_and_generation(recipe: dict[str, object]) -> None:
    pruned = _llama()
    masked = copy.deepcopy(pruned)
    report = hf_prune.prune(pruned, recipe=recipe, kinds={NAME: 0.5}, ranking="global", **STRUCTURE_ONLY)
    assert len({layer[NAME] for layer in report.layers_after}) > 1  # global ranking: the blocks differ
    masks = hf_prune.MaskSet(ModelStructure(masked, recipe))
    masks.set_from_plan([hf_prune.LayerPlan(**kept) for kept in report.kept])
    masks.attach()
    torch.testing.assert_close(_logits(pruned), _logits(masked), atol=ATOL, rtol=0)
    _assert_same_generation(pruned, masked, _ids()[:1, :5], max_new_tokens=6)


LOAD_WITHOUT_HF_PRUNE = textwrap.dedent(
    """
    import sys
    sys.modules["hf_prune"] = None
    import transformers
    try:
        transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    except ValueError as err:
        print(err)
    else:
        print("loaded")
    """
)


def test_checkpoint_reloads_with_hf_prune_and_is_refused_by_name_without_it(
    recipe: dict[str, object], tmp_path: Path
) -> None:
    """hf_prune (with the kind's module imported) rebuilds the pruned blocks; the loader copied next to the weights
    does not know the kind, and says so instead of building a dense model."""
    model = _llama()
    report = hf_prune.prune(model, recipe=recipe, kinds={NAME: 0.5}, ranking="global", **STRUCTURE_ONLY)
    assert not report.vanilla_loadable  # the config has no attribute for the kind's count
    hf_prune.save_pretrained(model, tmp_path)
    # Format 3: an hf_prune older than registered kinds refuses it ("upgrade") instead of ignoring its counts.
    assert json.loads((tmp_path / "config.json").read_text())["hf_prune"]["format_version"] == 3
    loaded = hf_prune.from_pretrained(tmp_path).eval()
    assert ModelStructure(loaded).shapes() == ModelStructure(model).shapes()
    torch.testing.assert_close(_logits(loaded), _logits(model.eval()), atol=ATOL, rtol=0)

    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HF_PRUNE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert f"records pruned units of kind(s) ['{NAME}']" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "import` the module that registers the kind" in result.stdout


def test_cli_takes_the_kind_s_fraction(recipe: dict[str, object], tmp_path: Path) -> None:
    source, output = tmp_path / "dense", tmp_path / "pruned"
    _llama().save_pretrained(source)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    flags = ["--recipe", str(recipe_file), "--kinds", f"{NAME}=0.5", "--importance", "magnitude", "--no-reconstruct"]
    code = main(["prune", str(source), "--output", str(output), *flags])
    assert code == 0
    layers = json.loads((output / "config.json").read_text())["hf_prune"]["layers"]
    assert [layer[NAME] for layer in layers] == [48] * 3
    assert "FFN channels" in (output / "README.md").read_text()


def test_trainer_callback_masks_and_removes_the_kind(recipe: dict[str, object], tmp_path: Path) -> None:
    model = _llama()
    config = hf_prune.PruningConfig(recipe=recipe, kinds={NAME: 0.5}, importance="taylor", end=0.75, update_every=3)
    args = _args(tmp_path, max_steps=12)
    T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[hf_prune.PruningCallback(config)]).train()
    assert [shape[NAME] for shape in ModelStructure(model, recipe).shapes()] == [48] * 3


def test_bad_kind_settings_are_refused_by_name(recipe: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"kinds=\['routers'\]: no registered kind"):
        hf_prune.prune(_llama(), recipe=recipe, kinds={"routers": 0.5}, **STRUCTURE_ONLY)
    with pytest.raises(ValueError, match="set experts= directly"):
        hf_prune.PruningConfig(kinds={"experts": 0.5})
    with pytest.raises(ValueError, match=r"kinds\['ffn_channels'\]` must be a fraction"):
        hf_prune.PruningConfig(kinds={NAME: 1.0})
    with pytest.raises(SystemExit):
        main(["prune", "model", "--output", "out", "--kinds", NAME])  # no =FRACTION


def test_a_recipe_naming_an_unregistered_kind_is_refused() -> None:
    """Its module was not imported (or the name is wrong): the section and the target are refused, not ignored."""
    assert not plugin_kind.is_registered()
    data = plugin_kind.recipe_dict()
    with pytest.raises(
        RecipeError, match=r"unknown key\(s\) \['ffn_channels'\]; allowed keys are .* registered unit kind"
    ):
        hf_prune.Recipe.from_dict(data)
    data["targets"] = {"heads": 0.0}
    with pytest.raises(RecipeError, match=r"kinds \['ffn_channels'\] are not registered .* import the module"):
        hf_prune.Recipe.from_dict(data)
