"""A failed run prints its traceback once on the terminal (tvq_assets/terminal.py)."""

import dagster as dg
import pytest
from dagster._loggers import colored_console_logger

from tvq_assets import terminal

# The line of the op that raises, as every printed traceback of its failure shows it.
RAISED = 'raise ValueError("the bars of 2026-12-06 are missing")'


@dg.op
def explode():
    raise ValueError("the bars of 2026-12-06 are missing")


def _stderr_of_a_failed_run(console: dg.LoggerDefinition, capsys) -> str:
    job = dg.GraphDefinition(name="failing", node_defs=[explode]).to_job(
        logger_defs={"console": console}
    )
    result = job.execute_in_process(
        raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    )
    assert not result.success
    return capsys.readouterr().err


def test_dagsters_own_console_prints_a_step_failures_traceback_twice(capsys):
    # The behaviour tvq's console logger exists for; if Dagster stops repeating it, drop ours.
    err = _stderr_of_a_failed_run(colored_console_logger, capsys)
    assert err.count(RAISED) == 2


def test_tvqs_console_prints_the_traceback_once_and_the_run_failure_points_at_it(capsys):
    err = _stderr_of_a_failed_run(terminal.console, capsys)
    assert err.count(RAISED) == 1
    [run_failure] = [line for line in err.splitlines() if "RUN_FAILURE" in line]
    assert run_failure.endswith("Steps failed: ['explode']." + terminal.SEE_ABOVE)


def test_the_event_log_keeps_the_run_failures_error(capsys):
    job = dg.GraphDefinition(name="failing", node_defs=[explode]).to_job(
        logger_defs={"console": terminal.console}
    )
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(raise_on_error=False, instance=instance)
        [failure] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert RAISED in failure.dagster_event.event_specific_data.error.to_string()


@pytest.mark.parametrize("job", ["daily", "refresh_bars", "meta_portfolio_job"])
def test_every_job_of_the_code_location_uses_tvqs_console(job):
    from tvq_assets.definitions import defs

    assert defs.resolve_job_def(job).loggers["console"] is terminal.console
