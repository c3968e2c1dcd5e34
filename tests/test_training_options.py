"""Training options: every flag explains itself, stage files load, and unknown or bad values are clear errors."""

import dataclasses
import json
from pathlib import Path

import pytest

from psic_lab.training.__main__ import build_parser, main
from psic_lab.training.options import (
    COMMANDS,
    CONFIG_DIR,
    ShieldConfig,
    TrainConfig,
    config_from_args,
    field_help,
    load_stage,
    read_stage,
)

STAGE_FILES = sorted(CONFIG_DIR.glob("*/*.json"))


@pytest.mark.parametrize("command", ["rd", "shield", "export"])
def test_every_flag_has_a_real_help_text(command):
    """A flag's (and an argument's) help says what it does, not only its default."""
    actions = build_parser()[1][command]
    assert actions
    for a in actions:
        text = (a.help or "").strip()
        assert text and not text.startswith("(default") and not text.lower().startswith("default"), a.option_strings


@pytest.mark.parametrize("cls", [TrainConfig, ShieldConfig])
def test_every_field_has_a_comment_and_a_flag(cls):
    helps = field_help(cls)
    assert set(helps) == {f.name for f in dataclasses.fields(cls)}
    assert all(helps.values()), [k for k, v in helps.items() if not v]


def test_fixed_sets_are_choices():
    choices = {a.dest: a.choices for a in build_parser()[1]["shield"] if a.choices}
    assert choices["privacy_loss"] == ("uaeo", "uaeo+margin")
    assert choices["weighting"] == ("adaptive", "fixed")
    assert choices["captions"] == ("data", "imagenet")
    with pytest.raises(SystemExit):
        build_parser()[0].parse_args(["shield", "--weighting", "magic"])
    with pytest.raises(ValueError, match="weighting"):
        ShieldConfig(weighting="magic")
    with pytest.raises(ValueError, match="views must come from"):
        ShieldConfig(views="full,shielded,blurry")


def test_shipped_stage_files_exist():
    names = {f"{p.parent.name}/{p.stem}" for p in STAGE_FILES}
    assert {"shield/psic-sh-shield", "shield/psic-sh-views10", "shield/psic-msh-shield2", "rd/psic-sh",
            "rd/psic-msh", "rd/psic-msh2"} <= names


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_committed_stage_file_loads(path):
    cfg = load_stage(COMMANDS[path.parent.name], path)
    assert cfg.run_dir == f"runs/{path.stem}"  # one run folder per stage, named after its file
    for p in [cfg.init if hasattr(cfg, "init") else "", getattr(cfg, "reference", "")]:
        assert not Path(p).is_absolute()


def test_config_then_flags(tmp_path):
    """Defaults < the stage file < flags; a bare name finds a committed stage."""
    ap = build_parser()[0]
    cfg = config_from_args(ShieldConfig, ap.parse_args(["shield", "--config", "psic-sh-views10", "--steps", "5",
                                                        "--threads", "1", "--reset-trigger"]), "shield")
    assert (cfg.steps, cfg.threads, cfg.reset_trigger, cfg.strong_nu, cfg.batch) == (5, 1, True, 22.5, 8)
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"data": "one/folder", "nu": 2, "limit_images": None}))
    cfg = config_from_args(ShieldConfig, ap.parse_args(["shield", "--config", str(f)]), "shield")
    assert cfg.data == ["one/folder"] and cfg.nu == 2.0 and isinstance(cfg.nu, float)


def test_unknown_or_mistyped_keys_are_errors(tmp_path, capsys):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"steps": 10, "nu_learning_rate": 0.1}))
    with pytest.raises(ValueError, match="unknown option.*nu_learning_rate.*valid: .*nu_lr"):
        read_stage(ShieldConfig, f)
    with pytest.raises(SystemExit) as e:
        main(["shield", "--config", str(f)])
    assert e.value.code == 2 and "nu_learning_rate" in capsys.readouterr().err
    f.write_text(json.dumps({"steps": "many"}))
    with pytest.raises(ValueError, match="steps: expected int"):
        read_stage(ShieldConfig, f)
    with pytest.raises(SystemExit):
        main(["shield", "--config", "no-such-stage"])
    assert "psic-sh-views10" in capsys.readouterr().err  # the error lists the built-in stages


def test_rd_needs_data(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rd", "--steps", "1"])
    assert e.value.code == 2 and "--data" in capsys.readouterr().err


def test_a_help_continued_on_comment_lines_is_whole():
    helps = field_help(TrainConfig)
    assert "decoder: only the synthesis" in helps["train_part"] and helps["train_part"].endswith("stay as they were")
    assert helps["quality_weights"].endswith("empty: uniform")
    assert helps["lr"] == "peak learning rate (Adam), held over the first half of the run"  # no next field's text
