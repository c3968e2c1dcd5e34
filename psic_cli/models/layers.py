"""Building blocks of the conditional decoder: the CLTG trigger generator and conditional residual blocks.

Follows the shared block of PSIC (ICML 2025) and UG-ICM (AAAI 2025) (``../shared/docs/papers.md`` section 1),
with one deliberate change: the condition is a vector (key-derived +-1 bits, zeros when there is no key)
rather than a scalar beta, so that a 32-byte key, not a one-bit flag, selects the full view.  It is still a
switch, not a lock: anyone with the weights can drive the decoder with any condition (docs/threat-model.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psic_cli._compat import import_compressai_core

import_compressai_core()
from compressai.layers import ResidualBlockUpsample, conv3x3, subpel_conv3x3  # noqa: E402


class TriggerGenerator(nn.Module):
    """CLTG: condition vector -> shared trigger ``tau`` (Linear, ReLU, Linear, ReLU)."""

    def __init__(self, cond_dim: int, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cond_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())

    def forward(self, cond: Tensor) -> Tensor:
        return self.mlp(cond)


class CondResBlock(nn.Module):
    """Residual block whose two convolutions each receive a per-channel trigger bias.

    ``h1 = GELU(conv(f)) + P1 tau``, ``h2 = GELU(conv(h1)) + P2 tau``, ``out = h2 + skip(f)``.
    With ``trigger_scale`` the trigger also scales the features (FiLM):
    ``h1 = GELU(conv(f)) * (1 + S1 tau) + P1 tau``, and likewise for ``h2``.  A bias alone can only add a
    spatially constant offset per channel; a scale modulates what the image already contains, which lets
    a view change content-dependent detail.  ``P``/``S`` are zero-initialised, so a fresh block is the
    same for every condition.
    """

    def __init__(self, in_ch: int, out_ch: int, trigger_width: int, trigger_scale: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.p1 = nn.Linear(trigger_width, out_ch, bias=False)
        self.p2 = nn.Linear(trigger_width, out_ch, bias=False)
        nn.init.zeros_(self.p1.weight)
        nn.init.zeros_(self.p2.weight)
        self.s1 = self.s2 = None
        if trigger_scale:
            self.s1 = nn.Linear(trigger_width, out_ch, bias=False)
            self.s2 = nn.Linear(trigger_width, out_ch, bias=False)
            nn.init.zeros_(self.s1.weight)
            nn.init.zeros_(self.s2.weight)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, f: Tensor, tau: Tensor) -> Tensor:
        h = F.gelu(self.conv1(f))
        if self.s1 is not None:
            h = h * (1 + self.s1(tau)[:, :, None, None])
        h = F.gelu(self.conv2(h + self.p1(tau)[:, :, None, None]))
        if self.s2 is not None:
            h = h * (1 + self.s2(tau)[:, :, None, None])
        return h + self.p2(tau)[:, :, None, None] + self.skip(f)


class ConditionalSynthesis(nn.Module):
    """g_s: ``CRB(M->N), [RBUp x2, CRB] x3, subpel conv (->3, x2)``; total upsampling 16.

    The last stage (at half resolution) is ``last_width`` channels wide instead of N: it holds most of
    the decoder's arithmetic, and the runtime decoder runs in float64 for cross-machine determinism.

    With ``trigger_head`` a further conditional block at the last stage gives the condition new features
    to work with (the others were learnt for reconstruction); its second convolution starts at zero, so
    it starts as the identity and older weights load unchanged.
    """

    def __init__(self, N: int, M: int, trigger_width: int, last_width: int, trigger_scale: bool = False,
                 trigger_head: bool = False):
        super().__init__()
        tw, ts = trigger_width, trigger_scale
        self.blocks = nn.ModuleList(
            [
                CondResBlock(M, N, tw, ts),
                ResidualBlockUpsample(N, N, 2),
                CondResBlock(N, N, tw, ts),
                ResidualBlockUpsample(N, N, 2),
                CondResBlock(N, N, tw, ts),
                ResidualBlockUpsample(N, last_width, 2),
                CondResBlock(last_width, last_width, tw, ts),
            ]
        )
        if trigger_head:  # one more conditional block, the identity at initialisation (see class docstring)
            head = CondResBlock(last_width, last_width, tw, ts)
            nn.init.zeros_(head.conv2.weight)
            nn.init.zeros_(head.conv2.bias)
            self.blocks.append(head)
        self.out = subpel_conv3x3(last_width, 3, 2)

    def forward(self, y_hat: Tensor, tau: Tensor) -> Tensor:
        h = y_hat
        for block in self.blocks:
            h = block(h, tau) if isinstance(block, CondResBlock) else block(h)
        return self.out(h)


def ste_round(x: Tensor) -> Tensor:
    """Round with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()
