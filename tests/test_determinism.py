"""Decoding agrees across CPU kernels: oneDNN limited to SSE4.1, oneDNN off, one thread, ATen's default.

CompressAI picks each symbol's CDF from float32 scales, and another kernel can flip that choice
(CompressAI issue #309); psic runs ``h_s`` in float64, so the decoded *symbols* are identical (every decode
checks the file's symbol checksum and fails otherwise).  The synthesis runs in float32, so pixels agree
within one 8-bit level, the promise ``tests/test_golden.py`` checks too.  Each case runs in a fresh process.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from .test_golden import GOLDEN_FILES

DECODE = (
    "import sys, hashlib, torch\n"
    "if sys.argv[2] == 'nomkldnn': torch.backends.mkldnn.enabled = False\n"
    "if sys.argv[2] == 'onethread': torch.set_num_threads(1)\n"
    "from psic_cli import codec\n"
    "from psic_cli.keys import read_key\n"
    "key = read_key('weights/shipped.key')\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "import numpy as np\n"
    "np.save(sys.argv[3] + '-shielded.npy', codec.decode(data).pixels)\n"
    "np.save(sys.argv[3] + '-full.npy', codec.decode(data, key).pixels)\n"
)
TOLERANCE = 1  # one 8-bit level (float32 synthesis); the symbols themselves are checked inside decode

VARIANTS = {
    "default": ({}, "-"),
    "sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"}, "-"),
    "nomkldnn": ({}, "nomkldnn"),
    "onethread": ({"OMP_NUM_THREADS": "1"}, "onethread"),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, "-"),
}


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN_FILES, reason="no golden files")
def test_decoded_pixels_agree_across_kernels(tmp_path):
    from .conftest import REPO

    path = str(GOLDEN_FILES[-1])
    for name, (env, mode) in VARIANTS.items():
        r = subprocess.run([sys.executable, "-c", DECODE, path, mode, str(tmp_path / name)], capture_output=True,
                           text=True, env={**os.environ, **env}, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr  # a symbol desync raises ChecksumError there
    for view in ("shielded", "full"):
        ref = np.load(tmp_path / f"default-{view}.npy").astype(np.int16)
        for name in VARIANTS:
            px = np.load(tmp_path / f"{name}-{view}.npy").astype(np.int16)
            assert px.shape == ref.shape and int(np.abs(px - ref).max()) <= TOLERANCE, (name, view)
