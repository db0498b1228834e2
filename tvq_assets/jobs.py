"""Production jobs: refresh each sleeve's bars every day, then compute the newest run partition."""

import dagster as dg

from tvq_assets.partitions import newest_run_date, run_key, sleeve_run

# A bars run with this tag was started by a command (``tvq demo``/``tvq production``) that starts
# the sleeve's daily run itself, for the as-of date it was asked for: the sensor leaves it alone.
DAILY_LAUNCHED_BY = "tvq/daily_launched_by"

bars_job = dg.define_asset_job(
    "refresh_bars",
    selection=dg.AssetSelection.assets("bars"),
    description="Refresh the bar lake of one sleeve from its market data source.",
)

daily_job = dg.define_asset_job(
    "daily",
    # meta_portfolio is partitioned by run alone and has its own job (tvq_assets/meta.py).
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("bars", "meta_portfolio"),
    description="Everything downstream of the bars for one sleeve × run partition.",
)


@dg.schedule(job=bars_job, cron_schedule="15 0 * * *", execution_timezone="UTC")
def daily_schedule(context: dg.ScheduleEvaluationContext):
    """Each day after UTC midnight: refresh the bars of every sleeve (the daily job follows)."""
    for sleeve_name in sleeve_run.get_partitions_def_for_dimension("sleeve").get_partition_keys():
        yield dg.RunRequest(
            run_key=run_key(context.scheduled_execution_time.date(), sleeve_name),
            partition_key=sleeve_name,
        )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[bars_job],
    request_job=daily_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_daily_after_bars(context: dg.RunStatusSensorContext):
    """When a sleeve's bars are fresh, compute that sleeve's newest run partition."""
    sleeve_name = context.dagster_run.tags.get("dagster/partition")
    launcher = context.dagster_run.tags.get(DAILY_LAUNCHED_BY)
    if launcher:
        return dg.SkipReason(
            f"bars of {sleeve_name} refreshed by run {context.dagster_run.run_id}: `{launcher}` "
            "that started it starts the daily run itself"
        )
    newest = newest_run_date()
    if sleeve_name and newest:
        return dg.RunRequest(
            run_key=f"{run_key(newest, sleeve_name)}|{context.dagster_run.run_id}",
            partition_key=run_key(newest, sleeve_name),
        )
    return dg.SkipReason("the bars run had no sleeve partition")
