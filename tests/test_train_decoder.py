"""A new synthesis for a frozen encoder (``rd --train-part decoder``): only ``g_s`` and its condition path learn,
so the bitstream stays the same and files written before decode with the new decoder."""

import json

import torch

from .conftest import noise_images
from .test_train_encoder import _weights, train_part_and_export


def test_decoder_training_moves_only_the_synthesis_and_keeps_the_bitstream(tmp_path, key_file):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from psic_cli.zoo import bitstream_id
    from psic_lab.training.__main__ import main

    from .conftest import TINY

    data = noise_images(tmp_path / "data", 3)
    _, path = _weights(tmp_path, TINY, steps=40)
    cfg = tmp_path / "wide.json"
    cfg.write_text(json.dumps({**TINY, "synthesis_width": 2 * TINY["N"]}))
    out = train_part_and_export(main, "decoder", cfg, data, key_file, path, tmp_path)
    old, new = load_file(str(path)), load_file(str(out))
    moved = {k for k in new if k not in old or old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith(("g_s.", "cltg.")) for k in moved)  # the CDF tables and gains too
    assert any(k.startswith("g_s.") for k in moved)
    assert bitstream_id(new) == bitstream_id(old)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "43" and meta["stage"] == "rd-decoder"  # the encoder's 40 plus the decoder's 3
