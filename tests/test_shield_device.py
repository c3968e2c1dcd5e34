"""The shield stage on another device: the device option, the text tower that is only loaded when a text is
encoded, and the one-call device script on a tiny CPU run (never a GPU in tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from .conftest import EXAMPLES, REPO

MSH2C = REPO / "lab_weights" / "rd" / "psic-msh2c.safetensors"


def test_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused_there():
    from psic_lab.training.shield import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():  # pragma: no cover - CI and this machine have no GPU
        pytest.skip("a CUDA device is present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")


def test_image_only_use_of_the_target_never_loads_the_text_tower(monkeypatch):
    """The device has no text tower: the target's image path must not build it, and moving the model must
    not carry it along."""
    from psic_lab.vlp import mini, text

    calls = []
    monkeypatch.setattr(mini, "shared_minilm", lambda: calls.append(1) or text.shared_minilm())
    vlp = mini.PsicVlpMini().freeze()
    assert "text" not in dict(vlp.named_children()) and not calls
    assert vlp.encode_image(torch.rand(1, 3, 96, 96)).shape == (1, 384) and not calls


def test_reference_pack_keeps_only_the_synthesis_tensors(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from pack_shield_device import REFERENCE_PREFIXES
    finally:
        sys.path.pop(0)
    from psic_cli.models import build_model, load_config

    model = build_model(load_config("psic-msh2c"))
    teacher_uses = {n for n, _ in model.named_parameters() if n.startswith(("g_s.", "cltg.", "log_gain"))}
    assert teacher_uses and all(n.startswith(REFERENCE_PREFIXES) for n in teacher_uses)
    assert not any(n.startswith(REFERENCE_PREFIXES) for n, _ in model.named_parameters()
                   if n.startswith(("g_a.", "h_a.", "h_s.", "context.", "entropy_bottleneck.")))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
@pytest.mark.skipif(not MSH2C.is_file(), reason="lab_weights/rd/psic-msh2c.safetensors missing")
def test_a_tiny_cpu_run_of_the_shield_device_script_exports_weights(tmp_path):
    from safetensors import safe_open

    pack = tmp_path / "pack"
    (pack / "imagenette" / "n01440764").mkdir(parents=True)
    for p in sorted(EXAMPLES.glob("*.png"))[:2]:
        shutil.copyfile(p, pack / "imagenette" / "n01440764" / p.name)
    shutil.copyfile(MSH2C, pack / "init.safetensors")
    shutil.copyfile(MSH2C, pack / "reference.safetensors")
    # the cached caption embeddings (random here): the script copies them into the run folder, so the stage
    # never loads the text tower
    torch.save(torch.nn.functional.normalize(torch.randn(1000, 384), dim=-1), pack / "class_text.pt")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "STAGE": "psic-msh2c-geo4d", "PACK": str(pack),
           "RUN_DIR": str(tmp_path / "run"), "DEVICE": "cpu", "THREADS": "1", "MINUTES": "1", "PART_MIB": "1",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"),
           "EXTRA": "--sizes 64 --aspects 1:1 --batch 1 --min-batch 1 --steps 2 --log-every 1"}
    r = subprocess.run(["bash", "scripts/train_shield_device.sh"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    assert (tmp_path / "run" / "class_text.pt").is_file()
    parts = sorted(out.glob("psic-msh2c-geo4d.safetensors.part*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 1024 * 1024 for p in parts)
    joined = tmp_path / "joined.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with safe_open(str(joined), framework="pt") as f:
        meta = f.metadata()
    assert meta["model_id"] == "psic-msh2c" and meta["stage"] == "shield" and int(meta["steps"]) == 2
    assert '"device": "cpu"' in meta["shield_config"]
    assert (out / "log.jsonl").read_text().count('"step"') >= 2
