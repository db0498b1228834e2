"""Datasets tvq logs as run inputs, in a real MLflow store (SQLite in a temporary folder)."""

import json

import numpy as np
import pandas as pd

from tvq_resources.tracking import MlflowTracker, colspec, frame_digest


def _window(seed: int = 0, columns: int = 40) -> pd.DataFrame:
    dates = pd.date_range("2026-01-01", periods=60, name="date")
    values = np.random.default_rng(seed).normal(0, 0.02, (len(dates), columns))
    return pd.DataFrame(values, index=dates, columns=[f"S{i}USDT" for i in range(columns)])


def test_a_frames_digest_follows_its_values_dates_and_names_and_nothing_else():
    frame = _window()
    assert frame_digest(frame) == frame_digest(frame.copy()) == frame_digest(_window())
    changed = frame.copy()
    changed.iloc[17, 3] += 1e-12
    renamed = frame.rename(columns={"S3USDT": "S3USDC"})
    shifted = frame.set_axis(frame.index + pd.Timedelta(days=1))
    with_nan = frame.copy()
    with_nan.iloc[0, 0] = np.nan
    digests = {frame_digest(f) for f in (frame, changed, renamed, shifted, with_nan)}
    assert len(digests) == 5


def test_the_schema_names_the_index_and_every_column_with_its_type():
    frame = _window(columns=3).assign(listed=True, bars=np.int64(5), venue="XNYS")
    assert colspec(frame) == [
        {"type": "datetime", "name": "date"},
        *({"type": "double", "name": f"S{i}USDT"} for i in range(3)),
        {"type": "boolean", "name": "listed"},
        {"type": "long", "name": "bars"},
        {"type": "string", "name": "venue"},
    ]


def test_a_logged_window_is_the_runs_dataset_input_with_its_digest_schema_and_size(tmp_path):
    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.client.create_run(tracker.experiment_id("tvq-crypto"))
    frame = _window(columns=1000)
    source = str(tmp_path / "lake" / "returns" / "2026-03-01|crypto.parquet")
    digest = tracker.log_dataset(
        run.info.run_id, frame, name="crypto returns", source=source, context="training"
    )
    [logged] = tracker.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == digest == frame_digest(frame)
    assert logged.dataset.name == "crypto returns"
    assert json.loads(logged.dataset.source) == {"uri": source}
    assert json.loads(logged.dataset.profile) == {"num_rows": 60, "num_elements": 60_000}
    assert len(json.loads(logged.dataset.schema)["mlflow_colspec"]) == 1001
    assert {(t.key, t.value) for t in logged.tags} == {("mlflow.data.context", "training")}
