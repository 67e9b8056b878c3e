"""Numbers outside what an option can mean are refused as usage errors (exit 2, naming the option) before
any work starts: a negative --parity-images once sliced images off the end of the manifest and checked those."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from labelaudit.cli import app


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--port", "0"], "--port"),
        (["consume", "--max-messages", "0"], "--max-messages"),
        (["consume", "--metrics-port", "-1"], "--metrics-port"),
        (["consume", "--stop-when-idle", "-5"], "--stop-when-idle"),
        (["produce", "--manifest", "m.jsonl", "--limit", "-1"], "--limit"),
        (["export", "--checkpoint", "c.pt", "--repo", "r", "--parity-images", "-3"], "--parity-images"),
        (["export", "--checkpoint", "c.pt", "--repo", "r", "--min-parity-images", "-1"], "--min-parity-images"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error_naming_it(args, option):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # one line per message
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (
            "LABELAUDIT_AUDIT_SAMPLE_RATE",
            "2",
            "LABELAUDIT_AUDIT_SAMPLE_RATE='2': Input should be less than or equal to 1",
        ),
        ("LABELAUDIT_STORE_TIMEOUT_S", "soon", "LABELAUDIT_STORE_TIMEOUT_S='soon': Input should be a valid number"),
    ],
)
def test_a_bad_setting_in_the_environment_is_an_error_naming_it(variable, value, reason):
    """Before, a traceback from pydantic; now one line with the variable, its value and why."""
    result = CliRunner().invoke(app, ["consume", "--max-messages", "1"], env={"COLUMNS": "200", variable: value})
    assert result.exit_code == 2, result.output
    assert f"bad setting: {reason}" in " ".join(result.output.split()), result.output
