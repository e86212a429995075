"""The command line's shared conventions (cli/options.py, cli/main.py): list options in every form, bundled configs
by name, `--version`, a did-you-mean for a misspelt command."""

from __future__ import annotations

import pytest

from cli import main as bwarea
from cli.evaluate import parse_config
from cli.options import with_bundled_configs


@pytest.mark.parametrize("argv", [["--suite", "crafter", "bbh/navigate", "--seeds", "0", "1"],
                                  ["--suite", "[crafter, bbh/navigate]", "--seeds", "[0, 1]"],
                                  ["--seeds=0", "--suite=crafter", "--suite+", "bbh/navigate", "--seeds+", "1"]])
def test_list_options_take_every_form(argv):
    config = parse_config(argv)
    assert config.suite == ["crafter", "bbh/navigate"] and config.seeds == [0, 1]


def test_bundled_configs_are_found_by_name_and_files_win():
    assert with_bundled_configs(["--config", "micro", "--out", "x"], "quickstart")[1].endswith("quickstart/micro.yaml")
    assert with_bundled_configs(["--config", "no-such-config"], "quickstart") == ["--config", "no-such-config"]
    config = parse_config(["--config", "textworld-coin"])
    assert config.suite and all(name.startswith("textworld/") for name in config.suite)


def test_version_and_a_misspelt_command(capsys):
    assert bwarea.main(["--version"]) == 0 and capsys.readouterr().out.startswith("bwarea 0.")
    assert bwarea.main(["evalute"]) == 2
    assert "did you mean evaluate?" in capsys.readouterr().err
