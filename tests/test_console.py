"""console.py: one-line messages, exit codes for errors, Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import signal

import pytest
from typer.testing import CliRunner

from psic_cli.cli import app
from psic_cli.console import Messages, exit_on_error, one_line
from psic_cli.errors import InputError


def test_one_line_escapes_control_characters():
    assert one_line("plain name.jpg: ok") == "plain name.jpg: ok"
    assert one_line("a\nb\rc\td\x1b[31m\x7f\u2028\u202e.jpg") == "a\\nb\\rc\\td\\x1b[31m\\x7f\\u2028\\u202e.jpg"
    assert one_line("été.jpg") == "été.jpg"


def test_a_newline_in_a_file_name_does_not_split_the_error(tmp_path):
    bad = tmp_path / "evil\npsic: error: forged.psic"
    bad.write_bytes(b"not a psic file")
    r = CliRunner().invoke(app, ["info", str(bad)])
    assert r.exit_code == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psic: error: ") and "evil\\npsic" in lines[0], lines


def test_sigterm_exits_143_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        with exit_on_error(Messages()):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert e.value.code == 143
    assert capsys.readouterr().err == "psic: error: terminated; partial outputs removed\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored afterwards


def test_errors_and_ctrl_c_codes(capsys):
    with pytest.raises(SystemExit) as e, exit_on_error(Messages()):
        raise InputError("x.psic: bad\nthing")
    assert e.value.code == 3 and capsys.readouterr().err == "psic: error: x.psic: bad\\nthing\n"
    with pytest.raises(SystemExit) as e, exit_on_error(Messages()):
        raise KeyboardInterrupt
    assert e.value.code == 130 and "interrupted" in capsys.readouterr().err
