"""The runs' console logger: Dagster's own, printing each failure's traceback once.

When a step fails, Dagster logs the step's failure with its traceback, then the run's failure with
a copy of that same traceback (``JobFailureData.first_step_failure_event``): on the terminal every
failed run showed its error twice. This logger is Dagster's colored console logger (same config:
``log_level``, ``name``) whose run-failure line names the failed steps and refers to the step's
traceback above instead of repeating it. The event log (the UI) keeps both events whole.
"""

import copy
import logging

import dagster as dg
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR
from dagster._core.utils import coerce_valid_log_level
from dagster._utils.log import create_console_logger

SEE_ABOVE = " (the step's traceback is above)"


def repeats_a_step_traceback(record: logging.LogRecord) -> bool:
    """True for a run-failure record carrying the error of a step failure logged before it."""
    meta = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
    event = meta.get("dagster_event") if isinstance(meta, dict) else None
    if event is None or event.event_type != dg.DagsterEventType.RUN_FAILURE:
        return False
    data = event.event_specific_data
    return getattr(data, "first_step_failure_event", None) is not None


class _OneTraceback(logging.Formatter):
    """Formats like ``inner``; a run failure that repeats a step's traceback loses the copy."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if repeats_a_step_traceback(record):
            record = copy.copy(record)  # the other loggers (the event log) get the whole record
            record.msg = str(record.msg).split("\n\n", 1)[0] + SEE_ABOVE
            record.args = None
        return self.inner.format(record)


@dg.logger(
    {
        "log_level": dg.Field(str, is_required=False, default_value="INFO"),
        "name": dg.Field(str, is_required=False, default_value="dagster"),
    },
    description="Dagster's colored console logger; a failed run's traceback is printed once.",
)
def console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = create_console_logger(
        name=init_context.logger_config["name"],
        level=coerce_valid_log_level(init_context.logger_config["log_level"]),
    )
    for handler in logger.handlers:
        handler.setFormatter(_OneTraceback(handler.formatter or logging.Formatter()))
    return logger
