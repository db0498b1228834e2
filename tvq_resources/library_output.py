"""Where the libraries' own messages go: a log file under DAGSTER_HOME, not the terminal.

MLflow logs a line for every model it stores ("Failed to infer model signature", "Detected uv
project", "Creating initial MLflow database tables"), prints "View run ... at: ..." for every run
it ends on a tracking server, and libraries raise Python warnings ("The specified dataset source
can be interpreted in multiple ways"). None of them is about the user's data, and between the
summaries they bury it. By default they are written to ``$DAGSTER_HOME/logs/libraries.log``:

- MLflow's loggers (``mlflow``, ``alembic``): their handlers write to that file
  (``MLFLOW_CONFIGURE_LOGGING=false`` keeps MLflow from putting its terminal handler back when it
  is imported later);
- "View run" lines: MLflow's own switch ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``; tvq stores
  every run's link in the Dagster metadata and prints it in the summary;
- warnings raised inside installed packages (a file under site-packages or the standard
  library); a warning raised by tvq's own code still reaches the terminal.

``TVQ_VERBOSE=1`` (``tvq --verbose``) leaves all of it on the terminal, as the libraries do.
"""

import logging
import os
import sysconfig
import warnings
from collections.abc import MutableMapping
from pathlib import Path

VERBOSE = "TVQ_VERBOSE"
LOG_FILE = Path("logs") / "libraries.log"
# MLflow's logger and the migrations MLflow runs when it creates a database.
LOGGERS = {"mlflow": logging.INFO, "alembic": logging.WARNING}
LINE = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Where installed code lives: a warning whose file is under one of these is a library's.
LIBRARY_ROOTS = tuple(
    str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("purelib", "platlib", "stdlib")
)

_handler: "CountingFileHandler | None" = None
_show_warning = warnings.showwarning


class CountingFileHandler(logging.FileHandler):
    """A file handler that counts what it wrote, so the terminal can say where it went."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter(LINE))
        self.written = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.written += 1
        super().emit(record)


def verbose(environ: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(VERBOSE, "").strip().lower() not in ("", "0", "false", "no")


def is_library_file(filename: str) -> bool:
    """True for a file of an installed package or of the standard library."""
    try:
        resolved = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    return resolved.startswith(LIBRARY_ROOTS)


def _show_library_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if _handler is None or file is not None or not is_library_file(filename):
        _show_warning(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning(text)


def quiet_libraries(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Send the libraries' messages to ``$DAGSTER_HOME/logs/libraries.log`` (see the module's
    docstring) and return that file; None (nothing changed) under ``TVQ_VERBOSE`` or without
    ``DAGSTER_HOME``. Safe to call again: one handler per process."""
    global _handler
    env = os.environ if environ is None else environ
    home = env.get("DAGSTER_HOME")
    if verbose(env) or not home:
        return None
    env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    env.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    path = Path(home).resolve() / LOG_FILE
    if _handler is None or Path(_handler.baseFilename) != path:
        path.parent.mkdir(parents=True, exist_ok=True)
        _handler = CountingFileHandler(path)
    for name, level in [*LOGGERS.items(), ("py.warnings", logging.WARNING)]:
        logger = logging.getLogger(name)
        logger.handlers = [_handler]
        logger.setLevel(level)
        logger.propagate = False
    warnings.showwarning = _show_library_warning
    return path


def written() -> tuple[int, Path | None]:
    """How many library messages this process wrote to the log file, and the file."""
    if _handler is None:
        return 0, None
    return _handler.written, Path(_handler.baseFilename)
