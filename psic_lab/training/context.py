"""Stage ``rd`` with ``--train-part context``: a checkerboard context model learnt on a frozen codec.

The model config's arch is ``mean-scale-checkerboard`` (:class:`psic_cli.models.layers.CheckerboardContext`).
Everything else (analysis, synthesis, hyperprior, gains) comes from the ``init_from`` weights and stays
frozen, so the anchors' symbols, the hyper-latent and the decoder are those weights' own; only the other half
of the latent is coded differently, with fewer bits where the context predicts it.  The loss is the rate
alone: the decoder does not change, and the symbols it gets differ only where the context moves a mean.

No pixels pass through the networks while training: the frozen analysis transform's latents of
``latent_crops`` random crops are computed once at the start (a few seconds per thousand), and each step
scales a batch of them by random qualities' gains and codes them with the hyperprior and the context.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from psic_cli.keys import fingerprint, read_key
from psic_cli.models import build_model, load_config
from psic_lab.training.data import PatchBank
from psic_lab.training.options import TrainConfig
from psic_lab.training.train import draw_qualities, quality_weights
from psic_lab.training.trainer import log_event

CONTEXT_PREFIXES = ("context.",)


class ContextStage:
    """The ``rd-context`` stage for :class:`~psic_lab.training.trainer.Trainer` (see the module docstring)."""

    name = "rd-context"

    def __init__(self, tc: TrainConfig, device: torch.device) -> None:
        self.config, self.device = tc, device
        torch.manual_seed(tc.seed)
        self.cfg = load_config(tc.model_id)
        self.quality_weights = quality_weights(tc.quality_weights, self.cfg.qualities)
        if self.cfg.arch != "mean-scale-checkerboard":
            raise SystemExit(f"train_part context needs a mean-scale-checkerboard model, not {self.cfg.arch}")
        if not tc.init_from:
            raise SystemExit("train_part context needs --init-from: the codec the context is learnt for")
        self.model = build_model(self.cfg).to(device)
        self.key = read_key(tc.key)
        for n, p in self.model.named_parameters():
            p.requires_grad_(n.startswith(CONTEXT_PREFIXES))
        self.clip_params = [p for p in self.model.parameters() if p.requires_grad]
        self.clip = tc.clip
        self.optimizers = {"opt": torch.optim.Adam(self.clip_params, lr=tc.lr)}
        self.base_steps = 0

    def fresh_start(self) -> tuple[int, dict | None]:
        from psic_lab.training.train import warm_start

        rep = warm_start(self.model, self.config.init_from)
        self.base_steps, rep["continue_step"] = rep.get("source_steps", 0), 0
        return 0, {"event": "init_from", "spec": self.config.init_from, **rep}

    def load_state(self, extra: dict) -> None:
        self.base_steps = int(extra.get("base_steps", 0))

    @torch.no_grad()
    def start(self, step: int) -> None:
        tc = self.config
        self.model.to(self.device).eval()  # frozen parts; the context has no train-only layers
        t0 = time.time()
        bank = PatchBank([Path(d) for d in tc.data], tc.patch, seed=tc.seed, limit=tc.limit_images)
        latents = []
        for i in range(0, tc.latent_crops, 16):
            x = bank.batch(min(16, tc.latent_crops - i)).to(self.device)
            latents.append(self.model.g_a(x).to(torch.float16))  # before the gain: any quality can use it
        self.latents = torch.cat(latents)
        log_event(Path(tc.run_dir), {"event": "data", "images": len(bank), "latent_crops": len(self.latents),
                                     "seconds": round(time.time() - t0, 1)})
        self.pixels = tc.patch * tc.patch
        self.gen = torch.Generator().manual_seed(tc.seed + step)

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = self.config.batch
        idx = torch.randint(len(self.latents), (n,), generator=self.gen)
        q = draw_qualities(n, self.cfg.qualities, self.quality_weights, self.gen)
        m = self.model
        with torch.no_grad():
            y = self.latents[idx].float().to(self.device) * m.gain(q.to(self.device))
            z = m.h_a(y)
        bits, _ = m.rate_bits(y, z)  # anchors and z are constant; the context's positions carry the gradient
        bpp = bits / (n * self.pixels)
        return bpp, {"bpp": float(bpp.detach())}

    def after_step(self) -> dict[str, float]:
        return {}

    def summary(self, recs: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(sum(r[k] for r in recs) / len(recs), 5) for k in recs[0]}

    def state(self) -> dict:
        return {"key_fingerprint": fingerprint(self.key), "base_steps": self.base_steps}
