"""The `dpolicy` command: every subcommand explains itself, bad input fails with a message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dpolicy.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "dpolicy", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: dpolicy" in capsys.readouterr().out


def test_unknown_config_is_a_clear_error(capsys):
    assert main(["train", "--config", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config 'nope'") and "pusht_lowdim" in err and "Traceback" not in err
