"""Files written by earlier psic versions keep decoding: identical symbols, pixels within +-1.

``tests/golden/v<N>/<name>.psic`` are committed with ``<name>.json`` (the weights' sha256 and the file's
symbol checksum) and ``<name>.<view>.png``, the expected decoded pixels of each trained view.  The
portability promise is identical symbols on every CPU (the checksum is verified inside every decode)
and pixels within +-1 of the reference, so the comparison allows 1 level per sample.

When the installed weights change, these tests *fail* until the expected pixels are regenerated
deliberately: ``GENERATE_EXPECTED=1 pytest tests/test_golden.py`` (and say why in the commit).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psic_cli.views import View, trained_views

from .conftest import EXAMPLES, REPO

GOLDEN = Path(__file__).parent / "golden"
SHIPPED_KEY = REPO / "weights" / "shipped.key"
CASES = [("psic-sh", 1), ("psic-sh", 4), ("psic-msh", 2)]
TOLERANCE = 1  # pixels may differ by one 8-bit level across CPU kernels; symbols may not differ at all


def _decode(data: bytes, key: bytes, name: str):
    from psic_cli import codec

    view = View(name)
    return codec.decode(data, key if view.needs_key else None, view)


def _installed(model_id):
    from psic_cli.zoo import list_models

    return any(m.model_id == model_id for m in list_models())


def _write_expected(path: Path, data: bytes, key: bytes) -> None:
    from psic_cli import codec, container
    from psic_cli.zoo import load_model

    lm = load_model(codec.read_info(data)["model"])
    views = trained_views(lm.info.metadata)
    for old in path.parent.glob(path.stem + ".*.png"):
        old.unlink()
    for v in views:
        Image.fromarray(_decode(data, key, v).pixels).save(path.with_name(f"{path.stem}.{v}.png"))
    checksum = container.unpack(data).tiles[0].checksum
    expected = {"weights_sha256": lm.weights_sha256, "symbols_checksum": checksum, "views": views}
    path.with_suffix(".json").write_text(json.dumps(expected, indent=2) + "\n")


@pytest.mark.skipif(os.environ.get("GENERATE_EXPECTED") != "1", reason="set GENERATE_EXPECTED=1 to regenerate")
def test_generate_golden():
    from psic_cli import codec, container
    from psic_cli.keys import read_key

    out = GOLDEN / f"v{container.FORMAT_VERSION}"
    out.mkdir(parents=True, exist_ok=True)
    key = read_key(SHIPPED_KEY)
    if os.environ.get("GENERATE_FILES") == "1":  # new .psic files only when the format version is new
        # 202x130: not a multiple of 16 or 64, so the encoder's padding and the latent geometry are exercised
        img = np.asarray(Image.open(EXAMPLES / "kodim23.png").convert("RGB"))[40:170, 96:298]
        for model_id, q in CASES:
            if _installed(model_id):
                (out / f"{model_id}-q{q}.psic").write_bytes(codec.encode_pixels(np.ascontiguousarray(img), model_id, q))
    # every committed file keeps its bytes; only its expected pixels follow the weights
    for path in sorted(GOLDEN.glob("v*/*.psic")):
        _write_expected(path, path.read_bytes(), key)


GOLDEN_FILES = sorted(GOLDEN.glob("v*/*.psic"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[f"{p.parent.name}/{p.name}" for p in GOLDEN_FILES])
def test_golden_files_decode(path, monkeypatch):
    from psic_cli import codec, container
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model

    monkeypatch.delenv("PSIC_WEIGHTS", raising=False)
    load_model.cache_clear()
    data = path.read_bytes()
    info = codec.read_info(data)
    expected = json.loads(path.with_suffix(".json").read_text())
    key = read_key(SHIPPED_KEY)
    lm = load_model(info["model"])
    assert lm.weights_sha256 == expected["weights_sha256"], (
        f"{path.name}: the installed {info['model']} weights changed since the expected pixels were written; "
        "regenerate them deliberately with GENERATE_EXPECTED=1 pytest tests/test_golden.py")
    assert set(expected["views"]) == set(trained_views(lm.info.metadata))
    for view in expected["views"]:
        res = _decode(data, key, view)  # raises unless the decoded symbols match the file's checksum
        assert container.unpack(data).tiles[0].checksum == expected["symbols_checksum"]
        want = np.asarray(Image.open(path.with_name(f"{path.stem}.{view}.png")))
        assert res.pixels.shape == want.shape == (info["height"], info["width"], 3)
        diff = np.abs(res.pixels.astype(np.int16) - want.astype(np.int16))
        assert int(diff.max()) <= TOLERANCE, f"{path.name} {view}: pixels differ by up to {int(diff.max())}"


def test_golden_files_exist():
    from psic_cli import container

    assert GOLDEN_FILES, "no golden files committed"
    assert {f"v{v}" for v in container.READABLE_VERSIONS} <= {p.parent.name for p in GOLDEN_FILES}
    for p in GOLDEN_FILES:
        views = json.loads(p.with_suffix(".json").read_text())["views"]
        assert all(p.with_name(f"{p.stem}.{v}.png").is_file() for v in views), p.name
