"""The wheel ships the YAML recipes inside the package, and an installed hf_prune finds them there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel with pip, the ordinary client. With hatchling installed the build runs offline
    (--no-build-isolation); otherwise pip fetches the build backend from the configured package index."""
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)]
    if importlib.util.find_spec("hatchling") is not None:
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (
        f"building the wheel failed; install the build backend with `pip install hatchling` (pyproject's "
        f"[build-system]).\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    wheels = list(out.glob("hf_prune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_every_recipe_under_the_package(wheel: Path) -> None:
    assert RECIPES, "no recipes in the source tree"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for recipe in RECIPES:
            member = f"hf_prune/recipes/{recipe.name}"
            assert member in names, f"{member} missing from {wheel.name}"
            assert archive.read(member) == recipe.read_bytes()
        assert {n for n in names if n.startswith("hf_prune/recipes/")} == {
            f"hf_prune/recipes/{r.name}" for r in RECIPES
        }
        # The loader files copied next to pruned checkpoints must ship too.
        assert {"hf_prune/modeling_pruned.py", "hf_prune/surgery.py"} <= names
        assert not any(n.startswith(("tests/", "recipes/", "benchmarks/", "examples/")) for n in names)
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "hf-prune = hf_prune.cli:main" in archive.read(entry_points).decode()


def test_installed_wheel_finds_its_recipes(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what an install puts in site-packages, minus the metadata bookkeeping
    probe = textwrap.dedent(
        """
        import json
        import hf_prune
        from hf_prune.recipe import recipes_dir, shipped_recipes
        names = sorted(shipped_recipes())
        print(json.dumps({"module": hf_prune.__file__, "dir": str(recipes_dir()), "recipes": names}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    # Run from an unrelated directory so the source checkout cannot be imported instead.
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["module"]).resolve().is_relative_to(site.resolve()), found["module"]
    assert Path(found["dir"]).resolve() == (site / "hf_prune" / "recipes").resolve()
    assert found["recipes"] == [r.stem for r in RECIPES]
