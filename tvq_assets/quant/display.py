"""Numbers as people read them in text metadata (markdown tables, descriptions, MLflow text):
four significant digits. Numeric metadata (``dg.MetadataValue.float``, MLflow metrics) keeps the
raw value, which the UIs chart across partitions. A leaf here because the check glue and the
describers may both import the engine, and a rule has one home."""

import math

DIGITS = 4


def significant(value: float, digits: int = DIGITS) -> str:
    """``1.496127729870878`` -> ``1.496``; ``-0.2348681`` -> ``-0.2349``; ``0.000123456`` ->
    ``0.0001235``; ``123456.7`` -> ``1.235e+05``; NaN and infinities as Python writes them."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"
