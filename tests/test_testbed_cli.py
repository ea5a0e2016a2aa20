"""The ``testbed`` and ``serve`` click objects without namespaces: privileges, laziness, help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from keepiton_throttle.testbed.cli import serve_command
from keepiton_throttle.testbed.cli import testbed_group as tb_group

ROOT = Path(__file__).resolve().parents[1]


def test_objects_are_what_the_lead_registers() -> None:
    assert isinstance(serve_command, click.Command) and serve_command.name == "serve"
    assert isinstance(tb_group, click.Group) and tb_group.name == "testbed"
    assert set(tb_group.commands) == {"up", "down", "status", "run"}


@pytest.mark.parametrize("args", [["up", "--profile", "clean"], ["down"]])
def test_missing_root_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = CliRunner().invoke(tb_group, args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "Error: the testbed needs root (network namespaces, raw sockets): run it with sudo"
    ]
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_status_of_a_testbed_that_is_not_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPITON_TESTBED_STATE", str(tmp_path))
    res = CliRunner().invoke(tb_group, ["status", "--name", "nope"])
    assert res.exit_code == 1 and res.output.strip() == "testbed nope is not up"
    res = CliRunner().invoke(tb_group, ["status", "--name", "Bad_Name"])
    assert res.exit_code == 1 and "testbed name must match" in res.output


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from keepiton_throttle.testbed import cli; "
        "heavy = [m for m in ('aioquic', 'scapy', 'cryptography', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


def test_module_entry_point_help() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "keepiton_throttle.testbed.cli", "testbed", "up", "--help"],
                         capture_output=True, text=True, env=env, check=True)
    assert "--profile" in out.stdout and "twitter-2021" in out.stdout
