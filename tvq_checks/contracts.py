"""Data contracts (DOMAIN §2) as Pandera schemas, and the violations they find.

Every rule is one named Pandera column check, so each failure comes back from Pandera with the row
it happened on; ``violations`` turns Pandera's ``SchemaErrors`` into a table of symbol, date, value
and rule. Rules that concern a whole row or a symbol's history (OHLC consistency, duplicates,
stalls, volume spikes, padding) are first written as derived columns by ``prepare_bars`` /
``tidy_returns``, then checked like any other column. Nothing here knows about Dagster.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tvq_assets.quant import quality
from tvq_assets.quant.bars import RECORDED as RECORDED_ACTIONS
from tvq_assets.quant.returns import tidy_returns

ERROR = "ERROR"
WARN = "WARN"
VIOLATION_COLUMNS = ("symbol", "date", "value", "rule", "message")


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    template: str  # what is wrong, with the offending {value}; prefixed by "SYMBOL on DATE: "
    value_column: str | None = None  # where the reported value comes from (None: the checked cell)


RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("prices_positive_finite", ERROR, "price {value:g} is not finite and positive"),
        Rule("volume_non_negative", ERROR, "volume {value:g} is not finite and non-negative"),
        Rule("high_covers_open_close", ERROR, "high {value:g} is below max(open, close)", "high"),
        Rule("low_covers_open_close", ERROR, "low {value:g} is above min(open, close)", "low"),
        Rule("one_row_per_symbol_date", ERROR, "has more than one bar (close {value:g})", "close"),
        Rule("sorted_by_symbol_date", ERROR, "bar is out of (symbol, date) order", "close"),
        Rule(
            "no_weekend_rows", ERROR, "weekend bar in a weekday sleeve (close {value:g})", "close"
        ),
        Rule(
            "no_filler_bars",
            ERROR,
            "zero-volume copy of the previous bar (close {value:g})",
            "close",
        ),
        Rule("volume_spike", WARN, "last volume is {value:.1f} standard deviations above normal"),
        Rule("price_stall", WARN, "close {value:g} repeated on the last bars (stalled)", "close"),
        # The return defects are declared with the engine's masks (quality.RETURN_DEFECT_RULES).
        *(Rule(r.name, ERROR, r.message) for r in quality.RETURN_DEFECT_RULES),
        Rule("no_padding", ERROR, "every listed symbol returned exactly 0 (a padded day)", "value"),
        Rule(
            "universe_too_small",
            ERROR,
            "{value:.0f} eligible symbol(s), fewer than the policy's min_universe",
        ),
    )
}

# Symbol-level data faults a `quarantine` policy may exclude instead of failing the run.
QUARANTINABLE = tuple(rule.name for rule in quality.RETURN_DEFECT_RULES)

PRICES = ("open", "high", "low", "close")

BARS_STRUCTURE = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, description="ticker, from the source (validated, no paths)"),
        "date": pa.Column("datetime64[ns]", description="session date of the bar (venue-local)"),
        **{p: pa.Column(float, description=f"{p} price") for p in PRICES},
        "volume": pa.Column(float, description="traded quantity (base units)"),
    },
    name="bars",
    description="Long daily bars: one row per symbol and session date.",
)


def rule_check(rule: str, fn, **options) -> pa.Check:
    """A Pandera check named after its rule (the rule's name is how violations find it)."""
    return pa.Check(fn, name=rule, error=rule, **options)


def never(rule: str) -> pa.Check:
    """A boolean flag column must be False everywhere."""
    return rule_check(rule, lambda flag: ~flag.astype(bool))


def prepare_bars(
    bars: pd.DataFrame, *, stall_bars: int = 3, volume_spike_window: int = 21
) -> pd.DataFrame:
    """Bars plus the derived columns the bar rules check (row order and index preserved).

    Expects the lake's order (symbol, then date); rows out of that order are themselves flagged.
    ``volume_z`` and ``stalled`` are set on each symbol's last bar only.
    """
    frame = bars.copy()
    symbols = frame["symbol"].to_numpy()
    dates = frame["date"].to_numpy()
    opens, closes = frame["open"].to_numpy(), frame["close"].to_numpy()
    frame["high_excess"] = frame["high"].to_numpy() - np.maximum(opens, closes)
    frame["low_excess"] = np.minimum(opens, closes) - frame["low"].to_numpy()
    same_symbol = np.zeros(len(frame), dtype=bool)
    same_symbol[1:] = symbols[1:] == symbols[:-1]
    earlier_symbol = np.zeros(len(frame), dtype=bool)
    earlier_date = np.zeros(len(frame), dtype=bool)
    if len(frame) > 1:
        earlier_symbol[1:] = symbols[1:] < symbols[:-1]
        earlier_date[1:] = dates[1:] < dates[:-1]
    frame["out_of_order"] = earlier_symbol | (same_symbol & earlier_date)
    if frame["out_of_order"].any():
        frame["duplicate"] = frame.duplicated(["symbol", "date"], keep=False)
    else:
        repeated = np.zeros(len(frame), dtype=bool)
        repeated[1:] = same_symbol[1:] & (dates[1:] == dates[:-1])
        frame["duplicate"] = repeated | np.append(repeated[1:], False)
    frame["weekend"] = frame["date"].dt.dayofweek.to_numpy() >= 5
    frame["filler"] = quality.filler_bars(frame)
    ends = quality.last_rows(symbols)
    volumes = quality.trailing(frame["volume"].to_numpy(), symbols, ends, volume_spike_window + 1)
    volume_z = np.full(len(frame), np.nan)
    volume_z[ends] = quality.volume_zscores(volumes)
    frame["volume_z"] = volume_z
    stalled = np.zeros(len(frame), dtype=bool)
    stalled[ends] = quality.stalled_closes(frame, stall_bars=stall_bars)
    frame["stalled"] = stalled
    return frame


def bar_violations(
    bars: pd.DataFrame,
    *,
    calendar: str,
    stall_bars: int = 3,
    volume_spike_window: int = 21,
    volume_spike_sigma: float = 10.0,
    rows: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ERROR violations, WARN violations) of long bars.

    ``rows`` (a boolean mask) limits the ERROR rules to those rows, e.g. the rows a refresh adds
    to a lake whose stored rows passed before; derived columns still see the whole history.
    The WARN rules look at each symbol's last bar.
    """
    prepared = prepare_bars(bars, stall_bars=stall_bars, volume_spike_window=volume_spike_window)
    selected = None if rows is None else _with_duplicate_partners(prepared, rows)
    # Every row (a first load): the prepared frame itself, not a copy of it.
    checked = prepared if selected is None or selected.all() else prepared[selected]
    errors = violations(bars_schema(calendar=calendar), checked)
    last = prepared.iloc[quality.last_rows(prepared["symbol"].to_numpy())]
    warnings = violations(bars_warning_schema(volume_spike_sigma=volume_spike_sigma), last)
    return errors, warnings


def _with_duplicate_partners(prepared: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """``rows`` plus every other row sharing (symbol, date) with a selected duplicate."""
    selected = np.asarray(rows, dtype=bool)
    duplicate = prepared["duplicate"].to_numpy()
    if not (selected & duplicate).any():
        return selected
    keys = pd.MultiIndex.from_frame(prepared[["symbol", "date"]])
    return selected | (duplicate & keys.isin(keys[selected & duplicate]))


def bars_schema(*, calendar: str) -> pa.DataFrameSchema:
    """ERROR rules on daily bars; ``calendar='weekday'`` also forbids weekend rows."""
    price = rule_check(
        "prices_positive_finite", lambda s: np.isfinite(s) & (s > 0), ignore_na=False
    )
    flags = {
        "duplicate": "one_row_per_symbol_date",
        "out_of_order": "sorted_by_symbol_date",
        "filler": "no_filler_bars",
    }
    if calendar == "weekday":
        flags["weekend"] = "no_weekend_rows"
    return pa.DataFrameSchema(
        {
            "symbol": pa.Column(str),
            "date": pa.Column("datetime64[ns]"),
            **{column: pa.Column(float, checks=[price], nullable=True) for column in PRICES},
            "volume": pa.Column(
                float,
                checks=[
                    rule_check(
                        "volume_non_negative", lambda s: np.isfinite(s) & (s >= 0), ignore_na=False
                    )
                ],
                nullable=True,
            ),
            "high_excess": pa.Column(
                float,
                checks=[rule_check("high_covers_open_close", lambda s: s >= 0)],
                nullable=True,
            ),
            "low_excess": pa.Column(
                float, checks=[rule_check("low_covers_open_close", lambda s: s >= 0)], nullable=True
            ),
            **{column: pa.Column(bool, checks=[never(rule)]) for column, rule in flags.items()},
        },
        name="bars_contract",
        description="Daily bars: positive finite prices, consistent OHLC, one sorted row per "
        "symbol and date, no padding.",
    )


def bars_warning_schema(*, volume_spike_sigma: float = 10.0) -> pa.DataFrameSchema:
    """WARN rules on each symbol's last bar: volume spikes and stalled prices."""
    return pa.DataFrameSchema(
        {
            "volume_z": pa.Column(
                float,
                checks=[
                    rule_check(
                        "volume_spike",
                        lambda s: pd.Series(
                            ~quality.is_volume_spike(s.to_numpy(), volume_spike_sigma), s.index
                        ),
                    )
                ],
                nullable=True,
            ),
            "stalled": pa.Column(bool, checks=[never("price_stall")]),
        },
        name="bars_quality",
        description="Last-bar quality: volume spikes and stalled prices (recorded, not blocking).",
    )


def returns_schema(*, toxic_threshold: float = 5.0) -> pa.DataFrameSchema:
    """ERROR rules on the tidy returns window (``tidy_returns``): one row per listed symbol-day;
    the return defects are ``quality.RETURN_DEFECT_RULES``, the engine's own declaration."""
    thresholds = {"toxic_threshold": toxic_threshold}
    return pa.DataFrameSchema(
        {
            "symbol": pa.Column(str),
            "date": pa.Column("datetime64[ns]"),
            "value": pa.Column(
                float,
                nullable=True,
                checks=[
                    rule_check(
                        rule.name,
                        functools.partial(_holds, rule, thresholds.get(rule.threshold)),
                        ignore_na=False,
                    )
                    for rule in quality.RETURN_DEFECT_RULES
                ],
            ),
            "filler_day": pa.Column(bool, checks=[never("no_padding")]),
        },
        name="returns_contract",
        description=f"Simple daily returns: finite, >= -100%, <= +{toxic_threshold:.0%} (toxic), "
        "NaN only before genesis, no padded days.",
    )


def _holds(rule: quality.ReturnDefectRule, threshold: float | None, values: pd.Series):
    return pd.Series(~rule.breaks(values.to_numpy(dtype=float), threshold), values.index)


def returns_violations(returns: pd.DataFrame, *, toxic_threshold: float = 5.0) -> pd.DataFrame:
    """Violations of the returns contract by a wide returns window (dates × symbols)."""
    return violations(returns_schema(toxic_threshold=toxic_threshold), tidy_returns(returns))


def name_dropped_bars(
    failures: pd.DataFrame, defects: pd.DataFrame, returns: pd.DataFrame
) -> pd.DataFrame:
    """``failures`` with each missing return (``non_null_after_genesis``) that a dropped bar
    explains naming that bar: its date, the bar rule that dropped it, the offending value and what
    to do. ``defects``: the bar defects of the sleeve (``bars.DEFECT_COLUMNS``); ``returns``: the
    wide window the failures were found in. A bar dropped on day D leaves its return, and those
    up to the symbol's next bar, missing: a gap is explained by the symbol's dropped bars dated
    after its previous present return and on or before the missing one."""
    dropped = defects[defects["action"] == RECORDED_ACTIONS["drop"]]
    gaps = failures["rule"] == "non_null_after_genesis"
    if dropped.empty or not gaps.any():
        return failures
    by_symbol = {symbol: rows.sort_values("date") for symbol, rows in dropped.groupby("symbol")}
    messages = failures["message"].copy()
    for index, failure in failures[gaps].iterrows():
        rows = by_symbol.get(failure["symbol"])
        if rows is None or failure["symbol"] not in returns.columns:
            continue
        day = pd.Timestamp(failure["date"])
        present = returns[failure["symbol"]].loc[: day - pd.Timedelta(days=1)].dropna()
        after = present.index[-1] if len(present) else pd.Timestamp.min
        causes = rows[(rows["date"] > after) & (rows["date"] <= day)]
        if causes.empty:
            continue
        told = "; ".join(
            f"its bar of {cause.date:%Y-%m-%d} was dropped as {cause.rule} ({cause.detail}, "
            f"value {cause.value:g})"
            for cause in causes.itertuples(index=False)
        )
        rule = causes["rule"].iloc[-1]
        messages[index] = (
            f"{failure['symbol']} on {day:%Y-%m-%d}: return is missing after the symbol's first "
            f"bar because {told} [non_null_after_genesis]: correct the source's bar, or set "
            f"policy.bar_actions {{{rule}: quarantine}} to exclude the symbol instead"
        )
    return failures.assign(message=messages)


def universe_violations(
    returns: pd.DataFrame, excluded: pd.DataFrame, *, minimum: int, as_of: pd.Timestamp
) -> pd.DataFrame:
    """ERROR when fewer than ``minimum`` symbols are left after exclusions; the message lists
    every exclusion (symbol, rule, reason, detail) so the operator sees why the universe shrank."""
    count = returns.shape[1]
    if count >= minimum:
        return _violation_table([])
    listed = "; ".join(
        f"{row.symbol} ({row.rule}, {row.reason}: {row.detail})"
        for row in excluded.itertuples(index=False)
    )
    message = (
        f"{_message(RULES['universe_too_small'], '(universe)', as_of, float(count))}: "
        f"{count} < {minimum}; excluded {len(excluded)}: {listed or 'none'}. Lower "
        "policy.min_universe, widen stale_days/min_history, or fix the excluded symbols' data"
    )
    return _violation_table([("(universe)", as_of, float(count), "universe_too_small", message)])


def violations(
    schema: pa.DataFrameSchema, frame: pd.DataFrame, *, rules: Mapping[str, Rule] | None = None
) -> pd.DataFrame:
    """Validate ``frame`` lazily; one row per failing cell: symbol, date, value, rule, message.

    Sorted by rule, date and symbol. Empty when the frame satisfies the schema. Structural errors
    (a missing column, a wrong dtype) are reported with empty symbol and date.
    """
    if holds(schema, frame):
        return _violation_table([])
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return _violation_table([])
    cases = cases.assign(rule=cases["check"].astype(str))
    rules = RULES if rules is None else rules
    located = cases["rule"].isin(list(rules)) & cases["index"].notna()
    structural = [
        (None, pd.NaT, np.nan, case.rule, f"{case.column}: {case.failure_case}")
        for case in cases[~located].itertuples(index=False)
    ]
    tables = [_violation_table(structural)]
    for rule_name, group in cases[located].groupby("rule", sort=False):
        rule = rules[rule_name]
        rows = frame.loc[group["index"].to_numpy()]
        if rule.value_column:
            values = rows[rule.value_column].to_numpy(dtype=float)
        else:
            values = pd.to_numeric(group["failure_case"], errors="coerce").to_numpy(dtype=float)
        table = pd.DataFrame(
            {
                "symbol": rows["symbol"].to_numpy(),
                "date": pd.to_datetime(rows["date"]).to_numpy(),
                "value": values,
                "rule": rule.name,
            }
        )
        table["message"] = [
            _message(rule, *row)
            for row in table[["symbol", "date", "value"]].itertuples(index=False)
        ]
        tables.append(table)
    found = [table for table in tables if not table.empty]
    return _violation_table(pd.concat(found, ignore_index=True) if found else [])


# How a column's dtype is confirmed without Pandera, by the dtype the schema names: Pandera
# checks ``str`` element by element in Python; ``infer_dtype`` does it in C.
_DTYPE_HOLDS = {
    "str": lambda column: pd.api.types.infer_dtype(column, skipna=False) == "string",
    "float64": lambda column: column.dtype == np.float64,
    "int64": lambda column: column.dtype == np.int64,
    "bool": lambda column: column.dtype == np.bool_,
    "datetime64[ns]": lambda column: column.dtype == np.dtype("datetime64[ns]"),
}


def holds(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> bool:
    """Whether ``frame`` satisfies ``schema``, decided vectorised: every column present with its
    dtype, no missing value where none is allowed, every check passing on the values Pandera
    hands it (the column without its missing values when the check ignores them).

    True only when all of that holds; False when anything fails or the schema uses a feature not
    evaluated here (schema-wide checks, an index, uniqueness, coercion, element-wise or grouped
    checks): then Pandera validates and names every failing cell. A frame that passes, the
    common case, costs a fraction of Pandera's validation (which copies the frame and checks
    text cell by cell): the contracts run on every stage of every run.
    """
    if (
        schema.checks
        or schema.index is not None
        or schema.unique
        or schema.coerce
        or schema.strict
        or schema.ordered
    ):
        return False
    for name, spec in schema.columns.items():
        if name not in frame.columns or spec.regex or spec.unique or spec.coerce:
            return False
        column = frame[name]
        confirm = _DTYPE_HOLDS.get(str(spec.dtype))
        if confirm is None or (len(column) == 0 and str(spec.dtype) == "str"):
            return False
        if not confirm(column) or (not spec.nullable and column.isna().any()):
            return False
        for check in spec.checks:
            if check.element_wise or check.groupby is not None:
                return False
            values = column.dropna() if check.ignore_na and column.hasnans else column
            passed = check._check_fn(values)
            if isinstance(passed, pd.Series):
                if passed.dtype != np.bool_ or not passed.all():
                    return False
            elif not (isinstance(passed, bool | np.bool_) and passed):
                return False
    return True


def _message(rule: Rule, symbol: str, date: pd.Timestamp, value: float) -> str:
    day = pd.Timestamp(date).strftime("%Y-%m-%d") if pd.notna(date) else "?"
    return f"{symbol} on {day}: {rule.template.format(value=value)} [{rule.name}]"


def _violation_table(rows: "list[tuple] | pd.DataFrame") -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(VIOLATION_COLUMNS))
    table["date"] = pd.to_datetime(table["date"])
    table["value"] = table["value"].astype(float)
    return table.sort_values(["rule", "date", "symbol"], ignore_index=True)
