"""Building blocks of the conditional decoder: the CLTG trigger generator and conditional residual blocks.

Follows the shared block of PSIC (ICML 2025) and UG-ICM (AAAI 2025) (``../shared/docs/papers.md`` section 1),
with one deliberate change: the condition is a vector (key-derived +-1 bits, zeros when there is no key)
rather than a scalar beta, so that a 32-byte key, not a one-bit flag, selects the full view.  It is still a
switch, not a lock: anyone with the weights can drive the decoder with any condition (docs/threat-model.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psic_cli._compat import import_compressai_core

import_compressai_core()
from compressai.layers import GDN, ResidualBlockUpsample, conv3x3, subpel_conv3x3  # noqa: E402


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
        if not torch.is_grad_enabled():
            return self._infer(f, tau)
        h = F.gelu(self.conv1(f))
        if self.s1 is not None:
            h = h * (1 + self.s1(tau)[:, :, None, None])
        h = F.gelu(self.conv2(h + self.p1(tau)[:, :, None, None]))
        if self.s2 is not None:
            h = h * (1 + self.s2(tau)[:, :, None, None])
        return h + self.p2(tau)[:, :, None, None] + self.skip(f)

    def _infer(self, f: Tensor, tau: Tensor) -> Tensor:
        """The same arithmetic without autograd, in place: each GELU, FiLM scale and bias is one pass over the
        convolution's output instead of a new tensor per step (the decoder's large stages are bound by memory
        traffic as much as by the convolutions)."""
        h = torch.ops.aten.gelu_(self.conv1(f))
        _modulate(h, self.s1, self.p1, tau)
        h = torch.ops.aten.gelu_(self.conv2(h))
        _modulate(h, self.s2, self.p2, tau)
        return h.add_(self.skip(f))


def _modulate(h: Tensor, scale: nn.Linear | None, bias: nn.Linear, tau: Tensor) -> None:
    """``h = h * (1 + scale(tau)) + bias(tau)`` in place, per channel, in one pass."""
    p = bias(tau)[:, :, None, None].to(h.dtype)
    if scale is None:
        h.add_(p)
    else:
        torch.addcmul(p, h, 1 + scale(tau)[:, :, None, None].to(h.dtype), out=h)


class FrozenGDN(nn.Module):
    """Inference copy of a CompressAI ``GDN`` / inverse GDN with its reparametrised ``beta`` and ``gamma``
    computed once.  On a channels_last input the 1x1 normalisation is one matrix product over the pixels
    (``x^2 @ gamma^T + beta``, what ``F.conv2d`` computes) and the rest is done in place; other layouts use the
    convolution."""

    def __init__(self, gdn: nn.Module):
        super().__init__()
        self.inverse = bool(gdn.inverse)
        with torch.no_grad():
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).detach().clone())
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if not x.is_contiguous(memory_format=torch.channels_last) or x.requires_grad:
            norm = F.conv2d(x * x, self.gamma.reshape(c, c, 1, 1), self.beta)
            return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: channels_last is NHWC in memory
        norm = torch.addmm(self.beta, flat * flat, self.gamma.t())
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return norm.mul_(flat).view(n, h, w, c).permute(0, 3, 1, 2)


def interp_matrix(n_out: int, n_in: int, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Rows ``start:stop`` of the ``n_out x n_in`` matrix of 1-D bilinear upsampling (half-pixel centres, edges
    clamped: ``F.interpolate(..., mode="bilinear", align_corners=False)``), so a tile can take its own rows."""
    src = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    m = torch.zeros(stop - start, n_in, dtype=torch.float64)
    rows = torch.arange(stop - start)
    m[rows, i0] += 1 - frac
    m[rows, i1] += frac
    return m.to(dtype)


class ScaleBranch(nn.Module):
    """A condition path at the indexer's scale: bias maps on a fixed grid of cells, whatever the image size.

    The latent is average-pooled to ``grid x grid`` cells; with the image's log size (from the latent's size)
    and the trigger ``tau`` a small network makes one bias map per conditional block of ``g_s``, which is
    upsampled bilinearly to that block's resolution and added to its output.  A pattern on this grid has a
    fixed size *relative to the image*, so an indexer's resize to 224 pixels keeps it at every image size,
    where the per-pixel triggers make a pattern of fixed pixel size that a resize averages away.  The output
    convolutions start at zero: a fresh branch changes nothing, and weights without it load unchanged.
    """

    def __init__(self, M: int, trigger_width: int, channels: list[int], grid: int, width: int = 64):
        super().__init__()
        self.grid = grid
        self.inp = nn.Conv2d(M + 2, width, 3, padding=1)
        self.t1 = nn.Linear(trigger_width, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.t2 = nn.Linear(trigger_width, width)
        self.heads = nn.ModuleList(nn.Conv2d(width, c, 1) for c in channels)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, y: Tensor, tau: Tensor) -> list[Tensor]:
        """Bias maps ``(B, C_k, grid, grid)`` from the *whole* latent ``y`` (never a tile of it)."""
        b, _, h, w = y.shape
        g = self.grid
        pooled = F.adaptive_avg_pool2d(y, g)
        size = torch.tensor([math.log(h * 16 / 224), math.log(w * 16 / 224)], dtype=y.dtype, device=y.device)
        geo = size[None, :, None, None].expand(b, 2, g, g)
        f = F.gelu(self.inp(torch.cat([pooled, geo], 1)) + self.t1(tau)[:, :, None, None])
        f = F.gelu(self.mid(f) + self.t2(tau)[:, :, None, None])
        return [head(f) for head in self.heads]


class IndexerResidual(nn.Module):
    """A shield made where an indexer looks: an additive residual computed on a fixed-size thumbnail of the whole
    decoded image and resized to the image.

    An indexer resizes every photo to about 224 pixels before it reads it, which averages away a pattern of
    fixed *pixel* size (the decoder's per-pixel triggers) on any photo much larger than that.  This module sees
    the decoded image squashed to ``side x side`` (antialiased), makes a residual at that resolution with a
    small U-Net (one input plane per view) plus a learned pattern per view, and resizes it bicubically to the
    image's true size before adding it: the pattern is fixed *relative to the image*, so every indexer
    preprocessing of every size meets the same pattern at about the scale it was made for.  The output
    convolution and the patterns start at zero, so a fresh module changes nothing.  ``view`` selects the
    residual per image (index into the public shield views); ``-1`` adds nothing (keyed views and any other
    condition stay exactly as the decoder made them).

    With ``rms`` (one value per view, in 8-bit levels) each image's residual is scaled to exactly that RMS at
    thumbnail resolution: a fixed budget, so that training only chooses its direction (the pattern then starts
    as small noise, since a zero residual has no direction); without it a tanh bounds it instead.

    With ``mask_power`` > 0 the residual is weighted, before the budget, by the thumbnail's local activity
    (mean absolute high-pass of its luma over 5x5 pixels, relative to the image's mean) to that power: texture
    masking, so that a budget spent in flat sky and skin, where a pattern shows, moves into texture, where it
    does not.  The weight depends on the image, so the residual differs from photo to photo.
    """

    def __init__(self, side: int = 224, views: int = 2, width: int = 32, rms: tuple[float, ...] = (),
                 mask_power: float = 0.0):
        super().__init__()
        self.mask_power = float(mask_power)
        if rms and len(rms) != views:
            raise ValueError(f"indexer residual: {len(rms)} RMS budgets for {views} views")
        self.side, self.views = side, views
        self.register_buffer("rms", torch.tensor([float(r) / 255 for r in rms]), persistent=False)
        w = width
        self.e1 = nn.Conv2d(3 + views, w, 3, padding=1)
        self.e2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.e3 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.e4 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.d3 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)
        self.d2 = nn.Conv2d(4 * w, w, 3, padding=1)
        self.d1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # one image-independent pattern per view, added before the tanh: a universal perturbation learns from
        # every image's gradient at once, where the U-Net's image-dependent part learns slowly
        self.pattern = nn.Parameter(torch.zeros(views, 3, side, side))
        if rms:
            nn.init.normal_(self.pattern, std=0.1, generator=torch.Generator().manual_seed(0))

    def residual(self, x: Tensor, view: Tensor) -> Tensor:
        """The residual at thumbnail resolution ``(B, 3, side, side)`` for images ``x`` in [0, 1]."""
        s = self.side
        thumb = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        planes = F.one_hot(view.clamp_min(0), self.views).to(x.dtype)[:, :, None, None].expand(-1, -1, s, s)
        f1 = F.gelu(self.e1(torch.cat([thumb * 2 - 1, planes], 1)))
        f2 = F.gelu(self.e2(f1))
        f3 = F.gelu(self.e3(f2))
        f4 = F.gelu(self.e4(f3))
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        g3 = F.gelu(self.d3(torch.cat([up(f4, f3), f3], 1)))
        g2 = F.gelu(self.d2(torch.cat([up(g3, f2), f2], 1)))
        g1 = F.gelu(self.d1(torch.cat([up(g2, f1), f1], 1)))
        g = self.out(g1) + self.pattern[view.clamp_min(0)]
        if self.mask_power:
            g = g * self.activity(thumb) ** self.mask_power
        if self.rms.numel():
            norm = g.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
            return g * (self.rms[view.clamp_min(0)][:, None, None, None] / norm)
        return 0.25 * torch.tanh(g)

    @staticmethod
    def activity(thumb: Tensor) -> Tensor:
        """Local activity ``(B, 1, s, s)`` of a thumbnail in [0, 1], relative to its mean (flat: near 0)."""
        luma = thumb.mean(1, keepdim=True)
        high = luma - F.avg_pool2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        act = F.avg_pool2d(F.pad(high.abs(), (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        return (act / act.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)).clamp(0.02, 8.0)

    def forward(self, x: Tensor, view: Tensor) -> Tensor:
        """``x`` plus each selected view's residual at ``x``'s size (rows whose ``view`` is -1 unchanged)."""
        on = view >= 0
        if not bool(on.any()):
            return x
        h, w = x.shape[-2:]
        shrink = h < self.side or w < self.side  # a thumbnail-sized image or smaller: filter before decimating
        r = F.interpolate(self.residual(x, view), size=(h, w), mode="bicubic", align_corners=False, antialias=shrink)
        return x + r * on.to(x.dtype)[:, None, None, None]


def freeze_gdn(module: nn.Module) -> nn.Module:
    """Replace every CompressAI ``GDN`` in ``module`` (in place) by its :class:`FrozenGDN`; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, GDN):
            setattr(module, name, FrozenGDN(child))
        else:
            freeze_gdn(child)
    return module


def upsample_region(m: Tensor, full: tuple[int, int], region: tuple[int, int, int, int]) -> Tensor:
    """Rows ``region[0]:region[1]``, columns ``region[2]:region[3]`` of ``m`` upsampled bilinearly to ``full``."""
    r0, r1, c0, c1 = region
    a = interp_matrix(full[0], m.shape[-2], r0, r1, m.dtype).to(m.device)
    b = interp_matrix(full[1], m.shape[-1], c0, c1, m.dtype).to(m.device)
    return torch.einsum("ig,bcgh,jh->bcij", a, m, b)


class ConditionalSynthesis(nn.Module):
    """g_s: ``CRB(M->N), [RBUp x2, CRB] x3, subpel conv (->3, x2)``; total upsampling 16.

    The last stage (at half resolution) is ``last_width`` channels wide instead of N: it holds most of
    the decoder's arithmetic (``psic-sh`` and ``psic-msh`` narrowed it when the runtime decoder ran in
    float64; it now runs in float32, and the later models keep it at N).

    With ``trigger_head`` a further conditional block at the last stage gives the condition new features
    to work with (the others were learnt for reconstruction); its second convolution starts at zero, so
    it starts as the identity and older weights load unchanged.
    """

    def __init__(self, N: int, M: int, trigger_width: int, last_width: int, trigger_scale: bool = False,
                 trigger_head: bool = False, scale_grid: int = 0):
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
        # each conditional block's stride relative to the latent and width, for the scale branch's maps
        self._stages, stride = [], 1
        for block in self.blocks:
            if isinstance(block, CondResBlock):
                self._stages.append((stride, block.conv2.out_channels))
            else:
                stride *= 2
        self.scale_branch = (ScaleBranch(M, trigger_width, [c for _, c in self._stages], scale_grid)
                             if scale_grid else None)

    def scale_maps(self, y_hat: Tensor, tau: Tensor) -> list[Tensor] | None:
        """The scale branch's bias maps for the whole latent (None without a branch)."""
        return None if self.scale_branch is None else self.scale_branch(y_hat, tau)

    @property
    def split(self) -> int:
        """The index of the last upsampling block: the runtime decoder runs the blocks before it on the latent
        and the rest on their output, each part in tiles of its own (:meth:`ConditionalHyperprior.synthesize`)."""
        return max(i for i, b in enumerate(self.blocks) if not isinstance(b, CondResBlock))

    @property
    def split_stride(self) -> int:
        """Pixels per latent of the features entering block :attr:`split`."""
        return 2 ** sum(not isinstance(b, CondResBlock) for b in self.blocks[: self.split])

    def forward(self, y_hat: Tensor, tau: Tensor, maps: list[Tensor] | None = None,
                latent: tuple[int, int, int, int, int, int] | None = None, blocks: slice = slice(None),
                unit: int = 1) -> Tensor:
        """``maps`` (from :meth:`scale_maps`) and ``latent`` = ``(H, W, r0, r1, c0, c1)``, the whole latent's
        size and this tile's rows and columns in it, let a tile take its part of the whole image's maps;
        without them the maps are computed from ``y_hat`` itself (the whole image).

        ``blocks`` runs only those blocks (the output layer comes with the last one): ``y_hat`` is then the
        features entering the first of them, ``unit`` their pixels per latent, and ``latent`` is in their pixels.
        """
        if maps is None:
            maps = self.scale_maps(y_hat, tau)
            latent = (*y_hat.shape[-2:], 0, y_hat.shape[-2], 0, y_hat.shape[-1])
        start, stop, _ = blocks.indices(len(self.blocks))
        h, k = y_hat, 0
        for i, block in enumerate(self.blocks[:stop]):
            if isinstance(block, CondResBlock):
                if i >= start:
                    h = block(h, tau)
                    if maps is not None:
                        s = self._stages[k][0] // unit  # this stage's pixels per input pixel
                        H, W, r0, r1, c0, c1 = latent
                        h = h + upsample_region(maps[k], (H * s, W * s), (r0 * s, r1 * s, c0 * s, c1 * s)).to(h.dtype)
                k += 1
            elif i >= start:
                h = block(h)
        return self.out(h) if stop == len(self.blocks) else h


class CheckerboardContext(nn.Module):
    """The checkerboard context model (He et al., CVPR 2021) on top of a mean-scale hyperprior.

    The latent's positions split like a checkerboard: the *anchors* (row + column even) are coded first
    with the hyperprior's own scales and means; the others get theirs refined from the anchors' decoded
    symbols, which the decoder has by then.  ``ctx`` (5x5, M -> M) reads the anchors' symbols (zero at the
    other positions, so it sees anchors only); ``params`` (1x1 convolutions) maps the hyperprior's scales and
    means with that context to a correction.  Its last layer starts at zero: a fresh context changes nothing,
    so it can be trained on a frozen codec and start from the hyperprior's own rate.
    """

    def __init__(self, M: int):
        super().__init__()
        self.ctx = nn.Conv2d(M, M, 5, padding=2)
        self.params = nn.Sequential(
            nn.Conv2d(3 * M, 2 * M, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1),
        )
        nn.init.zeros_(self.params[-1].weight)
        nn.init.zeros_(self.params[-1].bias)

    def forward(self, anchor_symbols: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """The refined ``cat(scales, means)`` at every position (only the non-anchors' are used)."""
        hyper = torch.cat([scales, means], 1)
        return hyper + self.params(torch.cat([hyper, self.ctx(anchor_symbols)], 1))

    def others(self, anchor_symbols: Tensor, scales: Tensor, means: Tensor, parity: int = 0) -> Tensor:
        """:meth:`forward` computed only where it is used (batch of 1): the non-anchors' refined parameters,
        in the order of a row-major walk over their positions, ``(2M, P)``.  A non-anchor's 5x5 window holds
        12 anchors and 13 non-anchors (whose symbols are zero), so only the 12 anchor taps of ``ctx`` are
        multiplied, and the 1x1 layers run on the non-anchor positions alone: about a quarter of the dense
        computation, the same values up to rounding.  ``parity`` is ``(row + column) % 2`` of the input's top
        left position in the whole latent (a tile's anchors are the whole latent's)."""
        h, w = scales.shape[-2:]
        idx = torch.nonzero(~anchor_mask(h, w, parity=parity).reshape(-1)).squeeze(1)
        k, pad = self.ctx.kernel_size[0], self.ctx.padding[0]
        sym = torch.nn.functional.pad(anchor_symbols[0], (pad, pad, pad, pad))
        weight = self.ctx.weight
        ctx = self.ctx.bias[:, None].expand(-1, len(idx)).clone()
        for di in range(k):
            for dj in range(k):
                if (di + dj - 2 * pad) % 2 == 0:  # a tap on the centre's parity reads non-anchors: zeros
                    continue
                tap = sym[:, di : di + h, dj : dj + w].reshape(sym.shape[0], -1)[:, idx]
                ctx.addmm_(weight[:, :, di, dj], tap)
        hyper = torch.cat([scales[0], means[0]], 0).reshape(2 * scales.shape[1], -1)[:, idx]
        out = torch.cat([hyper, ctx], 0)
        layers = [m for m in self.params if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(layers):
            out = torch.addmm(conv.bias[:, None], conv.weight[:, :, 0, 0], out)
            if i < len(layers) - 1:
                out = torch.nn.functional.leaky_relu(out, self.params[1].negative_slope)
        return hyper + out


def anchor_mask(h: int, w: int, device: torch.device | str | None = None, parity: int = 0) -> Tensor:
    """``(h, w)`` booleans: True at the checkerboard's anchors, the positions whose row + column is even
    (counted from a top left position whose row + column has ``parity``)."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return (i + j + parity) % 2 == 0


def ste_round(x: Tensor) -> Tensor:
    """Round with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()
