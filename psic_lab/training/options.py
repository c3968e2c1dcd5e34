"""The options of the training commands: one dataclass per command, stage files, and the flags built from them.

Each field's trailing comment is its ``--help`` text (read once from this file with :mod:`ast`), a
``Literal`` type is its set of choices, and a stage is a JSON file of field values
(``configs/<command>/<stage>.json``, as open_clip keeps its model configs).  Precedence: the dataclass
default, then ``--config``, then flags on the command line.

This module imports neither torch nor the models, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import io
import json
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from psic_cli.views import View

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``rd``: rate-distortion training of the whole conditional codec."""

    model_id: str = "psic-sh"  # model config id (psic_cli/models/configs/<id>.json) or a path to such a JSON file
    data: list[str] = field(default_factory=list)  # image folders or files, searched recursively (required)
    key: str = "weights/shipped.key"  # key file whose full view the model learns
    run_dir: str = "runs/psic-sh"  # folder of checkpoint.pt and log.jsonl; a checkpoint found there is resumed
    steps: int = 20000  # total optimiser steps; a resumed run continues up to this count
    batch: int = 16  # images per step (per process under torchrun)
    patch: int = 128  # side of the square random crops, in pixels
    lr: float = 2e-4  # peak learning rate (Adam), held over the first half of the run
    lr_final: float = 2e-5  # cosine decay to this over the last half of the run
    aux_lr: float = 1e-3  # learning rate of the entropy bottleneck's quantiles (CompressAI's auxiliary loss)
    clip: float = 1.0  # gradient-norm clip of the main parameters
    threads: int = 0  # CPU threads for torch (0: torch's default)
    seed: int = 2000  # random seed of initialisation, crops, qualities and conditions (plus the rank under torchrun)
    log_every: int = 50  # append a JSON line (means over the interval) to log.jsonl every this many steps
    ckpt_every: int = 250  # write checkpoint.pt every this many steps (and at the end or the time limit)
    limit_images: int | None = None  # train on a random subset of this many images (none: all of them)
    init_from: str | None = None  # start from these weights: "a.safetensors[=prefix+prefix],b.pt" (see warm_start)
    max_minutes: float | None = None  # stop (with a checkpoint) after this many minutes of wall time
    amp: Literal["off", "bf16"] = "off"  # bf16: analysis and synthesis in bfloat16 autocast (entropy models fp32)
    compile: bool = False  # torch.compile the training step (pays off on a GPU, not on 2 CPU cores)
    train_part: Literal["all", "encoder", "decoder", "context", "gain"] = "all"  # encoder: only the analysis side (g_a,
    # h_a) learns, for the key's full view; the decoder, entropy models and gains stay frozen, so files keep decoding
    # the same; decoder: only the synthesis and its condition path (g_s, CLTG) learn, on the frozen encoder's
    # quantised latents, so the bitstream and every file's symbols stay the same;
    # context: only the checkerboard context of a mean-scale-checkerboard model learns, on the rate alone;
    # gain: only the gains of quality levels (lambdas) that the --init-from weights lack learn, on the frozen
    # codec, so a model config with added lambdas reaches new rates and its other levels stay as they were
    latent_crops: int = 4096  # train_part context: random crops whose latents the frozen encoder computes once
    new_channels_only: bool = False  # train_part encoder with a widened g_a: only its added channels learn (the
    # weights it was widened from and h_a stay fixed), so the run starts from them and stays near them
    quality_weights: str = ""  # relative share of each quality level (1, 2, ...) in the training batches, e.g.
    # 1,1,1,1,1,2,3 to train the top levels more; empty: uniform

    def __post_init__(self) -> None:
        check_choices(self)
        parse_weights(self.quality_weights)
        if self.new_channels_only and self.train_part != "encoder":
            raise ValueError("new_channels_only needs train_part encoder")


@dataclass(frozen=True)
class ShieldConfig:
    """Options of ``shield``: the privacy stages (decoder and condition path against a VLP target)."""

    init: str = "lab_weights/rd/psic-sh.safetensors"  # rate-distortion weights or checkpoint to start from
    reference: str = ""  # the decoder whose full view is the reference (default: init)
    model_id: str = "psic-sh"  # model config id (psic_cli/models/configs/<id>.json) or a path to such a JSON file
    data: list[str] = field(default_factory=lambda: ["../shared/data/imagenette/train"])  # <wnid>/ folders
    key: str = "weights/shipped.key"  # key file of the full and machine views
    vlp: str = "psic-vlp-mini"  # the target vision-language model the shielded views must mislead (psic_lab.vlp)
    run_dir: str = "runs/psic-sh-shield"  # folder of checkpoint.pt and log.jsonl; a checkpoint found there is resumed
    steps: int = 3000  # total optimiser steps; a resumed run continues up to this count
    batch: int = 8  # images per step
    patch: int = 192  # side of the square random crops, in pixels
    lr: float = 1e-4  # peak learning rate (Adam), held over the first half of the run
    lr_final: float = 1e-5  # cosine decay to this over the last half of the run
    qualities: str = "all"  # "all" or 1-based quality levels to train, e.g. "2" or "1,2"
    p_full: float = 0.375  # share of samples decoded with the model's key
    weighting: Literal["adaptive", "fixed"] = "adaptive"  # adaptive (Lagrangian dual ascent on nu) | fixed nu
    nu: float = 1.0  # initial (adaptive) or constant (fixed) weight of the shielded view's distortion
    nu_lr: float = 0.02  # dual-ascent step: nu *= exp(nu_lr * (gap EMA - budget)), per step
    nu_min: float = 0.05  # lower bound of the adaptive weights (nu, strong_nu)
    nu_max: float = 50.0  # upper bound of the adaptive weights (nu, strong_nu)
    psnr_budget_db: float = 0.6  # allowed PSNR gap between the shielded and the reference full view
    anchor_weight: float = 1.0  # weight of the full view's distortion to the reference decoder's full view
    semantic_weight: float = 0.0  # weight of 1 - cos(vlp(full view), vlp(image)) on full-view samples (0: off)
    privacy_loss: Literal["uaeo", "uaeo+margin"] = "uaeo"  # uaeo+margin adds a margin on the caption decision
    margin_weight: float = 0.1  # weight of the margin term (privacy_loss uaeo+margin)
    margin_kappa: float = 5.0  # logit units: push the true caption this far below the best other one
    codec_pad: bool = False  # pad each batch as the codec does (replicate, to 16 in format 2), crop back
    eot_lowres: float = 0.0  # strong shield: share of EOT samples seen at 48-96 px (low-resolution models)
    indexer: str = "none"  # what the target sees (registered in losses.INDEXERS): none (as is), multi, multi-strong
    strong_indexer: str = ""  # the strong view's indexer, after its publication chain (empty: the same as indexer)
    sizes: str = ""  # shorter sides of the decoded images, one drawn per step, e.g. 160,224,448 (empty: patch crops)
    aspects: str = "1:1,3:2,2:3"  # width:height ratios drawn per step with sizes (sides rounded to multiples of 16)
    min_batch: int = 2  # with sizes: images per step = batch * patch^2 / (height * width), at least this many
    embed_weight: float = 0.0  # weight of cos(target embedding of the keyless view, of the original) (0: off)
    grid_weight: float = 0.0  # > 0: the keyless views also pay this times lambda times the energy of their
    # lattice pattern, the part of (view - reference full view) that repeats every 16 pixels (losses.lattice_energy)
    scale_grid: int = 0  # > 0: give the decoder a scale branch with this many cells a side (ScaleBranch); 0: as init
    indexer_residual: int = 0  # > 0: give the model an IndexerResidual on thumbnails this many pixels a side
    train_part: Literal["decoder", "residual", "pattern"] = "decoder"  # what trains: the decoder and condition
    # path; or only the indexer residual (the decoder frozen: keyed views exactly as they were); or only the
    # residual's image-independent pattern per view (its U-Net's output set to zero: a universal perturbation)
    indexer_residual_rms: str = ""  # with indexer_residual: exact RMS per shield view in 8-bit levels, e.g. "4.5,9"
    # (a fixed budget instead of the tanh bound and the PSNR weighting); empty: as the model config
    indexer_residual_mask: float = 0.0  # with indexer_residual: > 0 sets the model's texture-masking power (0: as
    # the model config)
    residual_input: Literal["decoded", "original"] = "decoded"  # train_part residual: add the residual to the decoded
    # view (the codec runs every step) or to the original image (no codec: several times faster per step)
    scale_keyless_only: bool = False  # with scale_grid: the branch acts for the shields' public conditions only
    captions: Literal["data", "imagenet"] = "data"  # UAEO's text set: the data's class captions, or ImageNet's 1000
    reset_trigger: bool = True  # re-initialise CLTG and zero the trigger projections at the start
    trigger_lr_mult: float = 10.0  # learning-rate multiplier of the condition path (CLTG, P, S)
    dead_trigger_patience: int = 50  # > 0: stop the stage once a keyless view's trigger has been dead (no live
    # CLTG unit for its condition: it decodes as the full view) for this many steps in a row; 0: never stop
    branch_lr_mult: float = 0.0  # > 0: the scale branch's own learning-rate multiplier (0: trigger_lr_mult)
    views: str = "full,shielded"  # trained views, comma-separated: full, shielded (required), strong, machine
    preserve: str = ""  # views held to the starting decoder's output (e.g. shielded, in a later stage)
    preserve_weight: float = 4.0  # weight of a preserved view's distortion to the starting decoder's output
    strong_budget_db: float = 2.5  # allowed PSNR gap of the strong shield
    strong_nu: float = 1.0  # initial (adaptive) or constant (fixed) weight of the strong view's distortion
    ensemble: str = "effnet-lite1"  # extra models the strong shield must fool (never the unseen judges)
    ensemble_weight: float = 1.0  # weight of the ensemble's loss on strong-view samples
    ensemble_kappa: float = 0.0  # > 0: hinge on the logit margin (confident misclassification) instead of p_true
    machine_weight: float = 1.0  # weight of the machine view's VLP feature losses (global, local, instance)
    machine_dist_weight: float = 0.25  # weight of the machine view's distortion to the image
    threads: int = 0  # CPU threads for torch (0: torch's default)
    device: str = "cpu"  # where the networks run: cpu, cuda, or auto (cuda when there is one); the data, the
    # draws and the JPEG/WebP round trips stay on the CPU
    seed: int = 2000  # random seed of crops, qualities, views, keys and augmentations
    log_every: int = 20  # append a JSON line (the last step's terms) to log.jsonl every this many steps
    ckpt_every: int = 100  # write checkpoint.pt every this many steps (and at the end or the time limit)
    limit_images: int | None = None  # train on a random subset of this many images (none: all of them)
    max_minutes: float | None = None  # stop (with a checkpoint) after this many minutes of wall time

    def __post_init__(self) -> None:
        check_choices(self)
        parse_views(self.preserve, "preserve")
        if View.SHIELDED not in parse_views(self.views):
            raise ValueError(f"views must include {View.SHIELDED}: {self.views!r}")
        parse_sizes(self.sizes)
        parse_aspects(self.aspects)


def parse_weights(spec: str) -> list[float]:
    """``"1,1,2"`` -> ``[1.0, 1.0, 2.0]`` (empty: ``[]``); ValueError unless all are >= 0 with a positive sum."""
    try:
        weights = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"quality weights: expected numbers separated by commas, got {spec!r}") from None
    if weights and (min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"quality weights must be >= 0 with a positive sum, got {spec!r}")
    return weights


def parse_sizes(spec: str) -> list[int]:
    """``"160,224,448"`` -> ``[160, 224, 448]`` (empty: none); ValueError unless each is a multiple of 16 >= 32."""
    sizes = [int(t) for t in spec.split(",") if t.strip()]
    if any(s < 32 or s % 16 for s in sizes):
        raise ValueError(f"sizes must be multiples of 16 of at least 32, got {spec!r}")
    return sizes


def parse_aspects(spec: str) -> list[float]:
    """``"1:1,3:2"`` -> ``[1.0, 1.5]`` (width / height); ValueError on a malformed or non-positive ratio."""
    out = []
    for t in (t.strip() for t in spec.split(",") if t.strip()):
        w, sep, h = t.partition(":")
        try:
            r = float(w) / float(h) if sep else float("nan")
        except (ValueError, ZeroDivisionError):
            r = float("nan")
        if not r > 0:
            raise ValueError(f"aspects are width:height ratios such as 3:2, got {t!r}")
        out.append(r)
    if not out:
        raise ValueError("aspects must name at least one ratio")
    return out


COMMANDS: dict[str, type] = {"rd": TrainConfig, "shield": ShieldConfig}


def parse_views(spec: str, what: str = "views") -> list[View]:
    """``"full,shielded"`` -> ``[View.FULL, View.SHIELDED]``; ValueError naming the valid views."""
    names = [v.strip() for v in spec.split(",") if v.strip()]
    if any(v not in {m.value for m in View} for v in names):
        raise ValueError(f"{what} must come from {', '.join(View)}: {names}")
    return [View(v) for v in names]


def check_choices(cfg: Any) -> None:
    """ValueError when a ``Literal`` field of the dataclass ``cfg`` holds a value outside its choices."""
    for name, hint in _hints(type(cfg)).items():
        allowed = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        if allowed and getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {getattr(cfg, name)!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the class body of ``cls``, with the comment-only lines that continue it
    (``""`` where there is none)."""
    import inspect

    source = Path(inspect.getsourcefile(cls)).read_text()
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}

    def text(end: int) -> str:
        parts, n = [comments.get(end, "")], end + 1
        while parts[0] and n in comments and lines[n - 1].lstrip().startswith("#"):
            parts.append(comments[n])
            n += 1
        return " ".join(parts)

    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    return {st.target.id: text(st.end_lineno) for st in node.body
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, command: str) -> list[argparse.Action]:
    """``--config`` and one flag per field of ``cls`` (returned); flags default to "not given" so that a stage
    file's values show through."""
    cls = COMMANDS[command]
    actions = [parser.add_argument("--config", metavar="STAGE.json",
                                   help=f"a JSON file of these options (a stage; a bare name is one of "
                                        f"psic_lab/training/configs/{command}/); flags given here override it")]
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        hint = _base_type(_hints(cls)[f.name])
        default = _default(f)
        shown = " ".join(default) if isinstance(default, list) else "none" if default is None else default
        text = helps[f.name] + (f" (default: {shown})" if shown != "" else "")
        text = text.replace("%", "%%")  # argparse formats help with %
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        flag = "--" + f.name.replace("_", "-")
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            kw.update(nargs="+", metavar="PATH")
        elif typing.get_origin(hint) is Literal:
            kw["choices"] = typing.get_args(hint)
        else:
            kw["type"] = hint
        actions.append(parser.add_argument(flag, **kw))
    return actions


def resolve_config_path(spec: str, command: str) -> Path:
    """A stage file: ``spec`` as a path, else ``configs/<command>/<spec>.json``; FileNotFoundError listing those."""
    path = Path(spec)
    if path.is_file():
        return path
    named = CONFIG_DIR / command / f"{spec}.json"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / command).glob("*.json")))
    raise FileNotFoundError(f"no stage file {spec!r} (nor a built-in {command} stage of that name: {known})")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A JSON value as the field's type: int -> float, a lone string -> a one-item list; TypeError otherwise."""
    optional = type(None) in typing.get_args(hint)
    hint = _base_type(hint)
    if value is None and optional:
        return value
    if typing.get_origin(hint) is list:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif typing.get_origin(hint) is Literal:
        return value  # checked against the choices by the dataclass
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise TypeError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def read_stage(cls: type, path: str | Path) -> dict[str, Any]:
    """The field values in a stage file, checked: an unknown key or a value of the wrong type is a ValueError."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a stage file is a JSON object of option values")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = _hints(cls)
    try:
        return {k: _coerce(k, v, hints[k]) for k, v in raw.items()}
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


def load_stage(cls: type, path: str | Path, **overrides: Any) -> Any:
    """An instance of ``cls`` from a stage file, with ``overrides`` on top."""
    return cls(**{**read_stage(cls, path), **overrides})


def config_from_args(cls: type, args: argparse.Namespace, command: str) -> Any:
    """Defaults < ``--config`` file < flags given, as an instance of ``cls`` (ValueError on a bad value)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    base = read_stage(cls, resolve_config_path(args.config, command)) if args.config else {}
    return cls(**{**base, **given})
