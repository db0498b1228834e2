"""The documentation site builds under --strict, and its references come from the code: every
`tvq` command, every catalog key and every asset and check appears on the built pages."""

import contextlib
import dataclasses
import html as html_module
import importlib.util
import io
import re
import shutil
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

from tvq_assets import catalog, cli
from tvq_resources.market_data import SourceConfig

ROOT = Path(__file__).resolve().parents[1]


def load_hooks():
    spec = importlib.util.spec_from_file_location("tvq_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_site(config_file: Path, site: Path) -> None:
    config = load_config(str(config_file), strict=True, site_dir=str(site))
    build(config)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build_site(ROOT / "mkdocs.yml", site)
    return site


def page_text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text()
    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


def commands_from_help() -> list[str]:
    """The commands `tvq --help` lists in its usage line (``{demo,production,...}``)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["--help"])
    [choices] = re.findall(r"\{([a-z,-]+)\}", out.getvalue())[:1]
    return choices.split(",")


def test_the_cli_reference_shows_every_command_with_its_options(site):
    text = page_text(site, "reference/cli")
    commands = commands_from_help()
    assert len(commands) >= 6
    for command in commands:
        assert f"tvq {command}" in text, command
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main([command, "--help"])
        for option in re.findall(r"--[a-z-]+", out.getvalue()):
            assert option in text, (command, option)


def test_the_catalog_reference_shows_every_key_with_its_default(site):
    text = page_text(site, "reference/catalog")
    for key in catalog.TOP_LEVEL_KEYS + catalog.SLEEVE_KEYS:
        assert key in text, key
    for name in SourceConfig.model_fields:
        if name != "calendar":
            assert f"source.{name}" in text, name
    for cls, prefix in ((catalog.Policy, "policy."), (catalog.MetaPolicy, "meta.")):
        for field in dataclasses.fields(cls):
            assert f"{prefix}{field.name}" in text, field.name
            meaning = " ".join(field.metadata["doc"].replace("`", "").split()[:4])
            assert meaning in text, (field.name, meaning)


def test_the_asset_reference_shows_every_asset_and_check(site):
    from tvq_assets.definitions import defs

    text = page_text(site, "reference/assets")
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert key.to_user_string() in text, key
    for check_key in graph.asset_check_keys:
        assert check_key.name in text, check_key
    for job in defs.jobs:
        assert job.name in text


def test_a_catalog_field_without_its_meaning_stops_the_reference():
    hooks = load_hooks()

    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        lookback: int = catalog.bounded(500, ge=2)

    with pytest.raises(hooks.ReferenceError, match=r"Undocumented\.lookback has no `doc`"):
        hooks._field_rows(Undocumented)


def test_a_broken_link_fails_the_strict_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    config = (ROOT / "mkdocs.yml").read_text()
    hooks = str(ROOT / "docs" / "hooks.py")  # the hooks of this checkout, which read its Makefile
    (tmp_path / "mkdocs.yml").write_text(config.replace("- docs/hooks.py", f"- {hooks}"))
    page = tmp_path / "docs" / "layout.md"
    page.write_text(page.read_text() + "\nSee [the asset graph](concepts/no-such-page.md).\n")
    with pytest.raises(Abort, match="warning"):
        build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
