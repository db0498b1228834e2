"""What the commands need of the Dagster instance in ``DAGSTER_HOME`` (its ``dagster.yaml``): the
run queue and the run launcher. The definitions warn when it lacks them; the commands refuse to
launch runs through it."""

from pathlib import Path

import yaml

from tvq_resources.services import REPOSITORY_HOME

# What `tvq` needs of the instance in DAGSTER_HOME/dagster.yaml (section: class): the queue, whose
# limits keep a sleeve's runs apart, and the launcher that executes a dequeued run in this process
# (Dagster's default launcher refuses a code location not served over gRPC).
INSTANCE_SETTINGS = {
    "run_coordinator": "QueuedRunCoordinator",
    "run_launcher": "MonitoredRunLauncher",
}


def instance_settings_problem(home: str | None) -> str | None:
    """What the instance of DAGSTER_HOME ``home`` lacks of the project's settings, and what to
    do; None when it has them (or ``home`` is unset: Dagster's own ephemeral instance)."""
    if not home:
        return None
    settings = Path(home) / "dagster.yaml"
    fix = (
        f"copy the project's settings (cp {REPOSITORY_HOME / 'dagster.yaml'} {settings}), or unset "
        f"DAGSTER_HOME to use this repository's instance {REPOSITORY_HOME}"
    )
    try:
        document = yaml.safe_load(settings.read_text())
    except FileNotFoundError:
        return (
            f"DAGSTER_HOME={home} has no dagster.yaml, so its instance has neither the project's "
            f"run queue nor its run launcher: {fix}"
        )
    except (OSError, yaml.YAMLError) as error:
        return f"{settings} cannot be read ({error}): {fix}"
    document = document if isinstance(document, dict) else {}
    missing = [
        f"{section} ({name})"
        for section, name in INSTANCE_SETTINGS.items()
        if not isinstance(document.get(section), dict) or document[section].get("class") != name
    ]
    if missing:
        return f"{settings} lacks the project's {' and '.join(missing)}: {fix}"
    return None
