"""Where `--profile NAME|PATH` is found: bundled names, then the user directory, then a path."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from l4.costmodel.profile import (
    PROFILE_PACKAGE,
    available_profiles,
    is_bundled_file,
    load_profile,
    profile_source,
    user_profiles,
)
from l4.errors import ConfigError, UnknownNameError

BUNDLED = "h100-llama-3.1-8b"


def _bundled_doc(name: str = BUNDLED) -> dict[str, object]:
    text = resources.files(PROFILE_PACKAGE).joinpath(f"{name}.json").read_text()
    doc: dict[str, object] = json.loads(text)
    return doc


def _save(path: Path, doc: dict[str, object], **changes: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**doc, **changes}))
    return path


def test_a_name_in_the_user_directory_is_found(tmp_path: Path) -> None:
    _save(tmp_path / "my-gpu.json", _bundled_doc(), name="my-gpu", step_fixed_s=0.123)
    profile = load_profile("my-gpu", user_dir=tmp_path)
    assert (profile.name, profile.step_fixed_s) == ("my-gpu", 0.123)
    assert profile_source("my-gpu", user_dir=tmp_path) == tmp_path / "my-gpu.json"
    assert user_profiles(tmp_path) == ["my-gpu"]
    assert user_profiles(tmp_path / "absent") == []


def test_a_bundled_name_is_never_shadowed_by_a_user_file(tmp_path: Path) -> None:
    _save(tmp_path / f"{BUNDLED}.json", _bundled_doc(), step_fixed_s=9.0)
    assert profile_source(BUNDLED, user_dir=tmp_path) is None
    assert load_profile(BUNDLED, user_dir=tmp_path) == load_profile(BUNDLED)


def test_a_path_is_read_as_a_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "elsewhere" / "x.json", _bundled_doc(), name="x")
    assert load_profile(str(path)).name == "x"
    with pytest.raises(ConfigError, match=r"^profile file .*missing\.json not found$"):
        load_profile(str(tmp_path / "missing.json"))


def test_an_unknown_name_lists_bundled_and_user_profiles(tmp_path: Path) -> None:
    _save(tmp_path / "my-gpu.json", _bundled_doc(), name="my-gpu")
    with pytest.raises(UnknownNameError) as err:
        load_profile("tpu-v9", user_dir=tmp_path)
    assert set(err.value.known) == {*available_profiles(), "my-gpu"}
    with pytest.raises(UnknownNameError):
        load_profile("my-gpu")  # no user directory given: bundled names only


def test_bundled_files_are_recognised(tmp_path: Path) -> None:
    package = Path(str(resources.files(PROFILE_PACKAGE)))
    assert is_bundled_file(package / f"{BUNDLED}.json")
    assert not is_bundled_file(_save(tmp_path / f"{BUNDLED}.json", _bundled_doc()))
