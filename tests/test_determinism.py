"""Decoding is bit-identical across CPU kernels: oneDNN limited to SSE4.1, oneDNN off, one thread.

CompressAI picks each symbol's CDF from float32 scales, and another kernel can flip that choice
(CompressAI issue #309); psic runs the decoder side in float64.  Each case runs in a fresh process.
"""

import hashlib
import os
import subprocess
import sys

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
    "for v in ('shielded', 'full'):\n"
    "    px = codec.decode(data, None if v == 'shielded' else key, v).pixels\n"
    "    print(v, hashlib.sha256(px.tobytes()).hexdigest())\n"
)

VARIANTS = {
    "default": ({}, "-"),
    "sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"}, "-"),
    "nomkldnn": ({}, "nomkldnn"),
    "onethread": ({"OMP_NUM_THREADS": "1"}, "onethread"),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, "-"),
}


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN_FILES, reason="no golden files")
def test_decoded_pixels_identical_across_kernels():
    from .conftest import REPO

    path = str(GOLDEN_FILES[-1])
    outputs = {}
    for name, (env, mode) in VARIANTS.items():
        r = subprocess.run([sys.executable, "-c", DECODE, path, mode], capture_output=True, text=True,
                           env={**os.environ, **env}, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        outputs[name] = r.stdout
    assert len(set(outputs.values())) == 1, outputs
    assert hashlib.sha256(outputs["default"].encode()).hexdigest()
