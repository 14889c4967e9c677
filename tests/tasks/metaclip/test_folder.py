"""Worldwide metadata folders: listing, planned hashes, and lists parsed once into our cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from schemas.config import BalanceConfig, ConfigError
from tasks.metaclip import folder as fmod
from tasks.metaclip.folder import (
    KEY,
    list_folder,
    load_language,
    metadata_folder,
    planned_files,
)
from tasks.metaclip.metadata import Metadata, MetadataError


def make_folder(root: Path, lists: dict[str, list[str]], gz: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for code, entries in lists.items():
        data = json.dumps(entries, ensure_ascii=False).encode()
        if code in gz:
            (root / f"{code}.json.gz").write_bytes(gzip.compress(data))
        else:
            (root / f"{code}.json").write_bytes(data)
    return root


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    monkeypatch.setattr(fmod, "_loaded", {})


def test_listing_and_its_errors(tmp_path) -> None:
    root = make_folder(
        tmp_path / "m", {"en": ["dog"], "zh-Hant": ["狗"], "th": ["แมว"]}, gz=("th",)
    )
    (root / "README.md").write_text("not a list")
    assert list(list_folder(str(root))) == ["en", "th", "zh-Hant"]
    (root / "bad name.json").write_text("[]")
    with pytest.raises(MetadataError, match=r"bad name\.json"):
        list_folder(str(root))
    (root / "bad name.json").unlink()
    (root / "th.json").write_text('["x"]')
    with pytest.raises(MetadataError, match="two lists for 'th'"):
        list_folder(str(root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MetadataError, match="holds no"):
        list_folder(str(empty))


def test_planned_hashes_and_config_checks(tmp_path) -> None:
    root = make_folder(tmp_path / "m", {"en": ["dog"], "de": ["hund"]})
    files = planned_files(BalanceConfig(metadata=str(root)))
    assert set(files) == {KEY, f"{KEY}/de.json", f"{KEY}/en.json"}
    (root / "de.json").write_text('["hund", "katze"]')
    again = planned_files(BalanceConfig(metadata=str(root)))
    assert again[KEY] != files[KEY] and again[f"{KEY}/en.json"] == files[f"{KEY}/en.json"]
    (root / "en.json").unlink()
    with pytest.raises(ConfigError, match=r"no en\.json") as err:
        planned_files(BalanceConfig(metadata=str(root)))
    assert "\n" not in str(err.value)
    assert planned_files(BalanceConfig(metadata=str(root), tail_fraction=0.1))  # p needs no en
    single = tmp_path / "metadata.json"
    single.write_text('["dog"]')
    for extra in ({"tail_fraction": 0.2}, {"languages": {"zh-Hant": "zh"}}):
        with pytest.raises(ConfigError, match=r"needs pool\.balance\.metadata to be a folder"):
            planned_files(BalanceConfig(metadata=str(single), **extra))
    assert list(planned_files(BalanceConfig(metadata=str(single)))) == [KEY]


def test_config_t_or_tail_fraction() -> None:
    assert BalanceConfig(metadata="m").t == 20000
    assert BalanceConfig(metadata="m", tail_fraction=0.3).t is None
    with pytest.raises(ValueError, match="either t"):
        BalanceConfig(metadata="m", t=5, tail_fraction=0.3)
    with pytest.raises(ValueError):
        BalanceConfig(metadata="m", tail_fraction=1.0)
    with pytest.raises(ValueError, match="language code"):
        BalanceConfig(metadata="m", languages={"zh/../x": "zh"})


def test_each_list_is_parsed_once_per_content(tmp_path, monkeypatch) -> None:
    root = make_folder(tmp_path / "m", {"en": ["dog", "cat"], "zh": ["狗"]}, gz=("zh",))
    bal = BalanceConfig(metadata=str(root))
    folder = metadata_folder(bal, None)
    cache = str(tmp_path / "cache")
    parsed = []
    real = fmod.parse_metadata
    monkeypatch.setattr(
        fmod, "parse_metadata", lambda raw, url: parsed.append(url) or real(raw, url)
    )
    zh = load_language(folder.files["zh"], cache)
    assert zh == Metadata.from_entries(["狗"]) and len(parsed) == 1
    monkeypatch.setattr(fmod, "_loaded", {})  # a new process: read back from our cache
    assert load_language(folder.files["zh"], cache) == zh and len(parsed) == 1
    # the same list at another path (same bytes) is the same cache entry
    other = make_folder(tmp_path / "copy", {"zh": ["狗"]}, gz=("zh",))
    monkeypatch.setattr(fmod, "_loaded", {})
    copy = metadata_folder(BalanceConfig(metadata=str(other), tail_fraction=0.5), None)
    assert load_language(copy.files["zh"], cache) == zh and len(parsed) == 1


def test_damaged_cache_is_parsed_again_and_changed_file_refused(tmp_path, monkeypatch) -> None:
    root = make_folder(tmp_path / "m", {"en": ["dog", "cat"]})
    folder = metadata_folder(BalanceConfig(metadata=str(root)), None)
    cache = tmp_path / "cache"
    load_language(folder.files["en"], str(cache))
    (table,) = cache.rglob("entries.parquet")
    table.write_bytes(table.read_bytes()[:-20] + b"\0" * 20)  # damaged under our feet
    monkeypatch.setattr(fmod, "_loaded", {})
    assert load_language(folder.files["en"], str(cache)).entries == ("dog", "cat")
    (root / "en.json").write_text('["dog", "cat", "bird"]')  # edited after planning
    monkeypatch.setattr(fmod, "_loaded", {})
    with pytest.raises(MetadataError, match="changed while the run was going"):
        load_language(folder.files["en"], str(tmp_path / "other-cache"))


def test_cache_holds_no_pickle(tmp_path) -> None:
    root = make_folder(tmp_path / "m", {"en": ["dog"]})
    folder = metadata_folder(BalanceConfig(metadata=str(root)), None)
    cache = tmp_path / "cache"
    load_language(folder.files["en"], str(cache))
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert files == ["done.json", "entries.parquet"]
    assert (next(cache.rglob("entries.parquet")).read_bytes()[:4]) == b"PAR1"


def test_lists_added_or_removed_after_planning_are_refused(tmp_path) -> None:
    root = make_folder(tmp_path / "m", {"en": ["dog"], "de": ["hund"]})
    bal = BalanceConfig(metadata=str(root))
    planned = planned_files(bal)
    (root / "fr.json").write_text('["chien"]')
    with pytest.raises(MetadataError, match="appeared while the run was going"):
        metadata_folder(bal, None, planned)
    (root / "fr.json").unlink()
    (root / "de.json").unlink()
    with pytest.raises(MetadataError, match=r"de\.json left"):
        metadata_folder(bal, None, planned)


def test_curate_balance_refuses_a_folder_in_one_line(tmp_path) -> None:
    from tasks.metaclip.balance import balance_file

    root = make_folder(tmp_path / "m", {"en": ["dog"]})
    with pytest.raises(MetadataError, match="curate balance takes one list") as err:
        balance_file(str(root), str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), t=5)
    assert "\n" not in str(err.value)
