"""The runtime path never imports training code or training-only dependencies."""

import subprocess
import sys

FORBIDDEN = ["psic_cli.training", "psic_cli.vlp", "psic_cli.evaluation", "open_clip", "transformers",
             "torchvision", "torch_geometric", "pandas"]


def test_codec_import_stays_light(tiny_weights):
    code = (
        "import sys, numpy as np\n"
        "from psic_cli import codec\n"
        "data = codec.encode_pixels(np.zeros((64, 64, 3), np.uint8), 'tiny-sh')\n"
        "codec.decode(data)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {"PSIC_WEIGHTS": str(tiny_weights), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
