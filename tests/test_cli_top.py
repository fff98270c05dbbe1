"""`diskguard top`'s arguments, refused before anything on the node is touched."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diskguard.cli import main


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-l", "tier in (db"], "-l/--selector"),
        (["0"], "INTERVAL"),
        (["1", "-3"], "COUNT"),
        (["--sort", "colour"], "--sort"),
    ],
)
def test_bad_arguments_say_which_and_exit_2(args: list[str], said: str) -> None:
    done = CliRunner().invoke(main, ["top", *args], env={"NODE_NAME": "node-1"})
    assert done.exit_code == 2, done.output
    assert said in done.output
