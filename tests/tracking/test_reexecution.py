"""Re-execution from failure continues the same MLflow run: one run, FAILED then FINISHED."""

import shutil

import dagster as dg

from tests.conftest import AS_OF, resources_for, synthetic_source
from tests.tracking.test_tracking import BY_NAME, parent_runs
from tvq_assets.definitions import ASSETS
from tvq_resources.tracking import MlflowTracker

KEY = f"{AS_OF}|crypto"


def returns_and_features() -> dg.JobDefinition:
    """The slice returns -> features, resources from the environment (lake, tracking URI)."""
    definitions = dg.Definitions(
        assets=ASSETS,
        jobs=[dg.define_asset_job("slice", selection=["returns", "features"])],
        resources=resources_for(None),
        executor=dg.in_process_executor,
    )
    return definitions.resolve_job_def("slice")


def test_re_execution_from_failure_finishes_the_same_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TVQ_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    job = dg.reconstructable(returns_and_features)
    tracker = MlflowTracker()

    def refresh_bars(instance, faults):
        shutil.rmtree(tmp_path / "lake" / "bars", ignore_errors=True)
        resources = resources_for(str(tmp_path / "lake"), crypto=synthetic_source(faults=faults))
        bars = dg.materialize(
            [BY_NAME["bars"]], partition_key="crypto", resources=resources, instance=instance
        )
        assert bars.success

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        refresh_bars(instance, [{"kind": "toxic_spike"}])
        with dg.execute_job(job, instance=instance, tags={"dagster/partition": KEY}) as first:
            assert not first.success
        [run] = parent_runs(tracker)
        assert run.info.status == "FAILED"
        refresh_bars(instance, [])  # the source corrected the print
        options = dg.ReexecutionOptions.from_failure(first.run_id, instance)
        with dg.execute_job(
            job, instance=instance, reexecution_options=options, tags={"dagster/partition": KEY}
        ) as second:
            assert second.success
    [run] = parent_runs(tracker)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster.run_id"] == second.run_id
    assert run.data.tags["tvq.dagster_root_run_id"] == first.run_id
    assert {"tvq.stage.returns", "tvq.stage.features"} <= set(run.data.tags)
    assert "tvq.failed_checks" in run.data.tags  # the first attempt's failure stays on record
