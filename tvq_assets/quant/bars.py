"""The bar lake's refresh rule: stored history is kept, only new (symbol, date) rows are added."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

BAR_COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Refresh:
    bars: pd.DataFrame  # stored rows plus the new ones, sorted by (symbol, date)
    added: int  # rows that were not stored before
    revised: int  # incoming rows that differ from the stored (symbol, date) row: stored kept
    new_symbols: tuple[str, ...]
    added_rows: np.ndarray  # boolean mask over ``bars``: the rows this refresh added


def refresh(stored: pd.DataFrame | None, incoming: pd.DataFrame) -> Refresh:
    """Append the incoming rows whose (symbol, date) is not stored yet.

    Stored rows are never rewritten (what a past run saw stays reproducible); a source that now
    reports a different value for a stored day is counted in ``revised`` so the change is visible.
    """
    incoming = incoming[list(BAR_COLUMNS)]
    if stored is None or stored.empty:
        merged = incoming.sort_values(["symbol", "date"], ignore_index=True)
        symbols = tuple(sorted(merged["symbol"].unique()))
        return Refresh(merged, len(merged), 0, symbols, np.ones(len(merged), dtype=bool))
    stored = stored[list(BAR_COLUMNS)]
    keys = ["symbol", "date"]
    joined = incoming.merge(stored, on=keys, how="left", suffixes=("", "_stored"), indicator=True)
    fresh = joined["_merge"] == "left_only"
    prices = ["open", "high", "low", "close", "volume"]
    overlap = joined.loc[~fresh]
    different = np.zeros(len(overlap), dtype=bool)
    for column in prices:
        a, b = overlap[column].to_numpy(), overlap[f"{column}_stored"].to_numpy()
        different |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    added = incoming.loc[fresh.to_numpy()]
    combined = pd.concat(
        [stored.assign(_added=False), added.assign(_added=True)], ignore_index=True
    ).sort_values(keys, ignore_index=True, kind="stable")
    new_symbols = tuple(sorted(set(added["symbol"]) - set(stored["symbol"])))
    mask = combined.pop("_added").to_numpy()
    return Refresh(combined, int(fresh.sum()), int(different.sum()), new_symbols, mask)
