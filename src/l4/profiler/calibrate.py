"""Turn a measured skew CSV into a profile's alpha table (``l4 calibrate-alpha``).

The new table comes from ``l4.costmodel.alpha_fit.fit_alpha`` (the fit that produced the bundled
tables); the profile keeps every other number, and its ``provenance`` / ``fit_error`` say where the
table came from and how well it predicts the measured mixed batches. The JSON is written in the
format of ``tools/calibrate_profiles.py`` (6 significant digits, sorted keys) so diffs stay small.

The calibrated profile is never written into the installed package: a bundled profile's
calibration goes to the user profile directory under a name of its own (``write_target``).

The sidecar ``<csv stem>.json`` that ``l4 profile-attention`` writes next to each CSV is read when
present: a measurement of another model is refused, and so is a CPU or ``--quick`` run unless
forced, because those only test the pipeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from l4.costmodel.alpha_fit import AlphaFit, fit_alpha, read_skew_csv
from l4.costmodel.profile import (
    PROFILE_PACKAGE,
    available_profiles,
    is_bundled_file,
    profile_from_dict,
    profile_source,
)
from l4.errors import ConfigError


def round_floats(obj: Any) -> Any:
    """6 significant digits for floats, recursively (as tools/calibrate_profiles.py writes)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {str(k): round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v) for v in obj]
    return obj


def profile_json_text(doc: dict[str, Any]) -> str:
    return json.dumps(round_floats(doc), indent=2, sort_keys=True) + "\n"


def profile_file(name_or_path: str, *, user_dir: Path | None = None) -> Path:
    """The JSON file behind a ``--profile`` value (bundled, user directory or path)."""
    source = profile_source(name_or_path, user_dir=user_dir)
    if source is not None:
        return source
    bundled = resources.files(PROFILE_PACKAGE).joinpath(f"{name_or_path}.json")
    return Path(str(bundled))


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteTarget:
    """Where ``--write`` puts the calibrated profile and the name it gets."""

    path: Path
    name: str


def write_target(
    source: Path, source_name: str, *, user_dir: Path, name: str | None = None
) -> WriteTarget:
    """Never the installed package: a bundled profile's calibration goes to
    ``<user_dir>/<name>.json`` under a name of its own (default ``<bundled>-calibrated``: a
    bundled name always resolves to the bundled numbers), a user profile is rewritten where it is,
    unless ``name`` gives it a new one in ``user_dir``."""
    bundled = is_bundled_file(source)
    if name is not None:
        if "/" in name or "\\" in name or name.endswith(".json") or not name:
            raise ConfigError(f"--name must be a profile name, not a path: {name!r}")
        if name in available_profiles():
            raise ConfigError(
                f"--name {name} is a bundled profile's name; a user profile of that name would "
                "never be found (bundled names come first)"
            )
    if name is None and not bundled:
        return WriteTarget(path=source, name=source_name)
    new_name = name or f"{source_name}-calibrated"
    return WriteTarget(path=user_dir / f"{new_name}.json", name=new_name)


def sidecar_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".json")


def read_sidecar(csv_path: Path) -> dict[str, Any] | None:
    path = sidecar_path(csv_path)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read measurement metadata {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("measurement"), dict):
        raise ConfigError(f"{path}: not an l4 profile-attention metadata file")
    return doc


def check_sidecar(meta: dict[str, Any], model_name: str, *, force: bool) -> None:
    measured = meta.get("model", {}).get("name")
    if measured != model_name:
        raise ConfigError(f"the CSV measured {measured!r}, but the profile is of {model_name!r}")
    m = meta["measurement"]
    if (m.get("quick") or m.get("device_type") != "cuda") and not force:
        raise ConfigError(
            f"the CSV is a {'--quick ' if m.get('quick') else ''}run on {m.get('device')}, a "
            "pipeline test rather than a calibration; pass --force to use it anyway"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AlphaUpdate:
    doc: dict[str, Any]
    """The updated profile, validated."""
    old_alpha: dict[str, Any]
    fit: AlphaFit
    target: Path


def alpha_update(
    csv_path: Path,
    profile: str,
    *,
    user_dir: Path,
    out: Path | None = None,
    name: str | None = None,
    force: bool = False,
) -> AlphaUpdate:
    """The profile ``profile`` with its alpha table refitted from ``csv_path``; nothing written.
    Its target is ``out`` when given, else ``write_target``; it is never a bundled file."""
    records = read_skew_csv(csv_path)
    fit = fit_alpha(records)
    source = profile_file(profile, user_dir=user_dir)
    try:
        doc = json.loads(source.read_text())
        model_name = str(doc["model"]["name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"profile {source}: malformed ({exc})") from exc
    meta = read_sidecar(csv_path)
    if meta is not None:
        check_sidecar(meta, model_name, force=force)
    sha = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    where = "no measurement metadata next to the CSV"
    if meta is not None:
        m = meta["measurement"]
        where = (
            f"measured on {m.get('device')} ({m.get('kernel')} kernel, {m.get('dtype')}, torch "
            f"{m.get('torch')}, medians of {m.get('repeats')} runs)"
        )
    target = write_target(source, str(doc.get("name", profile)), user_dir=user_dir, name=name)
    if out is not None:
        if is_bundled_file(out):
            raise ConfigError(f"--out {out} is inside the installed package; write elsewhere")
        target = WriteTarget(path=out, name=name or target.name)
    source_name = str(doc.get("name", profile))
    new = dict(doc)
    new["name"] = target.name
    new["alpha"] = fit.table_dict()
    renamed = {} if target.name == source_name else {"calibrated_from": source_name}
    new["provenance"] = {
        **doc.get("provenance", {}),
        **renamed,
        "alpha": (
            f"l4 profile-attention skew sweep {csv_path.name}: {where}; median alpha per n for "
            "regime pure (decode_only) and mixed (with_prefill), clipped to [0, 1], by "
            "l4.costmodel.alpha_fit.fit_alpha; written by l4 calibrate-alpha"
        ),
        "alpha_source": {
            "csv": csv_path.name,
            "sha256": sha,
            "rows": len(records),
            "measurement": None if meta is None else meta["measurement"],
        },
    }
    new["fit_error"] = {**doc.get("fit_error", {}), "skew_t_skew": fit.errors}
    try:
        profile_from_dict(new)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the updated profile would be invalid: {exc}") from exc
    return AlphaUpdate(doc=new, old_alpha=dict(doc.get("alpha", {})), fit=fit, target=target.path)


def write_update(update: AlphaUpdate) -> None:
    update.target.parent.mkdir(parents=True, exist_ok=True)
    update.target.write_text(profile_json_text(update.doc))
