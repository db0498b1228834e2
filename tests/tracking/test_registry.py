"""The model registry mirrors each run's promotion decision: versions of ``tvq-<sleeve>`` per
policy, aliases ``champion`` and ``challenger`` moved only by the rule and only by the newest
decision, the decision recorded on the run and on the versions (a real local MLflow store).

The verdicts are the stored ``backtest`` rows a tournament would write; which of them replaces
the incumbent is decided by ``backtest.champion_verdict`` (tested in tests/quant), here only
mirrored."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from tvq_assets.quant.policy import TournamentRecord
from tvq_assets.tracking import registry
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker

SLEEVE = "crypto"
NAME = registry.model_name(SLEEVE)
A, B, C = "log_mps/min_variance", "rank_ic/hrp", "rank_ic/max_sharpe"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A tracker on its own SQLite store and a lake; runs are made per partition."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    tracker = MlflowTracker(tracking_uri=uri)
    return tracker, ParquetLake(root=str(tmp_path / "lake"))


def verdict(champion, challenger, incumbent, replaced, **numbers) -> pd.DataFrame:
    row = {
        "champion": champion,
        "challenger": challenger,
        "incumbent": incumbent or "",
        "replaced": replaced,
        "rule": "PSR, drawdown and deflated Sharpe",
        "challenger_sharpe": 1.4,
        "challenger_max_drawdown": -0.2,
        "confidence": 0.95,
        "drawdown_tolerance": 1.1,
        "deflated_sharpe": 0.7,
        "min_deflated_sharpe": 0.5,
        "deflated_sharpe_ok": 1.0,
        "trials": 15.0,
        **numbers,
    }
    return pd.DataFrame([row])


def decide(tracker, lake, day, table):
    partition = f"{day}|{SLEEVE}"
    empty = pd.DataFrame({"x": [0.0]})
    lake.write(
        ["backtest"],
        partition,
        TournamentRecord(empty, empty, empty, table, empty, empty),
    )
    experiment = tracker.experiment_id(f"tvq-{SLEEVE}")
    run = tracker.find_or_create_run(
        experiment, identity={"tvq.partition": partition}, name=f"{SLEEVE} {day}"
    )
    decision = registry.promote(
        tracker,
        lake,
        partition,
        run_id=run.info.run_id,
        provenance={"dagster.partition": partition, "dagster.run_id": f"run-{day}"},
    )
    return decision, run.info.run_id


def aliases(tracker) -> tuple[str, str]:
    champion = tracker.alias(NAME, registry.CHAMPION)
    challenger = tracker.alias(NAME, registry.CHALLENGER)
    return champion.tags["tvq.policy"], challenger.tags["tvq.policy"]


@pytest.mark.slow
def test_aliases_move_only_when_the_rule_replaces_the_incumbent(store):
    tracker, lake = store
    # Day 1: no incumbent, A is crowned: version 1 holds both aliases.
    first, _ = decide(tracker, lake, "2026-06-01", verdict(A, A, None, True))
    assert first.verdict == "first champion" and first.champion_version == "1"
    assert aliases(tracker) == (A, A)
    # Day 2: B is the best candidate, but the rule keeps A: B is registered as the challenger only.
    kept, _ = decide(
        tracker,
        lake,
        "2026-06-02",
        verdict(A, B, A, False, psr=0.80, incumbent_sharpe=1.2, incumbent_max_drawdown=-0.25),
    )
    assert kept.verdict.startswith("kept: PSR 0.800 < 0.95")
    assert aliases(tracker) == (A, B) and kept.challenger_version == "2"
    # Day 3: again kept (the deflated Sharpe this time): nothing new is registered.
    kept_again, _ = decide(
        tracker,
        lake,
        "2026-06-03",
        verdict(
            A,
            B,
            A,
            False,
            psr=0.97,
            incumbent_sharpe=1.2,
            incumbent_max_drawdown=-0.25,
            deflated_sharpe=0.3,
            deflated_sharpe_ok=0.0,
        ),
    )
    assert "deflated Sharpe 0.300 < 0.5" in kept_again.verdict
    assert aliases(tracker) == (A, B)
    assert [str(v.version) for v in tracker.model_versions(NAME)] == ["1", "2"]
    # Day 4: the rule replaces A by B: the champion alias moves to B's version.
    promoted, promoted_run = decide(
        tracker,
        lake,
        "2026-06-04",
        verdict(B, B, A, True, psr=0.99, incumbent_sharpe=1.2, incumbent_max_drawdown=-0.25),
    )
    assert promoted.verdict == f"promoted: {B} replaces {A}"
    assert aliases(tracker) == (B, B)
    assert str(tracker.alias(NAME, registry.CHAMPION).version) == "2"

    # Every decision is a tag on the versions it names, and on its run.
    tags = {str(v.version): v.tags for v in tracker.model_versions(NAME)}
    assert {k for k in tags["1"] if k.startswith("decision.")} == {
        f"decision.2026-06-0{d}" for d in (1, 2, 3, 4)
    }
    recorded = json.loads(tags["2"]["decision.2026-06-04"])
    assert recorded["replaced"] is True and recorded["numbers"]["psr"] == pytest.approx(0.99)
    run = tracker.get_run(promoted_run)
    assert run.data.tags["tvq.promotion.verdict"] == promoted.verdict
    assert run.data.metrics["promotion.psr"] == pytest.approx(0.99)
    assert json.loads(tracker.read_text(promoted_run, "promotion/decision.json"))["champion"] == B
    assert tags["2"]["mlflow_run_id"] and tags["2"]["dagster.partition"] == "2026-06-02|crypto"


@pytest.mark.slow
def test_a_backfilled_older_decision_leaves_the_aliases_to_the_newest(store):
    tracker, lake = store
    decide(tracker, lake, "2026-06-10", verdict(A, A, None, True))
    older, _ = decide(tracker, lake, "2026-06-05", verdict(C, C, None, True))
    assert not older.aliases_moved and aliases(tracker) == (A, A)
    # Its policy is registered and its decision recorded all the same.
    [version] = [v for v in tracker.model_versions(NAME) if v.tags["tvq.policy"] == C]
    assert "decision.2026-06-05" in version.tags


@pytest.mark.slow
def test_a_changed_parameter_is_a_new_version_of_the_same_policy(store, sleeve_policy):
    tracker, lake = store
    first, _ = decide(tracker, lake, "2026-06-01", verdict(A, A, None, True))
    sleeve_policy(SLEEVE, policy={"cap": 0.2})
    second, _ = decide(tracker, lake, "2026-06-02", verdict(A, A, A, False))
    assert (first.champion_version, second.champion_version) == ("1", "2")
    versions = tracker.model_versions(NAME)
    assert versions[0].tags["tvq.settings_digest"] != versions[1].tags["tvq.settings_digest"]
    assert str(tracker.alias(NAME, registry.CHAMPION).version) == "2"


def stored_file(tracker, name: str) -> Path:
    """The one stored copy of a registered model's file in the local artifact store."""
    [path] = list(tracker.artifact_root.rglob(name))
    return path


@pytest.mark.slow
def test_a_registered_version_loads_only_with_the_files_it_was_registered_with(store):
    tracker, lake = store
    decide(tracker, lake, "2026-06-01", verdict(A, A, None, True))
    version = tracker.alias(NAME, registry.CHAMPION)
    code = stored_file(tracker, "policy_model.py")
    assert version.tags[registry.CODE_DIGEST] == hashlib.sha256(code.read_bytes()).hexdigest()
    assert set(json.loads(version.tags[registry.FILE_DIGESTS])) >= {"MLmodel", "policy_model.py"}

    model = registry.load_policy(SLEEVE, tracking_uri=tracker.uri)
    assert model.unwrap_python_model().champion == A

    # An attacker with write access to the artifact store replaces the code MLflow executes.
    marker = Path(tracker.artifact_root).parent / "executed"
    code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())
    with pytest.raises(registry.UnverifiedModelError) as refused:
        registry.load_policy(SLEEVE, tracking_uri=tracker.uri)
    assert f"model {NAME} version 1:" in str(refused.value)
    assert "policy_model.py: changed" in str(refused.value)
    assert not marker.exists()  # refused before anything of it ran


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda folder: (folder / "MLmodel").write_text("flavors: {}\n"), "MLmodel: changed"),
        (lambda folder: (folder / "conda.yaml").unlink(), "conda.yaml: missing"),
        (lambda folder: (folder / "extra.py").write_text("x = 1\n"), "extra.py: not part of"),
    ],
)
def test_a_changed_configuration_a_missing_or_an_added_file_is_refused(store, tamper, message):
    tracker, lake = store
    decide(tracker, lake, "2026-06-01", verdict(A, A, None, True))
    tamper(stored_file(tracker, "MLmodel").parent)
    with pytest.raises(registry.UnverifiedModelError, match=f"model {NAME} version 1: .*{message}"):
        registry.load_policy(SLEEVE, version="1", tracking_uri=tracker.uri)


@pytest.mark.slow
def test_a_version_registered_without_digests_is_refused_and_replaced_by_the_next_run(store):
    tracker, lake = store
    decide(tracker, lake, "2026-06-01", verdict(A, A, None, True))
    for tag in (registry.CODE_DIGEST, registry.CONFIG_DIGEST, registry.FILE_DIGESTS):
        tracker.client.delete_model_version_tag(NAME, "1", tag)  # as registered before digests
    with pytest.raises(registry.UnverifiedModelError, match="version 1 was registered without"):
        registry.load_policy(SLEEVE, tracking_uri=tracker.uri)
    again, _ = decide(tracker, lake, "2026-06-02", verdict(A, A, A, False))
    assert again.champion_version == "2"
    assert (
        registry.load_policy(SLEEVE, tracking_uri=tracker.uri).unwrap_python_model().champion == A
    )


def test_a_first_champion_below_the_deflated_sharpe_bound_is_said_plainly():
    first = {"champion": A, "challenger": A, "incumbent": "", "replaced": True}
    assert registry.verdict_text(pd.Series({**first, "deflated_sharpe_ok": 1.0})) == (
        "first champion"
    )
    below = registry.verdict_text(pd.Series({**first, "deflated_sharpe_ok": 0.0}))
    assert below.startswith("first champion; ") and "deflated Sharpe is below the bound" in below
    assert "(" not in below  # the summary wraps the verdict in parentheses of its own
