"""Conditional hyperprior codecs: the scale hyperprior (Balle et al. 2018) and the mean-scale
hyperprior (Minnen et al. 2018), both with the conditional synthesis transform of PSIC/UG-ICM and
per-quality gain vectors (one variable-rate model serves every quality level).

Data flow::

    x -> g_a -> y * gain[q] -> h_a -> z -> [Q, EB] -> z_hat -> h_s -> (scales_hat, means_hat)
                     |                                                  |
                     +------------------> [Q, GC] -> y_hat <------------+
    y_hat / gain[q] -> g_s(., tau = CLTG(cond)) -> x_hat

Cross-machine determinism: which CDF codes each symbol is chosen from ``scales_hat``.  In float32
a different CPU kernel moves a scale across a table boundary about once in 1e5 symbols and silently
corrupts the rest of the stream (CompressAI issue #309).  ``compress``/``decompress`` therefore run
``h_s`` in float64, so the decoded *symbols* are identical on every CPU (the container's symbol
checksum proves it per file).  ``g_s`` chooses no CDF: it runs in float32 with the fast kernels
(channels_last, oneDNN), and decoded pixels agree within +-1 across instruction sets.
"""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np
import torch
from torch import Tensor, nn

from psic_cli._compat import import_compressai_core
from psic_cli.models.config import ModelConfig
from psic_cli.models.layers import (
    CheckerboardContext,
    ConditionalSynthesis,
    IndexerResidual,
    TriggerGenerator,
    anchor_mask,
    freeze_gdn,
    ste_round,
)
from psic_cli.models.rans_guard import guarded
from psic_cli.views import SHIELD_VIEWS, condition

import_compressai_core()
from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402
from compressai.layers import GDN  # noqa: E402

# CompressAI's default Gaussian scale table (0.11 .. 256, 64 log-spaced levels)
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64


def scale_table() -> list[float]:
    return [float(v) for v in np.exp(np.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))]


def _conv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, output_padding=s - 1, padding=k // 2)


def decode_symbols(gc: GaussianConditional, strings: list[bytes], indexes: Tensor) -> Tensor:
    """``gc.decompress(strings, indexes, dtype=torch.float64)`` (no means) without CompressAI's Python lists:
    each image's indexes go to the entropy coder as one int32 array, and its symbols come back as one.  At 24
    megapixels the lists were 12 million Python ints each way, about a gigabyte of fresh memory in all."""
    gc._check_cdf_size()
    gc._check_cdf_length()
    gc._check_offsets_size()
    if len(strings) != indexes.size(0):
        raise ValueError("Invalid strings or indexes parameters")
    cdfs, sizes, offsets = gc._quantized_cdf.tolist(), gc._cdf_length.reshape(-1).int().tolist(), \
        gc._offset.reshape(-1).int().tolist()
    out = torch.empty(indexes.shape, dtype=torch.float64)
    for i, s in enumerate(strings):
        values = gc.entropy_coder.decode_with_indexes(s, indexes[i].reshape(-1).to(torch.int32).numpy(), cdfs, sizes,
                                                      offsets)
        out[i] = torch.from_numpy(np.asarray(values, dtype=np.int32)).reshape(indexes.shape[1:])
    return out


def cdf_indexes(gc: GaussianConditional, scales: Tensor) -> Tensor:
    """Which CDF codes each symbol: exactly ``gc.build_indexes(scales)`` (the number of table entries below the
    bounded scale, compared in the scales' dtype), with one binary search per symbol where CompressAI makes one
    pass over the whole latent per table entry."""
    scales = gc.lower_bound_scale(scales)
    return torch.bucketize(scales, gc.scale_table[:-1].to(scales.dtype), right=False).int()


def symbols_checksum(*arrays: Tensor) -> int:
    """CRC32 over the int32 little-endian bytes of the quantised symbols (detects coder desync)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a.to(torch.int32).contiguous().numpy().astype("<i4").tobytes(), crc)
    return crc


# g_s reaches 6.75 latents (measured: tests/test_models.py); the runtime decoder tiles it in two parts
SYNTHESIS_FRONT_MARGIN = 6  # the blocks before the last upsampling reach 5.75 latents
SYNTHESIS_BACK_MARGIN = 4  # the rest reach 4 pixels of their input (a quarter latent each)
HYPER_TILE = 32  # decoder_hyper's tiles, in z latents (2048x2048 pixels)
CONTEXT_TILE = 64  # decoder_context's tiles, in y latents (1024x1024 pixels)
CONTEXT_MARGIN = 2  # the context's 5x5 convolution reaches 2 latents (its 1x1 layers add nothing)
HYPER_MARGIN = 2  # h_s reaches 1.75 z latents: two deconvolutions (1 and 0.5) and a 3x3 convolution (0.25)


def tiled(fn, x: Tensor, scale: float, tile: int, margin: int, region: bool = False) -> Tensor:
    """Apply a fully convolutional ``fn`` (output size = input size x ``scale``) in overlapping tiles.

    Each tile is computed with ``margin`` extra input pixels on every side (at least the receptive
    field), and only its centre is kept, so the result equals ``fn(x)`` while the working set is bounded.
    Inputs that fit in one tile are passed through unchanged.  The result is allocated once and each
    tile's centre is copied into it, so a tile's output (margins included) is freed before the next
    tile runs and no row or column of tiles is concatenated (one copy of the output, not three).
    With ``region`` ``fn`` also gets the tile's input rows and columns, ``(r0, r1, c0, c1)``.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x, (0, h, 0, w)) if region else fn(x)
    result: Tensor | None = None
    for i0 in range(0, h, tile):
        for j0 in range(0, w, tile):
            i1, j1 = min(i0 + tile, h), min(j0 + tile, w)
            a0, b0 = max(0, i0 - margin), max(0, j0 - margin)
            a1, b1 = min(h, i1 + margin), min(w, j1 + margin)
            out = fn(x[..., a0:a1, b0:b1], (a0, a1, b0, b1)) if region else fn(x[..., a0:a1, b0:b1])
            r0, c0 = round((i0 - a0) * scale), round((j0 - b0) * scale)
            th, tw = round((i1 - i0) * scale), round((j1 - j0) * scale)
            if result is None:
                result = out.new_empty((*out.shape[:-2], round(h * scale), round(w * scale)))
            o0, p0 = round(i0 * scale), round(j0 * scale)
            result[..., o0 : o0 + th, p0 : p0 + tw] = out[..., r0 : r0 + th, c0 : c0 + tw]
            del out
    assert result is not None
    return result


class ConditionalHyperprior(nn.Module):
    """Scale or mean-scale hyperprior with a conditional decoder and variable-rate gains.

    Args:
        cfg: the model's :class:`ModelConfig` (``arch`` picks the hyperprior).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        N, M = cfg.N, cfg.M
        self.mean_scale = cfg.arch != "scale-hyperprior"
        A = cfg.analysis_width or N
        self.g_a = nn.Sequential(
            _conv(3, A), GDN(A), _conv(A, A), GDN(A), _conv(A, A), GDN(A), _conv(A, M)
        )
        if self.mean_scale:
            self.h_a = nn.Sequential(
                _conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), _conv(N, N), nn.LeakyReLU(inplace=True), _conv(N, N)
            )
            self.h_s = nn.Sequential(
                _deconv(N, M),
                nn.LeakyReLU(inplace=True),
                _deconv(M, M * 3 // 2),
                nn.LeakyReLU(inplace=True),
                _conv(M * 3 // 2, M * 2, 3, 1),
            )
        else:
            self.h_a = nn.Sequential(
                _conv(M, N, 3, 1), nn.ReLU(inplace=True), _conv(N, N), nn.ReLU(inplace=True), _conv(N, N)
            )
            self.h_s = nn.Sequential(
                _deconv(N, N), nn.ReLU(inplace=True), _deconv(N, N), nn.ReLU(inplace=True), _conv(N, M, 3, 1),
                nn.ReLU(inplace=True),
            )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        # the checkerboard arch: the non-anchor half of y gets its entropy parameters from the anchor half
        self.context = CheckerboardContext(M) if cfg.arch == "mean-scale-checkerboard" else None
        self.cltg = TriggerGenerator(cfg.cond_dim, cfg.trigger_width)
        self.g_s = ConditionalSynthesis(cfg.synthesis_width or N, M, cfg.trigger_width, cfg.last_width,
                                         cfg.trigger_scale, cfg.trigger_head, cfg.scale_grid)
        # log-gain per quality and channel; higher lambda -> finer quantisation (larger gain)
        lam = torch.tensor(cfg.lambdas, dtype=torch.float32)
        init = 0.5 * torch.log(lam / lam.max())
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M).contiguous())
        # the public shield conditions, which the gated scale branch and the indexer residual act for (not saved)
        public = torch.tensor([condition(v, None, cfg.cond_dim) for v in SHIELD_VIEWS])
        self.register_buffer("shield_conditions", public, persistent=False)
        self.indexer_residual = None
        if cfg.indexer_residual:  # the shields' residual at the indexer's scale, for their public conditions only
            self.indexer_residual = IndexerResidual(cfg.indexer_residual, len(SHIELD_VIEWS),
                                                    rms=cfg.indexer_residual_rms,
                                                    mask_power=cfg.indexer_residual_mask)
        self._runtime: dict[str, nn.Module] | None = None
        self.transform_dtype: torch.dtype | None = None  # training only: autocast g_a / g_s (see _autocast)
        # g_a and the synthesis' first part run in overlapping tiles of 64x64 latents (1024x1024 pixels), the
        # synthesis' last part in tiles of 32x32 latents (synthesize)
        self.tile_latent = 64

    # ------------------------------------------------------------------ helpers
    def gain(self, q: Tensor) -> Tensor:
        return torch.exp(self.log_gain[q])[:, :, None, None]

    def _hyper(self, z_hat: Tensor, h_s: nn.Module, y_shape: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """Entropy parameters of ``y`` from ``z_hat``; ``h_s`` gives 4x ``z``'s size, cropped to ``y_shape``
        (``y`` need not be a multiple of 4 latents: ``h_a`` rounds its size up)."""
        params = h_s(z_hat)[..., : y_shape[0], : y_shape[1]]
        if self.mean_scale:
            scales, means = params.chunk(2, 1)
            return scales, means
        return params, None

    def checkerboard(self, y: Tensor, scales: Tensor, means: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The entropy parameters of ``y`` after the checkerboard context (unchanged without one): the anchors
        keep the hyperprior's, the other positions get them from the anchors' symbols ``round(y - means)``
        (no gradient flows through the symbols)."""
        if self.context is None or means is None:
            return scales, means
        a = anchor_mask(*y.shape[-2:], device=y.device)
        sym = torch.round(y.detach() - means.detach()) * a.to(y.dtype)
        s2, m2 = self.context(sym, scales, means).chunk(2, 1)
        return torch.where(a, scales, s2), torch.where(a, means, m2)

    def decoder_context(self, sym: Tensor, scales: Tensor, means: Tensor) -> tuple[Tensor, Tensor]:
        """The coding doors' context: the non-anchors' scales and means (float64, like ``decoder_hyper``'s
        scales, since they pick CDFs) from the anchors' symbols ``sym`` (zero elsewhere) and the hyperprior's
        float64 parameters, computed at the non-anchors only (``CheckerboardContext.others``; the anchors keep
        the hyperprior's); large latents in overlapping tiles (the margin covers the 5x5 context)."""
        rt = self.runtime_modules()["context"]
        m = scales.shape[1]

        def run(t: Tensor, region: tuple[int, int, int, int]) -> Tensor:
            parity = (region[0] + region[2]) % 2
            a = anchor_mask(*t.shape[-2:], parity=parity)
            out = t[:, m:].clone()  # the hyperprior's scales and means, replaced at the non-anchors
            out.view(2 * m, -1)[:, ~a.reshape(-1)] = rt.others(t[:, :m], t[:, m : 2 * m], t[:, 2 * m :], parity=parity)
            return out

        out = tiled(run, torch.cat([sym, scales, means], 1), scale=1, tile=CONTEXT_TILE, margin=CONTEXT_MARGIN,
                    region=True)
        s2, m2 = out.chunk(2, 1)
        return s2, m2

    def decoder_hyper(self, z_hat: Tensor, y_shape: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """The coding doors' ``_hyper`` (the encoder's ``compress`` and the decoder's ``decode_latent`` both call it, so
        their CDF indexes come from one computation): the scales, which pick the CDFs, in float64; the means of
        the mean-scale hyperprior, which pick no CDF (the encoder codes ``y - means``, the decoder adds them
        back), from the same float64 features by a float32 convolution, half the last layer's float64 work (with
        a checkerboard context the means are float64 too: the context reads them to pick the other half's CDFs,
        and float32 convolutions differ between CPU kernel sets). Large latents run in overlapping tiles (the
        margin covers ``h_s``'s reach, so every scale is computed as without tiles, to float64 rounding):
        float64 convolutions build their im2col buffers per call, and one the size of a whole 24-megapixel
        latent costs more in page faults than in arithmetic."""
        rt = self.runtime_modules()

        def run(z: Tensor) -> Tensor:
            if not self.mean_scale:
                return rt["h_s"](z)
            feats = rt["h_s"][:-1](z)
            if self.context is not None:  # the context reads the means to pick the others' CDFs: float64
                return torch.cat([rt["h_s_scales"](feats), rt["h_s_means"](feats)], 1)
            means = rt["h_s_means"](feats.float().contiguous(memory_format=torch.channels_last))
            return torch.cat([rt["h_s_scales"](feats), means.double()], 1)

        params = tiled(run, z_hat.double(), scale=4, tile=HYPER_TILE, margin=HYPER_MARGIN)
        params = params[..., : y_shape[0], : y_shape[1]]
        if not self.mean_scale:
            return params, None
        scales, means = params.chunk(2, 1)
        return scales, means

    def scale_maps(self, g_s: nn.Module, y: Tensor, tau: Tensor, cond: Tensor) -> list[Tensor] | None:
        """The scale branch's maps for the whole latent ``y``; with ``scale_keyless_only`` they are zero for
        every image whose condition is not one of the public keyless ones."""
        maps = g_s.scale_maps(y, tau)
        if maps is None or not self.cfg.scale_keyless_only:
            return maps
        on = self.shield_index(cond) >= 0  # (B,)
        return [m * on.to(m.dtype)[:, None, None, None] for m in maps]

    def shield_index(self, cond: Tensor) -> Tensor:
        """Per image, the index of its condition among the public shield conditions (``SHIELD_VIEWS``), or -1."""
        public = self.shield_conditions.to(cond.dtype)
        hit = (cond[:, None, :] == public[None]).all(-1)  # (B, views)
        return torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(hit[:, 0], -1, dtype=torch.long))

    def trigger(self, cltg: nn.Module, cond: Tensor) -> Tensor:
        """The trigger ``tau`` of each condition.  With an indexer residual the shield conditions get ``tau = 0``:
        their picture starts from the decoder's neutral output (close to the full view; the geometry table gives
        the shields' PSNR against it), and the residual (:meth:`finish`) is their whole shield."""
        tau = cltg(cond)
        if self.indexer_residual is not None:
            tau = tau * (self.shield_index(cond) < 0).to(tau.dtype)[:, None]
        return tau

    def finish(self, x_hat: Tensor, cond: Tensor, inplace: bool = False) -> Tensor:
        """The view from the decoded image at its true size (the codec's padding cropped off): with an
        :class:`~psic_cli.models.layers.IndexerResidual`, the shield conditions add their residual, made on the
        whole image; then the pixels are clamped to [0, 1].  Other conditions only clamp.  ``inplace`` (the
        decoder, which owns ``x_hat``, without autograd) clamps ``x_hat`` itself instead of a copy: at 24
        megapixels each copy is 288 MB of fresh memory to fault in."""
        if self.indexer_residual is not None:
            x_hat = self.indexer_residual(x_hat.clamp(0, 1), self.shield_index(cond.to(x_hat.dtype)))
        return x_hat.clamp_(0, 1) if inplace else x_hat.clamp(0, 1)

    def _autocast(self, x: Tensor):
        """Training-time autocast of the big transforms (``transform_dtype``, e.g. bfloat16), else a no-op."""
        dt = self.transform_dtype
        return torch.autocast(x.device.type, dtype=dt or torch.bfloat16, enabled=dt is not None)

    def analysis(self, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """``y = g_a(x) * gain[q]`` and ``z = h_a(y)`` (differentiable, untiled): for training and analysis."""
        with self._autocast(x):
            y = self.g_a(x)
        y = y.float() * self.gain(q)
        z = self.h_a(y if self.mean_scale else torch.abs(y))
        return y, z

    def hyper(self, z_hat: Tensor, y_shape: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """``(scales_hat, means_hat)`` of ``y`` from ``z_hat`` with the training ``h_s`` (``means_hat`` is None
        for the scale hyperprior); the coding doors use the float64 runtime copy instead."""
        return self._hyper(z_hat, self.h_s, y_shape)

    @torch.no_grad()
    def quantized_latents(self, x: Tensor, q: Tensor) -> Tensor:
        """``y_hat`` as the codec quantises it (``z`` and ``y`` rounded around their medians / means), batched and
        without entropy coding: the frozen encoder side for shield training, attacks and benchmarks."""
        y, z = self.analysis(x, q)
        med = self.entropy_bottleneck._get_medians()
        z_hat = torch.round(z - med) + med
        _, means = self.checkerboard(y, *self.hyper(z_hat, y.shape[-2:]))
        mu = means if means is not None else torch.zeros_like(y)
        return torch.round(y - mu) + mu

    def reset_runtime(self) -> None:
        """Drop the cached runtime copies (``runtime_modules``); call after changing weights or tiling in place."""
        self._runtime = None

    # ------------------------------------------------------------------ training door
    def forward(self, x: Tensor, cond: Tensor, q: Tensor) -> dict:
        """Training pass: noisy likelihoods for the rate, STE-rounded latents for the decoder."""
        y, z = self.analysis(x, q)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales_hat, means_hat = self.checkerboard(y, *self._hyper(z_hat, self.h_s, y.shape[-2:]))
        _, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        mu = means_hat if means_hat is not None else torch.zeros_like(y)
        y_hat = ste_round(y - mu) + mu
        x_hat = self.synthesize(y_hat, cond, q)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def synthesize(self, y_hat: Tensor, cond: Tensor, q: Tensor, runtime: bool = False) -> Tensor:
        """Decoder: ``g_s(y_hat / gain[q], CLTG(cond))``; ``runtime`` uses the eval-mode float32 copies
        (channels_last) and decodes large latents in overlapping tiles."""
        if runtime:
            rt = self.runtime_modules()
            gain = torch.exp(self.log_gain.detach().double()[q])[:, :, None, None]
            y = torch.div(y_hat.double(), gain, out=torch.empty(y_hat.shape))  # in float64, stored as float32
            tau = self.trigger(rt["cltg"], cond.float())
            g_s = rt["g_s"]
            maps = self.scale_maps(g_s, y, tau, cond.float())  # the whole latent's, before tiling (see layers)
            h, w = y.shape[-2:]

            split, u = g_s.split, g_s.split_stride

            def front(t: Tensor, region: tuple[int, int, int, int]) -> Tensor:
                t = t.contiguous(memory_format=torch.channels_last)
                return g_s(t, tau, maps, (h, w, *region), blocks=slice(0, split))

            def back(t: Tensor, region: tuple[int, int, int, int]) -> Tensor:
                t = t.contiguous(memory_format=torch.channels_last)
                return g_s(t, tau, maps, (h * u, w * u, *region), blocks=slice(split, None), unit=u).contiguous()

            # two levels of tiles: the cheap early blocks reach far (their margin, in latents, is most of the
            # decoder's reach), the costly last ones a few pixels, so each part keeps only the margin it needs.
            # The last part's tiles are half as wide in pixels (faster, measured: its stages are bound by memory
            # traffic as much as by arithmetic, and a smaller working set stays in cache)
            f = tiled(front, y, scale=u, tile=self.tile_latent, margin=SYNTHESIS_FRONT_MARGIN, region=True)
            return tiled(back, f, scale=16 // u, tile=self.tile_latent * u // 2, margin=SYNTHESIS_BACK_MARGIN,
                         region=True)
        with self._autocast(y_hat):
            y, tau = y_hat / self.gain(q), self.trigger(self.cltg, cond)
            maps = self.scale_maps(self.g_s, y, tau, cond)
            return self.g_s(y, tau, maps, (*y.shape[-2:], 0, y.shape[-2], 0, y.shape[-1]))

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()

    # ------------------------------------------------------------------ coding doors
    def update(self, force: bool = True) -> None:
        """Refresh the entropy models' CDF tables; call after training, before export."""
        self.gaussian_conditional.update_scale_table(torch.tensor(scale_table()), force=force)
        self.entropy_bottleneck.update(force=force)
        self._runtime = None

    def runtime_modules(self) -> dict[str, nn.Module]:
        """Decoder-side networks for coding (built once, cached): ``h_s`` in float64 (it picks the CDFs),
        ``g_s`` and the CLTG in float32, ``g_s`` channels_last."""
        if self._runtime is None:
            self._runtime = {
                "h_s": copy.deepcopy(self.h_s).double().eval(),
                "g_s": freeze_gdn(copy.deepcopy(self.g_s).float().eval()).to(memory_format=torch.channels_last),
                "cltg": copy.deepcopy(self.cltg).float().eval(),
            }
            if self.context is not None:
                self._runtime["context"] = copy.deepcopy(self.context).double().eval()
            if self.mean_scale:  # the last layer of h_s split into its scale and mean halves (decoder_hyper)
                last, m = self.h_s[-1], self.cfg.M
                halves = {}
                means_dtype = torch.float32 if self.context is None else torch.float64
                for name, rows, dtype in (("h_s_scales", slice(0, m), torch.float64),
                                          ("h_s_means", slice(m, 2 * m), means_dtype)):
                    conv = nn.Conv2d(last.in_channels, m, last.kernel_size, last.stride, last.padding)
                    conv.weight.data.copy_(last.weight.detach()[rows])
                    conv.bias.data.copy_(last.bias.detach()[rows])
                    halves[name] = conv.to(dtype).eval()
                if means_dtype == torch.float32:
                    halves["h_s_means"] = halves["h_s_means"].to(memory_format=torch.channels_last)
                self._runtime.update(halves)
        return self._runtime

    def rate_bits(self, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Differentiable ``(bits, y_hat)`` of coding ``y`` and ``z`` as :meth:`compress` rounds them: both
        rounded around their medians / means (straight-through), the bits from the entropy models'
        likelihoods of the rounded values (float32 ``h_s``, a close estimate of the real stream)."""
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        med = eb._get_medians()
        z_hat = ste_round(z - med) + med
        c = z_hat.shape[1]
        z_lik, *_ = eb._likelihood(z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1))
        scales, means = self.checkerboard(y, *self.hyper(z_hat, y.shape[-2:]))
        mu = means if means is not None else torch.zeros_like(y)
        y_hat = ste_round(y - mu) + mu
        y_lik = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means=means))
        bits = -(torch.log2(y_lik).sum() + torch.log2(eb.likelihood_lower_bound(z_lik)).sum())
        return bits, y_hat

    #: the search's step size, in the analysis transform's units (before the quality's gain), at the lowest
    #: quality; it grows as ``(lambda_q / lambda_1) ** REFINE_LR_POWER`` (:meth:`refine_lr`)
    REFINE_LR = 0.005
    REFINE_LR_POWER = 0.7
    #: the hyper-latent's step size and the search's warm-up steps (at most a fifth of the search)
    REFINE_Z_LR = 0.01
    REFINE_WARMUP = 8

    def refine_lr(self, q: int) -> float:
        """The search's step size at quality index ``q``: high qualities weigh distortion more, and their
        latents sit far from the analysis output's, so they take larger steps (tuned on BSDS500 crops,
        ``benchmarks/refine_tuning.py``)."""
        lams = self.cfg.lambdas
        return self.REFINE_LR * (float(lams[q]) / float(lams[0])) ** self.REFINE_LR_POWER

    def refine(self, x: Tensor, q: int, cond: Tensor, steps: int, lr: float | None = None,
               z_lr: float | None = None) -> tuple[Tensor, Tensor]:
        """Encoder-side search: ``y`` and ``z`` moved by ``steps`` Adam steps (linear warm-up, then cosine
        decay) to lower the quality's own rate-distortion cost ``bits / pixels + lambda_q * 255^2 * MSE`` of
        the view of ``cond``, keeping the best iterate (the analysis output when no step improves on it).
        ``y`` moves in the analysis transform's units (each channel's step scaled by the quality's gain);
        ``lr`` defaults to :meth:`refine_lr`.  The decoder is untouched: the result is coded by
        :meth:`compress` like any latent.  Untiled (memory grows with the image); ``x`` is the padded
        image, batch of 1."""
        qt = torch.tensor([q])
        with torch.no_grad():
            y0, z0 = self.analysis(x, qt)
            gain = self.gain(qt)
        lam = float(self.cfg.lambdas[q]) * 255.0**2
        pixels = x.shape[-1] * x.shape[-2]
        d = torch.zeros_like(y0, requires_grad=True)  # y = y0 + d * gain
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([{"params": [d], "lr": self.refine_lr(q) if lr is None else lr},
                                {"params": [z], "lr": self.REFINE_Z_LR if z_lr is None else z_lr}])
        warm = max(1, min(self.REFINE_WARMUP, steps // 5))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / max(steps, 1))))
        best, best_yz = math.inf, (y0, z0)
        with torch.enable_grad():
            for _ in range(steps):
                y = y0 + d * gain
                bits, y_hat = self.rate_bits(y, z)
                loss = bits / pixels + lam * (self.synthesize(y_hat, cond, qt) - x).pow(2).mean()
                if loss.item() < best:  # the cost of the current iterate, before the step moves it
                    best, best_yz = loss.item(), (y.detach().clone(), z.detach().clone())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return best_yz

    @torch.no_grad()
    def compress(self, x: Tensor, q: int, refine_steps: int = 0, cond: Tensor | None = None) -> dict:
        """Entropy-code ``x`` (batch of 1) at quality index ``q``.  The decoder's condition is not coded;
        ``refine_steps`` > 0 searches the latents first (:meth:`refine`) for the view of ``cond``."""
        qt = torch.tensor([q])
        if refine_steps > 0:
            if cond is None:
                raise ValueError("refine_steps needs the condition of the view to keep close")
            y, z = self.refine(x, q, cond, refine_steps)
        else:
            y = tiled(self.g_a, x, scale=1 / 16, tile=self.tile_latent * 16, margin=128) * self.gain(qt)
            z = self.h_a(y if self.mean_scale else torch.abs(y))
        return self.compress_latents(y, z)

    @torch.no_grad()
    def compress_latents(self, y: Tensor, z: Tensor) -> dict:
        """Entropy-code the latents ``y`` and ``z`` (what :meth:`compress` returns, from its latents)."""
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        scales_hat, means_hat = self.decoder_hyper(z_hat, y.shape[-2:])  # exactly what the decoder will compute
        z_sym = torch.round(z_hat - self.entropy_bottleneck._get_medians())
        if self.context is not None:
            return self._compress_checkerboard(y, z, z_strings, z_sym, scales_hat, means_hat)
        indexes = cdf_indexes(self.gaussian_conditional, scales_hat)
        mu = means_hat if means_hat is not None else torch.zeros_like(scales_hat)
        y_sym = torch.round(y.double() - mu)
        y_strings = self.gaussian_conditional.compress(y.double(), indexes, means=mu)
        z_sym = torch.round(z_hat - self.entropy_bottleneck._get_medians())
        return {
            "strings": [y_strings, z_strings],
            "shape": tuple(z.shape[-2:]),
            "y_shape": tuple(y.shape[-2:]),
            "checksum": symbols_checksum(y_sym, z_sym),
        }

    def _compress_checkerboard(self, y: Tensor, z: Tensor, z_strings: list[bytes], z_sym: Tensor, scales: Tensor,
                               means: Tensor) -> dict:
        """:meth:`compress_latents` with the checkerboard context: the anchors coded first with the hyperprior's
        parameters, then the other positions with the context's (strings: y anchors, z, y others)."""
        gc, yd = self.gaussian_conditional, y.double()
        a = anchor_mask(*y.shape[-2:]).expand(y.shape)
        sym = torch.zeros_like(yd)
        sym[a] = torch.round(yd[a] - means[a])
        y_a = gc.compress(yd[a][None], cdf_indexes(gc, scales[a][None]), means=means[a][None])
        scales2, means2 = self.decoder_context(sym, scales, means)
        n = ~a
        sym[n] = torch.round(yd[n] - means2[n])
        y_n = gc.compress(yd[n][None], cdf_indexes(gc, scales2[n][None]), means=means2[n][None])
        return {
            "strings": [y_a, z_strings, y_n],
            "shape": tuple(z.shape[-2:]),
            "y_shape": tuple(y.shape[-2:]),
            "checksum": symbols_checksum(sym, z_sym),
        }

    @torch.no_grad()
    def decode_latent(self, strings: list[list[bytes]], shape: tuple[int, int],
                      y_shape: tuple[int, int]) -> tuple[Tensor, int]:
        """Entropy-decode to ``y_hat`` (float64) and the checksum of the decoded symbols.  ``shape`` is
        ``z``'s, ``y_shape`` is ``y``'s (``compress`` returns both; a file's header gives them through
        ``container.latent_shape``)."""
        gc = self.gaussian_conditional
        with guarded(self.entropy_bottleneck, gc):  # crafted strings cannot crash us
            z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
            scales_hat, means_hat = self.decoder_hyper(z_hat, y_shape)
            if self.context is None:
                y_sym = decode_symbols(gc, strings[0], cdf_indexes(gc, scales_hat))
            else:  # the anchors first, then the others with the context of the anchors' symbols
                a = anchor_mask(*y_shape).expand(scales_hat.shape)
                y_sym = torch.zeros_like(scales_hat)
                y_sym[a] = decode_symbols(gc, strings[0], cdf_indexes(gc, scales_hat[a][None]))[0]
                scales2, means2 = self.decoder_context(y_sym, scales_hat, means_hat)
                n = ~a
                y_sym[n] = decode_symbols(gc, strings[2], cdf_indexes(gc, scales2[n][None]))[0]
                means_hat = torch.where(a, means_hat, means2)
        z_sym = torch.round(z_hat - self.entropy_bottleneck._get_medians())
        checksum = symbols_checksum(y_sym, z_sym)
        y_hat = y_sym.add_(means_hat) if means_hat is not None else y_sym  # y_sym is ours: no 8-byte copy per latent
        return y_hat, checksum

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], cond: Tensor, q: int,
                   y_shape: tuple[int, int], size: tuple[int, int] | None = None) -> dict:
        """Decode to the view of ``cond``; ``size`` (the image's height and width) crops the codec's padding
        first, as a file's header does (without it the view is made on the padded image)."""
        y_hat, checksum = self.decode_latent(strings, shape, y_shape)
        x_hat = self.synthesize(y_hat, cond, torch.tensor([q]), runtime=True)
        if size is not None:
            x_hat = x_hat[..., : size[0], : size[1]]
        x_hat = self.finish(x_hat, cond, inplace=True)
        return {"x_hat": x_hat, "checksum": checksum}

    # ------------------------------------------------------------------ state
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Resize the entropy models' CDF buffers to the stored ones, then load."""
        for prefix, module in (("entropy_bottleneck", self.entropy_bottleneck),
                               ("gaussian_conditional", self.gaussian_conditional)):
            for name in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
                key = f"{prefix}.{name}"
                if key in state_dict and hasattr(module, name):
                    getattr(module, name).resize_(state_dict[key].shape)
        self._runtime = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_model(cfg: ModelConfig) -> ConditionalHyperprior:
    return ConditionalHyperprior(cfg)
