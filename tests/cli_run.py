"""Running the ``hf-prune`` command line in-process, for the tests of each command."""

from __future__ import annotations

from typing import Any

import pytest

from hf_prune.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """``hf-prune ARGV...`` -> (exit code, stdout, stderr); arguments may be paths."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
