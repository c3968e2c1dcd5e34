"""``python -m psic_lab.training``: train a conditional codec, or export a checkpoint to weights/."""

from __future__ import annotations

import argparse
import sys

from psic_cli._compat import ensure_torchvision_importable


def main(argv: list[str] | None = None) -> int:
    ensure_torchvision_importable()
    from psic_lab.training.train import TrainConfig

    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m psic_lab.training", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("rd", help="rate-distortion training (both views reconstruct the image)")
    for name, val in d.__dict__.items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            tr.add_argument(flag, nargs="+", required=True, help="image folders (recursive)")
        elif isinstance(val, bool):
            tr.add_argument(flag, action="store_true")
        else:
            typ = type(val) if val is not None else (float if name == "max_minutes" else
                                                      int if name == "limit_images" else str)
            tr.add_argument(flag, type=typ, default=val, help=f"default: {val}")
    from psic_lab.training.shield import ShieldConfig

    sh = sub.add_parser("shield", help="privacy stage: decoder + condition module against a VLP target")
    for name, val in ShieldConfig().__dict__.items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            sh.add_argument(flag, nargs="+", default=val, help=f"labelled <wnid>/ folders (default: {val})")
        elif isinstance(val, bool):
            sh.add_argument(flag, action=argparse.BooleanOptionalAction, default=val, help=f"default: {val}")
        else:
            typ = type(val) if val is not None else (float if name == "max_minutes" else int)
            sh.add_argument(flag, type=typ, default=val, help=f"default: {val}")
    ex = sub.add_parser("export", help="checkpoint -> safetensors weights with metadata")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    ex.add_argument("--data-desc", required=True, help="training data, stored in the metadata")
    ex.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in vars(args).items() if k != "cmd"}
    if args.cmd == "rd":
        from psic_lab.training.train import train

        train(TrainConfig(**kw))
    elif args.cmd == "shield":
        from psic_lab.training.shield import train_shield

        train_shield(ShieldConfig(**kw))
    else:
        from psic_lab.training.export import export_weights

        meta = export_weights(args.checkpoint, args.out, args.data_desc, notes=args.notes)
        print(meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
