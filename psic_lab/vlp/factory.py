"""``load_vlp(spec)``: build any VLP from a spec string.

Specs:

* ``psic-vlp-mini`` or ``psic-vlp-mini:PATH`` - the bundled target (weights default to ``weights/``)
* ``judge-scratch`` or ``judge-scratch:PATH`` - the from-scratch judge
* ``surrogate-scratch`` or ``surrogate-scratch:PATH`` - a from-scratch model the strong shield may train against
* ``effnet-lite2`` (also ``effnet-lite0``/``effnet-lite1``) - ImageNet classifier restricted to a label set
* ``openclip:ARCH:PATH`` - an open_clip model from a local checkpoint
"""

from __future__ import annotations

from .base import VLP

SPECS = ("psic-vlp-mini", "judge-scratch", "surrogate-scratch", "effnet-lite2", "openclip:ARCH:PATH")


def load_vlp(spec: str) -> VLP:
    """Load the VLP named by ``spec`` (frozen, eval mode, offline)."""
    from .text import set_offline

    set_offline()
    kind, _, rest = spec.partition(":")
    if kind == "psic-vlp-mini":
        from .mini import PsicVlpMini

        return PsicVlpMini.load(rest) if rest else PsicVlpMini.load()
    if kind == "judge-scratch":
        from .judges import ScratchJudge

        return ScratchJudge.load(rest) if rest else ScratchJudge.load()
    if kind == "surrogate-scratch":
        from .judges import DEFAULT_SURROGATE_WEIGHTS, ScratchJudge

        return ScratchJudge.load(rest or DEFAULT_SURROGATE_WEIGHTS)
    if kind in ("effnet-lite0", "effnet-lite1", "effnet-lite2") and not rest:
        from .judges import EffNetLabelJudge

        return EffNetLabelJudge(kind.replace("effnet-", "efficientnet-"))
    if kind == "openclip":
        arch, sep, path = rest.partition(":")
        if not sep or not arch or not path:
            raise ValueError(f"open_clip spec must be openclip:ARCH:PATH, got {spec!r}")
        from .openclip_backend import OpenClipVLP

        return OpenClipVLP(arch, path)
    raise ValueError(f"unknown VLP spec {spec!r}; expected one of {', '.join(SPECS)}")
