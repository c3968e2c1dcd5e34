"""What the docs and the package promise about keys, sealing and the research weights."""

from __future__ import annotations

import re
import sys

import pytest
from typer.testing import CliRunner

from psic_cli.cli import app

from .conftest import REPO

SECRET = re.compile(r"\bsecret\b", re.IGNORECASE)


def test_rate_distortion_weights_are_off_the_runtime_path():
    """They decode any shipped file without its condition: never in weights/ (which the zoo reads) nor in
    the package."""
    from psic_cli.zoo import list_models

    assert not (REPO / "weights" / "rd").exists()
    assert (REPO / "lab_weights" / "rd" / "README.md").is_file()
    assert all("lab_weights" not in str(m.path) for m in list_models())
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any("weights" in pat for pat in setuptools["packages"]["find"]["include"])
    assert not any("weights" in pat for pats in setuptools.get("package-data", {}).values() for pat in pats)


def test_no_text_calls_the_key_a_secret():
    """The key is a switch between views, not a lock; only the threat model may use the word (to say so)."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "psic_cli").rglob("*.py"))]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in texts if p.name != "threat-model.md"
            for i, line in enumerate(p.read_text().splitlines(), 1) if SECRET.search(line)]
    assert hits == []
    runner = CliRunner()
    for cmd in ([], ["encode"], ["decode"], ["info"], ["seal"], ["unseal"], ["keygen"]):
        out = runner.invoke(app, [*cmd, "--help"]).stdout
        assert not SECRET.search(out), cmd
    assert "not a lock" in " ".join(runner.invoke(app, ["--help"]).stdout.split())


def test_threat_model_states_the_measurements():
    text = (REPO / "docs" / "threat-model.md").read_text()
    for fact in ("37-40 dB", "193 decodes", "111 s", "45 dB", "60-step", "224x224", "lab_weights/rd/"):
        assert fact in text, fact
    assert "docs/threat-model.md" in (REPO / "README.md").read_text()
