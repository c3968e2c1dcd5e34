"""The runtime (``psic_cli``) never imports the lab (``psic_lab``) or training-only dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import psic_cli

RUNTIME = Path(psic_cli.__file__).resolve().parent
FORBIDDEN = ["psic_lab", "open_clip", "transformers", "torchvision", "torch_geometric", "pandas"]
# the one place that hands lab commands (psic train / eval / vlp-eval) to psic_lab, by module name
LAB_DOOR = RUNTIME / "cli.py"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` statement names (top-level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_runtime_modules_never_import_the_lab():
    modules = sorted(RUNTIME.rglob("*.py"))
    assert len(modules) > 10, modules
    bad = [f"{p.relative_to(RUNTIME.parent)}:{line}: {name}" for p in modules
           for line, name in imported_modules(p) if name == "psic_lab" or name.startswith("psic_lab.")]
    assert not bad, "the runtime imports the lab:\n" + "\n".join(bad)


def test_lab_module_names_only_at_the_cli_door():
    """A module name string (for importlib) is a back door too: only cli.py's lab commands may hold one."""
    bad = []
    for p in sorted(RUNTIME.rglob("*.py")):
        if p == LAB_DOOR:
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("psic_lab."):
                bad.append(f"{p.relative_to(RUNTIME.parent)}:{node.lineno}: {node.value!r}")
    assert not bad, bad


def test_the_scan_sees_a_lab_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from psic_lab.training import export\n    import psic_lab.vlp as v\n")
    assert [n for _, n in imported_modules(p)] == ["psic_lab.training", "psic_lab.vlp"]


def test_codec_import_stays_light(tiny_weights):
    """Encode, decode (every keyless view) and list models with the lab and the train extra made unimportable."""
    code = (
        "import sys, numpy as np\n"
        f"for m in {FORBIDDEN!r}: sys.modules[m] = None  # import m -> ImportError, as when not installed\n"
        "from psic_cli import codec\n"
        "from psic_cli.zoo import list_models\n"
        "data = codec.encode_pixels(np.zeros((64, 64, 3), np.uint8), 'tiny-views')\n"
        "codec.decode(data)\n"
        "codec.decode(data, view='strong')\n"
        "assert {m.model_id for m in list_models()} >= {'tiny-sh', 'tiny-views'}\n"
        "for m in list(sys.modules):\n"
        "    if sys.modules[m] is None: del sys.modules[m]\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "assert not bad, bad\n"
    )
    env = {"PSIC_WEIGHTS": str(tiny_weights), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_help_imports_neither_torch_nor_the_lab():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom psic_cli.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'psic_lab')]\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lab_command_without_the_lab(monkeypatch):
    """Without psic_lab installed, 'psic train' prints one line naming the lab command and exits 2."""
    from typer.testing import CliRunner

    from psic_cli.cli import app

    for name in ["psic_lab", "psic_lab.training", "psic_lab.training.__main__"]:
        monkeypatch.setitem(sys.modules, name, None)  # import -> ModuleNotFoundError, as when not installed
    r = CliRunner().invoke(app, ["train", "rd", "-h"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "python -m psic_lab.training" in err[0] and not r.stdout, (r.stdout, err)


# attributes of third-party objects that are private there, not ours (efficientnet_lite's classifier head)
FOREIGN_PRIVATE = {"_fc", "_exit"}  # _exit: os._exit, public in the standard library


def test_no_back_doors_into_models_or_modules():
    """Outside ``psic_cli/models/``, code uses public names only: no ``obj._attr`` on another object (a model's
    ``_hyper``, an entropy model's ``_get_medians``) and no ``from psic_... import _name``."""
    root = RUNTIME.parent
    files = [p for d in ("psic_cli", "psic_lab", "benchmarks", "scripts", "tests")
             for p in sorted((root / d).rglob("*.py")) if not p.is_relative_to(RUNTIME / "models")]
    bad = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner not in ("self", "cls") and node.attr not in FOREIGN_PRIVATE:
                    bad.append(f"{p.relative_to(root)}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("psic_cli", "psic_lab")):
                bad += [f"{p.relative_to(root)}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names used from outside:\n" + "\n".join(bad)


def test_view_names_live_in_one_place():
    """The view names are :class:`psic_cli.views.View`'s values: no other module spells one as a bare string."""
    root = RUNTIME.parent
    bad = []
    for p in sorted([*RUNTIME.rglob("*.py"), *(root / "psic_lab").rglob("*.py")]):
        if p in (RUNTIME / "views.py", RUNTIME / "keys.py"):  # keys: the shield levels' pinned derivation
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Constant) and node.value in ("shielded", "strong"):
                bad.append(f"{p.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not bad, "use psic_cli.views.View:\n" + "\n".join(bad)
