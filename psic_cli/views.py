"""The views a .psic file decodes to, and the one map from a view (and key) to the decoder's condition.

========  =========  =========================================================================
view      needs key  condition vector (``keys`` derives it; see that module's docstring)
========  =========  =========================================================================
shielded  no        the subtle shield: all zeros (the default decode)
strong    no        the strong shield: a public +-1 vector
full      yes       the key's full-view bits
machine   yes       the key's machine-view bits (for machine analytics)
========  =========  =========================================================================

Everything that names a view (the CLI, the codec, the zoo's trained views, training and evaluation) uses
:class:`View`; the strings are its values, so ``View("strong")`` parses a command line or a report key.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from psic_cli.keys import condition_bits, public_condition


class View(str, Enum):
    """A decoded view; str-valued, so it compares equal to, prints as and serialises to its name."""

    SHIELDED = "shielded"  # no key: the subtle shield (the default decode)
    STRONG = "strong"  # no key: the strong shield (survives re-encoding better, costs more quality)
    FULL = "full"  # the model's key: the picture as coded
    MACHINE = "machine"  # the model's key: the view trained for machine analytics

    def __str__(self) -> str:
        return self.value

    @property
    def needs_key(self) -> bool:
        return self in (View.FULL, View.MACHINE)

    @property
    def shield_level(self) -> str | None:
        """``subtle`` / ``strong`` for the keyless views (the ``--shield`` names), else None."""
        return {View.SHIELDED: "subtle", View.STRONG: "strong"}.get(self)

    @classmethod
    def from_shield(cls, level: str) -> View:
        """The keyless view of a shield level (``subtle`` or ``strong``); ValueError otherwise."""
        for v in SHIELD_VIEWS:
            if v.shield_level == level:
                return v
        raise ValueError(f"unknown shield level {level!r}; choose one of {', '.join(SHIELD_LEVELS)}")


#: the keyless views (shield levels) and the keyed ones
SHIELD_VIEWS = (View.SHIELDED, View.STRONG)
KEY_VIEWS = (View.FULL, View.MACHINE)
#: the ``--shield`` names of the keyless views, in order
SHIELD_LEVELS = tuple(v.shield_level for v in SHIELD_VIEWS)


def condition(view: View | str, key: bytes | None, cond_dim: int) -> list[float]:
    """The decoder's condition vector (length ``cond_dim``) for ``view``; a keyed view needs ``key``."""
    view = View(view)
    if view is View.SHIELDED:  # the default decode: no trigger at all
        return [0.0] * cond_dim
    if view is View.STRONG:  # public, so that anyone can decode the strong shield
        return public_condition(cond_dim, view.value)
    if key is None:
        raise ValueError(f"the {view} view needs a key")
    return condition_bits(key, cond_dim, view.value)


def trained_views(metadata: dict) -> list[View]:
    """The views a weights file has trained: shielded and full always, then strong and machine if its metadata
    says so (``shield_levels`` lists ``strong``; ``machine_view`` is ``trained``)."""
    views = [View.SHIELDED, View.FULL]
    if View.STRONG.shield_level in metadata.get("shield_levels", "").split(","):
        views.append(View.STRONG)
    if metadata.get("machine_view") == "trained":
        views.append(View.MACHINE)
    return views


def views_metadata(views: Iterable[View | str]) -> dict[str, str]:
    """The weights-file metadata that :func:`trained_views` reads back (written at export)."""
    vs = {View(v) for v in views}
    meta = {"machine_view": "trained"} if View.MACHINE in vs else {}
    meta["shield_levels"] = ",".join(str(v.shield_level) for v in SHIELD_VIEWS if v is View.SHIELDED or v in vs)
    return meta


__all__ = ["View", "SHIELD_VIEWS", "KEY_VIEWS", "SHIELD_LEVELS", "condition", "trained_views", "views_metadata"]
