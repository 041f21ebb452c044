"""The vlm4rec command: stage registration and the foundation's inspection commands."""

from __future__ import annotations

import pytest

from recbole_vlm4rec import cli


def test_help_lists_every_stage_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "datasets", "features"):
        assert command in out


def test_models_and_datasets_listings(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "VLM4Rec" in out and "LightGCN" in out
    assert cli.main(["datasets"]) == 0
    assert "ml-100k" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
