"""Secrets stay out of what is shown: one redaction for every URI printed or stored, links
without credentials, secret files private from their first byte, and the exports of the
services carrying MLflow's login in MLflow's own variables."""

import stat

import pytest

from tvq_resources import links, services
from tvq_resources.tracking import MlflowTracker


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "postgresql+psycopg2://tvq:s3cr%40t@127.0.0.1:5433/dagster",
            "postgresql+psycopg2://tvq:***@127.0.0.1:5433/dagster",
        ),
        ("http://admin:p@ss@127.0.0.1:5000/path", "http://admin:***@127.0.0.1:5000/path"),
        ("https://ghp_token@example.org/x", "https://***@example.org/x"),
        ("http://127.0.0.1:5000/x?token=abc&keep=1", "http://127.0.0.1:5000/x?token=***&keep=1"),
        ("host=db user=tvq password=hunter2 dbname=x", "host=db user=tvq password=*** dbname=x"),
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_hides_passwords_tokens_and_secret_parameters_and_keeps_the_rest(uri, shown):
    assert links.redact(uri) == shown
    assert links.redact(f"at {uri}: refused") == f"at {shown}: refused"


def test_credentials_are_split_from_a_uri_as_a_client_sends_them():
    bare, user, password = links.credentials("http://tvq:p%40ss@127.0.0.1:5000")
    assert (bare, user, password) == ("http://127.0.0.1:5000", "tvq", "p@ss")
    assert links.credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_links_to_a_tracking_server_carry_no_credentials():
    base = links.mlflow_ui("http://tvq:secret@127.0.0.1:5000/")
    assert base == "http://127.0.0.1:5000"
    url = links.mlflow_run(base, "1", "abc")
    assert "secret" not in url and "tvq@" not in url
    ui = links.dagster_ui({links.DAGSTER_UI_VARIABLE: "http://u:secret@proxy:3000"})
    assert ui == "http://proxy:3000"


def test_the_tracker_shows_its_server_without_the_password(monkeypatch):
    tracker = MlflowTracker(tracking_uri="http://tvq:secret@127.0.0.1:5000")
    assert tracker.shown_uri == "http://tvq:***@127.0.0.1:5000"
    assert "secret" not in tracker.run_url("1", "abc")
    assert "secret" not in tracker.model_version_url("tvq-small", "3")


def test_a_secret_file_is_private_from_its_first_byte_and_kept(tmp_path):
    path = tmp_path / "a.secret"
    assert services._secret(path, "first") == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # loosened by hand: tightened again, the value kept
    assert services._secret(path, "second") == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_exports_carry_the_mlflow_login_in_mlflows_variables(tmp_path):
    running = services.Services(tmp_path, 15433, 15000, 16379, tmp_path / "production")
    running.password_file.write_text("pg-secret\n")
    services._secret(running.mlflow_password_file, "mlflow-secret")
    environment = running.environment()
    assert environment["MLFLOW_TRACKING_USERNAME"] == services.MLFLOW_USER
    assert environment["MLFLOW_TRACKING_PASSWORD"] == "mlflow-secret"
    assert environment["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"  # no user-info
    running.mlflow_password_file.unlink()
    with pytest.raises(services.ServiceError, match=r"mlflow.password is missing"):
        running.environment()


def test_a_server_that_wants_a_login_is_named_with_the_variables_to_set():
    """check_production asks an authenticated endpoint, not only /health (which MLflow's
    basic-auth app leaves open)."""
    import http.server
    import threading

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from tvq_resources import mode

        uri = f"http://tvq:secret@127.0.0.1:{server.server_port}"
        problem = mode._mlflow_accepts(uri, {})
        assert "HTTP 401" in problem and "were refused" in problem
        assert "MLFLOW_TRACKING_USERNAME" in problem and "secret" not in problem
        bare = f"http://127.0.0.1:{server.server_port}"
        assert "are not set" in mode._mlflow_accepts(bare, {})
    finally:
        server.shutdown()
        server.server_close()


def test_a_login_inside_the_tracking_uri_reaches_the_server_check_and_is_accepted():
    """``http://user:password@host`` is a valid tracking URI: the health probe and the login
    probe use it without passing the user-info to urllib (which would take it for the host)."""
    import base64
    import http.server
    import threading

    expected = "Basic " + base64.b64encode(b"tvq:s3cret").decode()

    class Guarded(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            allowed = self.path == "/health" or self.headers.get("Authorization") == expected
            self.send_response(200 if allowed else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from tvq_resources import mode

        uri = f"http://tvq:s3cret@127.0.0.1:{server.server_port}"
        assert mode._mlflow_answers(uri) is None
        assert mode._mlflow_accepts(uri, {}) is None
    finally:
        server.shutdown()
        server.server_close()


def test_an_mlflow_server_started_without_a_login_is_not_left_running_as_it_is(tmp_path):
    """Services of an older version: MLflow runs with no login; `make services` must not report
    it as running and carry on."""
    import subprocess

    free = [services._free_port() for _ in range(3)]
    running = services.Services(tmp_path, *free, tmp_path / "production")
    running.record()
    stand_in = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        running.pid_file("mlflow").write_text(f"{stand_in.pid}\n")
        with pytest.raises(services.ServiceError, match="runs without a login"):
            running.start()
    finally:
        stand_in.kill()
        stand_in.wait()
