"""One typed view: names, keys and the one map from a view to the decoder's condition."""

import json

import pytest

from psic_cli import keys
from psic_cli.views import KEY_VIEWS, SHIELD_LEVELS, SHIELD_VIEWS, View, condition, trained_views, views_metadata

from .conftest import TEST_KEY


def test_view_is_its_name():
    assert [v.value for v in View] == ["shielded", "strong", "full", "machine"]
    assert View("strong") is View.STRONG and View.FULL == "full" and f"{View.MACHINE}" == "machine"
    assert json.dumps({View.SHIELDED: [View.FULL]}) == '{"shielded": ["full"]}'
    assert {"full": 1}[View.FULL] == 1
    with pytest.raises(ValueError):
        View("medium")


def test_keys_and_shield_levels():
    assert [v for v in View if v.needs_key] == list(KEY_VIEWS)
    assert tuple(v.shield_level for v in SHIELD_VIEWS) == SHIELD_LEVELS == ("subtle", "strong")
    assert View.from_shield("strong") is View.STRONG and View.from_shield("subtle") is View.SHIELDED
    with pytest.raises(ValueError, match="subtle, strong"):
        View.from_shield("full")


def test_condition_is_the_key_derivation():
    """The one map (view, key, cond_dim) -> condition agrees with the pinned derivations in keys."""
    assert condition(View.SHIELDED, None, 16) == [0.0] * 16
    assert condition("strong", TEST_KEY, 16) == condition("strong", None, 16) == keys.public_condition(16, "strong")
    assert condition(View.FULL, TEST_KEY, 16) == keys.condition_bits(TEST_KEY, 16, "full")
    assert condition(View.MACHINE, TEST_KEY, 16) == keys.condition_bits(TEST_KEY, 16, "machine")
    with pytest.raises(ValueError, match="needs a key"):
        condition(View.FULL, None, 16)


def test_trained_views_from_metadata():
    assert trained_views({}) == [View.SHIELDED, View.FULL]
    assert trained_views({"shield_levels": "subtle,strong", "machine_view": "trained"}) == [
        View.SHIELDED, View.FULL, View.STRONG, View.MACHINE]
    for views in ([View.SHIELDED, View.FULL], ["full", "shielded", "strong"], list(View)):
        assert trained_views(views_metadata(views)) == [v for v in trained_views(
            {"shield_levels": "subtle,strong", "machine_view": "trained"}) if v in set(views)]
    assert views_metadata(["full", "shielded"]) == {"shield_levels": "subtle"}


def test_view_names_are_spelt_only_in_the_view_type():
    """Code names a view through :class:`View`: no string constant "shielded", "strong", "full" or "machine"
    outside ``psic_cli/views.py`` (docstrings, help text and JSON data are not constants of exactly that value)."""
    import ast

    from .conftest import REPO

    names = {v.value for v in View}
    found = []
    for folder in ("psic_cli", "psic_lab", "benchmarks", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "psic_cli" / "views.py":
                continue
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, ast.Constant) and node.value in names:
                    line = lines[node.lineno - 1]
                    if not (node.value == "machine" and "platform.machine()" in line):  # host metadata
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {line.strip()}")
    assert not found, "view names spelt as strings:\n" + "\n".join(found)
