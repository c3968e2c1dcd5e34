"""Portability: every golden file decodes to the same symbols under other CPU kernels, pixels within +-1.

CompressAI picks each symbol's CDF from float32 scales, and another kernel can flip that choice
(CompressAI issue #309); psic runs ``h_s`` in float64, so the symbols (checked against the file's
checksum inside every decode) must not change.  ``g_s`` runs in float32 with the fast kernels, so pixels
may differ by one level.  Each kernel set runs in a fresh process, since the ISA variables are read once.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO

GOLDEN = Path(__file__).parent / "golden"

# decodes every golden file's expected views; writes each view's pixels as .npy into argv[1]
DECODE = """
import json, sys, pathlib, numpy as np, torch
if sys.argv[2] == 'nomkldnn': torch.backends.mkldnn.enabled = False
if sys.argv[2] == 'onethread': torch.set_num_threads(1)
from psic_cli import codec
from psic_cli.keys import read_key
key = read_key('weights/shipped.key')
out = pathlib.Path(sys.argv[1])
for path in sorted(pathlib.Path('tests/golden').glob('v*/*.psic')):
    data = path.read_bytes()
    for view in json.loads(path.with_suffix('.json').read_text())['views']:
        px = codec.decode(data, key if view in ('full', 'machine') else None, view).pixels  # checks symbols
        np.save(out / f'{path.parent.name}-{path.stem}-{view}.npy', px)
"""

# the native kernels are what test_golden runs; these are the others a user's CPU may give (one list, shared with
# benchmarks/portability.py, which checks weights that are not installed)
_SPEC = importlib.util.spec_from_file_location("portability", REPO / "benchmarks" / "portability.py")
_PORTABILITY = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_PORTABILITY)
VARIANTS = _PORTABILITY.KERNEL_SETS


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden_files_portable_across_kernels(variant, tmp_path):
    env, mode = VARIANTS[variant]
    r = subprocess.run([sys.executable, "-c", DECODE, str(tmp_path), mode], capture_output=True, text=True,
                       env={**os.environ, **env}, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    checked = 0
    for path in sorted(GOLDEN.glob("v*/*.psic")):
        for view in json.loads(path.with_suffix(".json").read_text())["views"]:
            got = np.load(tmp_path / f"{path.parent.name}-{path.stem}-{view}.npy").astype(np.int16)
            want = np.asarray(Image.open(path.with_name(f"{path.stem}.{view}.png"))).astype(np.int16)
            assert got.shape == want.shape
            assert int(np.abs(got - want).max()) <= 1, f"{variant}: {path.name} {view}"
            checked += 1
    assert checked >= len(list(GOLDEN.glob("v*/*.psic"))) * 2
