"""``python -m psic_lab.training``: train a conditional codec (stage ``rd``, then ``shield`` stages), or export
a checkpoint to weights.

A stage is a JSON file of options (``--config``; the shipped ones are in ``psic_lab/training/configs/``),
and any flag overrides it, e.g. ``python -m psic_lab.training shield --config
psic_lab/training/configs/shield/psic-sh-views10.json --threads 1``.
"""

from __future__ import annotations

import argparse
import sys

from psic_lab.training.options import COMMANDS, add_config_arguments, config_from_args

HELP = {"rd": "rate-distortion training (both views reconstruct the image)",
        "shield": "privacy stage: decoder + condition module against a VLP target"}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[argparse.Action]]]:
    """The command line (one sub-command per stage kind, flags from its options dataclass, and ``export``) and
    each sub-command's arguments."""
    ap = argparse.ArgumentParser(prog="python -m psic_lab.training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    args = {cmd: add_config_arguments(sub.add_parser(cmd, help=HELP[cmd], description=cls.__doc__), cmd)
            for cmd, cls in COMMANDS.items()}
    ex = sub.add_parser("export", help="checkpoint -> safetensors weights with metadata")
    args["export"] = [
        ex.add_argument("checkpoint", help="a training checkpoint (runs/<name>/checkpoint.pt)"),
        ex.add_argument("out", help="the weights file to write (.safetensors)"),
        ex.add_argument("--data-desc", required=True, help="training data, stored in the metadata"),
        ex.add_argument("--notes", default="", help="free text stored in the metadata"),
    ]
    return ap, args


def main(argv: list[str] | None = None) -> int:
    ap, _ = build_parser()
    args = ap.parse_args(argv)
    if args.cmd in COMMANDS:
        try:
            cfg = config_from_args(COMMANDS[args.cmd], args, args.cmd)
        except (OSError, TypeError, ValueError) as e:
            ap.error(str(e))
        if args.cmd == "rd" and not cfg.data:
            ap.error("rd needs --data (or \"data\" in the --config file)")
    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    if args.cmd == "rd":
        from psic_lab.training.train import train

        train(cfg)
    elif args.cmd == "shield":
        from psic_lab.training.shield import train_shield

        train_shield(cfg)
    else:
        from psic_lab.training.export import export_weights

        print(export_weights(args.checkpoint, args.out, args.data_desc, notes=args.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
