"""Checkpoint -> shipped weights: refresh CDF tables, write safetensors with metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from psic_cli.models import ModelConfig, build_model
from psic_cli.views import views_metadata
from psic_cli.zoo import WEIGHTS_FORMAT, bitstream_id


def refine_quantiles(model, steps: int = 2000, lrs: tuple[float, ...] = (0.1, 0.01)) -> float:
    """Converge the entropy bottleneck's quantiles, which set the range of z's CDF tables.

    Their loss does not depend on data, so a few thousand steps here (seconds) finish what the slow
    auxiliary optimiser of a short training run left undone.  Returns the final auxiliary loss.
    """
    params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    loss = model.aux_loss()
    for lr in lrs:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = model.aux_loss()
            loss.backward()
            opt.step()
    return float(loss.detach())


def write_weights(model, out: str | Path, *, steps: int, key_fingerprint: str, data_desc: str,
                  stage: str = "rd", shield: str = "untrained", notes: str = "", extra: dict | None = None) -> dict:
    """Write ``model`` (CDF tables refreshed) to ``out`` as safetensors with provenance metadata."""
    model.eval()
    model.update(force=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    cfg = model.cfg
    meta = {
        "format": WEIGHTS_FORMAT,
        "model_id": cfg.model_id,
        "arch": cfg.arch,
        "config": cfg.to_json(),
        "qualities": str(cfg.qualities),
        "training_data": data_desc,
        "steps": str(steps),
        "stage": stage,
        "key_fingerprint": key_fingerprint,
        "bitstream_id": bitstream_id(tensors).hex(),
        "shield": shield,
        "notes": notes,
        **(extra or {}),
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return meta


#: stages that train one part on frozen weights (``base_steps`` in the checkpoint): what trains, on what
PART_STAGES = {"rd-encoder": ("analysis side (g_a, h_a) retrained", "a frozen decoder"),
               "rd-decoder": ("synthesis (g_s, CLTG) retrained", "a frozen encoder and entropy model"),
               "rd-context": ("checkerboard context trained", "a frozen codec"),
               "rd-gain": ("gains of added quality levels trained", "a frozen codec")}


def export_weights(checkpoint: str | Path, out: str | Path, data_desc: str, shield: str = "untrained",
                   notes: str = "") -> dict:
    """Write ``out`` (safetensors) from a training checkpoint and return its metadata.

    The metadata records the trained views (``machine_view``, ``shield_levels``) from the checkpoint's
    ``views`` (a later stage lists every view it keeps, preserved ones included)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ModelConfig.from_dict(json.loads(state["model_config"]))
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    extra = state.get("extra", {})
    stage = extra.get("stage", "rd")
    steps = state["step"]
    if stage == "rd":  # later stages freeze the entropy models: refining would change the bitstream
        aux = refine_quantiles(model)
        notes = (notes + "; " if notes else "") + f"aux loss after quantile refinement {aux:.3g}"
    elif stage in PART_STAGES:  # one part trained on frozen weights: their steps plus its own
        base = int(extra.get("base_steps", 0))
        steps += base
        what, on = PART_STAGES[stage]
        notes = (notes + "; " if notes else "") + f"{what} for {state['step']} steps on {on} of {base} steps"
    else:
        shield = "trained"
    meta_extra = {k: str(v) for k, v in extra.items() if k.endswith("_config")}
    meta_extra.update(views_metadata(str(extra.get("views", "full,shielded")).split(",")))
    return write_weights(model, out, steps=steps, key_fingerprint=extra["key_fingerprint"],
                         data_desc=data_desc, stage=stage, shield=shield, notes=notes, extra=meta_extra)
