"""The lab's helper that evaluates an uninstalled weights file through the runtime's zoo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from psic_lab.evaluation.weights import install_weights


def test_install_weights_points_zoo_at_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSIC_WEIGHTS", raising=False)
    src = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(src), metadata={"model_id": "psic-test"})
    folder = tmp_path / "zoo"
    folder.mkdir()
    assert install_weights(src, folder) == "psic-test"
    assert (folder / "w.safetensors").read_bytes() == src.read_bytes()
    assert os.environ["PSIC_WEIGHTS"] == str(folder)


def test_install_weights_without_model_id_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(src), metadata={"other": "1"})
    with pytest.raises(ValueError, match="model_id"):
        install_weights(src, tmp_path)
