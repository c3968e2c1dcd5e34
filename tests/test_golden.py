"""Files written by earlier psic versions keep decoding, bit-exactly while the weights are unchanged.

``tests/golden/v<N>/*.psic`` are committed with a JSON of the expected decoded-pixel sha256 per view.
Regenerate only deliberately: ``GENERATE_EXPECTED=1 pytest tests/test_golden.py`` (and say why in the commit).
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psic_cli.zoo import trained_views

from .conftest import EXAMPLES, REPO

GOLDEN = Path(__file__).parent / "golden"
SHIPPED_KEY = REPO / "weights" / "shipped.key"
CASES = [("psic-sh", 1), ("psic-sh", 4), ("psic-msh", 2)]


# view name -> (needs the key, codec view, shield level)
VIEWS = {"shielded": (False, "shielded", None), "full": (True, "full", None), "strong": (False, "shielded", "strong"),
         "machine": (True, "machine", None)}


def _decode(data: bytes, key: bytes, name: str):
    from psic_cli import codec

    needs_key, view, shield = VIEWS[name]
    return codec.decode(data, key if needs_key else None, view, shield)


def _sha(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _installed(model_id):
    from psic_cli.zoo import list_models

    return any(m.model_id == model_id for m in list_models())


@pytest.mark.skipif(os.environ.get("GENERATE_EXPECTED") != "1", reason="set GENERATE_EXPECTED=1 to regenerate")
def test_generate_golden():
    from psic_cli import codec, container
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model

    out = GOLDEN / f"v{container.FORMAT_VERSION}"
    out.mkdir(parents=True, exist_ok=True)
    # 202x130: not a multiple of 16 or 64, so the encoder's padding and the latent geometry are exercised
    img = np.asarray(Image.open(EXAMPLES / "kodim23.png").convert("RGB"))[40:170, 96:298]
    key = read_key(SHIPPED_KEY)
    for model_id, q in CASES:
        if not _installed(model_id):
            continue
        data = codec.encode_pixels(np.ascontiguousarray(img), model_id, q)
        name = f"{model_id}-q{q}"
        (out / f"{name}.psic").write_bytes(data)
        lm = load_model(model_id)
        expected = {
            "weights_sha256": lm.weights_sha256,
            "views": {v: _sha(_decode(data, key, v).pixels) for v in trained_views(lm.info.metadata)},
        }
        (out / f"{name}.json").write_text(json.dumps(expected, indent=2) + "\n")
    # files of earlier versions keep their bytes; only their expected pixels follow new weights
    for path in sorted(GOLDEN.glob("v*/*.psic")):
        if path.parent == out:
            continue
        data = path.read_bytes()
        lm = load_model(codec.read_info(data)["model"])
        expected = {
            "weights_sha256": lm.weights_sha256,
            "views": {v: _sha(_decode(data, key, v).pixels) for v in trained_views(lm.info.metadata)},
        }
        path.with_suffix(".json").write_text(json.dumps(expected, indent=2) + "\n")


GOLDEN_FILES = sorted(GOLDEN.glob("v*/*.psic"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[f"{p.parent.name}/{p.name}" for p in GOLDEN_FILES])
def test_golden_files_decode(path, monkeypatch):
    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model

    monkeypatch.delenv("PSIC_WEIGHTS", raising=False)
    load_model.cache_clear()
    data = path.read_bytes()
    info = codec.read_info(data)
    expected = json.loads(path.with_suffix(".json").read_text())
    key = read_key(SHIPPED_KEY)
    lm = load_model(info["model"])
    for view, sha in expected["views"].items():
        if view not in trained_views(lm.info.metadata):
            continue  # written when these weights had this view; installed weights do not
        res = _decode(data, key, view)  # symbol checksum verified inside
        assert res.pixels.shape == (info["height"], info["width"], 3)
        if lm.weights_sha256 == expected["weights_sha256"]:
            assert _sha(res.pixels) == sha, f"{path.name} {view}: decoded pixels changed"


def test_golden_files_exist():
    from psic_cli import container

    assert GOLDEN_FILES, "no golden files committed"
    assert {f"v{v}" for v in container.READABLE_VERSIONS} <= {p.parent.name for p in GOLDEN_FILES}
