"""The command line's subcommands come from one table (spikeclip.cli.COMMANDS): each is
registered from it, each runs what the table names, and building the parser imports no torch
(environment switches such as THP_MEM_ALLOC_ENABLE must be set before torch loads)."""

import subprocess
import sys

import pytest

from spikeclip.cli import COMMANDS, _parser, _resolve


def test_every_command_is_registered_from_the_table():
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert callable(_resolve(command.run)), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    from spikeclip.cli import main

    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: spikeclip {name}" in capsys.readouterr().out


def test_building_the_parser_imports_no_torch():
    code = (
        "import sys; from spikeclip.cli import _parser; _parser(); "
        "from spikeclip.bench.command import set_environment; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
