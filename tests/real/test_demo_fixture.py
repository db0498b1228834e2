"""The demo sleeve's real bars ship inside the repository: unedited, found from any working
directory, and the sleeve ends its last session with every check green."""

import filecmp
import hashlib
import shutil

import dagster as dg
import pytest

from tests.conftest import evaluations, resources_for
from tests.real.folders import DEMO, REAL, REPOSITORY, SHIPPED, needs_real
from tvq_assets.catalog import load_catalog
from tvq_assets.definitions import SLEEVE_ASSETS
from tvq_resources.market_data import resolve_path

SLEEVE = "binance_perp"
LAST_SESSION = "2026-03-19"


def shipped_files() -> list[str]:
    return sorted(path.name for path in DEMO.root.glob("*.csv"))


def test_the_demo_sleeve_reads_the_folder_shipped_in_the_repository():
    assert DEMO.root == SHIPPED / DEMO.name and DEMO.root.is_dir()
    assert len(shipped_files()) == 37
    assert (DEMO.root / "README.md").is_file()


def test_every_shipped_file_has_the_checksum_recorded_when_it_was_copied():
    listed = {}
    for line in (DEMO.root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    assert sorted(listed) == shipped_files()  # no file added or removed without a record
    for name, digest in listed.items():
        actual = hashlib.sha256((DEMO.root / name).read_bytes()).hexdigest()
        assert actual == digest, f"{DEMO.root / name} was changed: these files are never edited"


@needs_real
def test_the_shipped_files_are_byte_for_byte_the_reference_copy():
    reference = REAL / DEMO.name
    assert sorted(path.name for path in reference.glob("*.csv")) == shipped_files()
    match, mismatch, errors = filecmp.cmpfiles(reference, DEMO.root, shipped_files(), shallow=False)
    assert (mismatch, errors) == ([], [])
    assert len(match) == 37


def test_the_catalog_path_resolves_to_the_shipped_folder_from_any_working_directory(
    tmp_path, monkeypatch
):
    path = load_catalog().sleeve(SLEEVE).source["path"]
    assert not path.startswith(("/", ".."))  # inside the repository, never beside it
    monkeypatch.chdir(tmp_path)
    assert resolve_path(path).resolve() == DEMO.root.resolve()
    # A catalog of one's own elsewhere (TVQ_SLEEVES) that keeps the entry finds the same folder.
    own = tmp_path / "elsewhere" / "sleeves.yaml"
    own.parent.mkdir()
    shutil.copy(REPOSITORY / "tvq_assets" / "sleeves.yaml", own)
    monkeypatch.setenv("TVQ_SLEEVES", str(own))
    assert resolve_path(path).resolve() == DEMO.root.resolve()


@pytest.mark.slow
def test_the_demo_sleeve_ends_its_last_session_with_every_check_green(instance, lake_root):
    resources = resources_for(lake_root)  # the catalog's own sources and policy
    bars = dg.materialize(
        [SLEEVE_ASSETS[0]], partition_key=SLEEVE, resources=resources, instance=instance
    )
    daily = dg.materialize(
        SLEEVE_ASSETS,
        partition_key=f"{LAST_SESSION}|{SLEEVE}",
        selection=[asset.key for asset in SLEEVE_ASSETS[1:]],
        resources=resources,
        instance=instance,
    )
    checks = {**evaluations(bars), **evaluations(daily)}
    red = {name: e.description for name, e in checks.items() if not e.passed}
    assert len(checks) >= 15 and red == {}
