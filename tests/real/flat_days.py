"""Out-of-sample days the walk-forward holds cash, and windows that drop a symbol as
``no_bar_on_last_day``, on the US + London fixture sleeve (``us_london.yaml``): without venues,
with venues inferred from the data, and with the declared venues.

    .venv/bin/python -m tests.real.flat_days 2024-08-21 [min_universe=12] [step=1 test=1]

Policy overrides (whole numbers) follow the as-of date. Not a test: a measurement to read.
"""

import dataclasses
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tests.real.folders import sleeve_source, us_london_folder, us_london_sleeve
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_resources.market_data import MarketData


def measure(as_of: pd.Timestamp, **overrides: int) -> list[str]:
    folder = us_london_folder(Path(tempfile.mkdtemp()) / "us_london", until=f"{as_of:%Y-%m-%d}")
    sleeve = us_london_sleeve(folder)
    sleeve = dataclasses.replace(sleeve, policy=dataclasses.replace(sleeve.policy, **overrides))
    settings = policy_settings(sleeve)
    batch = MarketData(sources={"s": sleeve_source(sleeve)}).fetch("s")
    cleaned = bar_lake.clean(
        batch.bars,
        calendar="weekday",
        policy=sleeve.policy.bar_policy,
        now=(as_of + pd.Timedelta(days=1)).tz_localize("UTC"),
        superseded=batch.superseded,
    )
    exclusions = bar_lake.bar_exclusions(cleaned.defects, start=pd.Timestamp.min, end=as_of)
    lines = []
    for name, venues in (
        ("no venues", None),
        ("inferred venues", policy.Venues()),
        ("declared venues", settings.venues),
    ):
        chosen = dataclasses.replace(settings, venues=venues)
        run = policy.point_in_time(
            cleaned.bars, as_of=as_of, settings=chosen, quarantine=True, bar_exclusions=exclusions
        )
        walked = policy.walk_forward(run, chosen)
        rows = len(run.history)
        held = {k: len(range(*w.test.indices(rows))) for k, w in enumerate(walked.windows)}
        cash = {
            name: sum(held[k] for k, target in walked.targets[name].items() if target.empty)
            for name in ("baseline_universe", "log_mps/risk_parity")
        }
        volume = run.history_dollar_volume.reindex_like(run.history)
        dropped = []
        for window in walked.windows:
            train = run.history.iloc[window.train]
            universe = policy.universe(
                train,
                volume.iloc[window.train],
                as_of=train.index[-1],
                settings=chosen,
                defects=run.defects,
            )
            rule = universe.excluded["rule"] == "no_bar_on_last_day"
            dropped += [(train.index[-1], s) for s in universe.excluded.loc[rule, "symbol"]]
        days = sorted({f"{d:%Y-%m-%d}" for d, _ in dropped})
        lines.append(
            f"{name}: {len(walked.windows)} windows, {sum(held.values())} out-of-sample days, "
            f"days in cash {cash}; no_bar_on_last_day: {len(dropped)} symbols in {len(days)} "
            f"windows ({', '.join(days)})"
        )
    return lines


if __name__ == "__main__":
    options = dict(argument.split("=") for argument in sys.argv[2:])
    for line in measure(pd.Timestamp(sys.argv[1]), **{k: int(v) for k, v in options.items()}):
        print(line, flush=True)
