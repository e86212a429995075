"""The command line's shared conventions (cli/options.py, cli/main.py): list options in every form, bundled configs
by name, `--version`, a did-you-mean for a misspelt command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as bwarea
from cli.help_cache import help_key
from cli.evaluate import parse_config
from cli.options import with_bundled_configs

ROOT = Path(__file__).resolve().parents[1]


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


LIGHTNING_HELP = ("import sys; from cli.main import main; code = main(['pretrain', '--help']); "
                  "print('lightning imported' if 'lightning' in sys.modules else 'lightning not imported', file=sys.stderr); "
                  "sys.exit(code)")


def test_the_lightning_commands_help_comes_from_the_cache_the_second_time(tmp_path):
    environment = {**os.environ, "BWAREA_CACHE_DIR": str(tmp_path), "COLUMNS": "100"}
    first, second = (subprocess.run([sys.executable, "-c", LIGHTNING_HELP], capture_output=True, text=True,
                                    env=environment, cwd=ROOT) for _ in range(2))
    assert first.returncode == second.returncode == 0
    assert first.stdout.startswith("usage: bwarea pretrain") and "--trainer.max_steps" in first.stdout
    assert second.stdout == first.stdout
    assert "lightning imported" in first.stderr and "lightning not imported" in second.stderr
    assert len(list((tmp_path / "help").iterdir())) == 1


def test_the_help_key_follows_the_source_and_the_terminal_width(tmp_path, monkeypatch):
    source = tmp_path / "training" / "pretrain.py"
    source.parent.mkdir()
    source.write_text("x = 1\n")
    monkeypatch.setenv("COLUMNS", "100")
    key = help_key(tmp_path)
    assert help_key(tmp_path) == key
    source.write_text("x = 22\n")                        # another size
    assert help_key(tmp_path) != key
    key = help_key(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    assert help_key(tmp_path) != key
