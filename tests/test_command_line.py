"""`ssl-kd COMMAND ...`: the installed command, its subcommands, and the scripts that run the same functions."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ssl_kd.__main__ import main, program_name
from ssl_kd.commands import COMMANDS
from ssl_kd.config import Config, PretrainConfig, load_config
from ssl_kd.errors import UserError, cli_main

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth"
SCRIPTS = {"distill": "pipelines/distill_ssl.py", "compare": "pipelines/compare.py", "pretrain": "pipelines/pretrain_ssl.py",
           "knn": "eval/knn.py", "retrieval": "eval/retrieval.py", "probe": "eval/linear_probe.py", "report": "eval/report.py"}


def test_the_console_script_is_installed_from_pyproject() -> None:
    scripts = {point.name: point.value for point in entry_points(group="console_scripts")}
    assert scripts.get("ssl-kd") == "ssl_kd.__main__:run"


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    main(["--help"], prog="ssl-kd")
    text = capsys.readouterr().out
    assert text.startswith("usage: ssl-kd COMMAND")
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) == ["distill", "compare", "pretrain", "knn", "retrieval", "probe", "report", "inspect", "export"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_parses_its_own_arguments_under_its_name(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"], prog="ssl-kd")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ssl-kd {name} ")


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no command given; choose one of: distill, compare,"),
    (["distil"], "unknown command 'distil'; choose one of: distill,"),
])
def test_no_or_unknown_command_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        main(argv, prog="ssl-kd")


@pytest.mark.parametrize(("name", "script"), list(SCRIPTS.items()))
def test_the_scripts_run_the_same_function(name: str, script: str) -> None:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is importlib.import_module(f"ssl_kd.commands.{name}").main


def test_program_name_follows_how_it_was_called() -> None:
    assert program_name("/usr/bin/ssl-kd") == "ssl-kd"
    assert program_name(str(REPO / "ssl_kd" / "__main__.py")) == "python -m ssl_kd"


def test_inspect_through_python_dash_m_and_a_bad_file(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "ssl_kd", "inspect", str(TEACHER)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "format:" in ok.stdout and "resnet14t" in ok.stdout
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    bad = subprocess.run([sys.executable, "-m", "ssl_kd", "inspect", str(tmp_path / "broken.pth")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_value_and_type_errors_are_one_line_unless_a_traceback_is_asked_for(monkeypatch, capsys) -> None:
    def bad_argument():
        raise ValueError("k and chunk_size must be >= 1,\n got k=0")

    with pytest.raises(SystemExit) as exit_info:
        cli_main(bad_argument)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: k and chunk_size must be >= 1, got k=0 (ValueError; SSL_KD_TRACEBACK=1 shows where)\n"
    monkeypatch.setenv("SSL_KD_TRACEBACK", "1")
    with pytest.raises(ValueError, match="chunk_size"):
        cli_main(bad_argument)
    assert issubclass(UserError, ValueError)  # library callers catch every bad input as a ValueError


@pytest.mark.parametrize("name", ["distill", "compare", "pretrain"])
def test_print_config_gives_every_key_as_a_config_file_and_runs_nothing(name: str, tmp_path: Path, capsys) -> None:
    """`--print-config` prints the merged config, flags and overrides included, as a file `--config` takes back."""
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--print-config", "--out", str(tmp_path / "run"), "train.epochs=3"], prog="ssl-kd")
    assert exit_info.value.code == 0 and not (tmp_path / "run").exists()
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    schema = PretrainConfig if name == "pretrain" else Config
    again = load_config(str(printed), schema=schema)
    assert again == load_config(None, [f"out={tmp_path / 'run'}", "train.epochs=3"], schema=schema)
    assert again.train.epochs == 3 and again.data.image_size == 32  # every key, the data defaults resolved
