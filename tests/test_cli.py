"""The ``tvq`` command: its exit status (`tvq backfill`'s progress is in test_backfill.py)."""

import subprocess
import sys


def _tvq(*arguments: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "tvq_assets.cli"]
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, check=False, timeout=300
    )


def test_the_command_ends_with_its_status_after_the_exit_handlers_ran():
    # finish() skips native teardown, not Python's: handlers run, buffered output is flushed.
    code = (
        "import atexit, sys; from tvq_assets.cli import finish; "
        "atexit.register(lambda: print('handler ran')); sys.stdout.write('buffered'); finish(3)"
    )
    done = _tvq(code=code)
    assert done.returncode == 3
    assert done.stdout == "bufferedhandler ran\n"


def test_usage_errors_and_help_keep_their_exit_status():
    assert _tvq("no-such-command").returncode == 2
    assert "usage: tvq" in _tvq("no-such-command").stderr
    helped = _tvq("--help")
    assert helped.returncode == 0 and "demo" in helped.stdout
