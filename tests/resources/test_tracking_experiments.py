"""The experiments tvq makes in a real MLflow store (SQLite in a temporary folder)."""


def test_an_experiment_tvq_creates_opens_on_its_runs_not_mlflows_genai_view(tmp_path):
    from tvq_resources.tracking import EXPERIMENT_KIND, MlflowTracker

    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.client.get_experiment(tracker.experiment_id("tvq-crypto"))
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"


def test_an_experiment_created_without_the_kind_gets_it_when_tvq_first_uses_it(tmp_path):
    from tvq_resources.tracking import EXPERIMENT_KIND, MlflowTracker

    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    older = tracker.client.create_experiment("tvq-tradfi", artifact_location=tmp_path.as_uri())
    assert EXPERIMENT_KIND not in tracker.client.get_experiment(older).tags
    assert tracker.experiment_id("tvq-tradfi") == older
    assert tracker.client.get_experiment(older).tags[EXPERIMENT_KIND] == "custom_model_development"
