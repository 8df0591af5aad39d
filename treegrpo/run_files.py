"""The files of a run folder that are not checkpoints or logs: the folder itself (unique per run)
and the merged config (kept as first written when a resume changes options); and the JSON +
markdown report pair the measuring tools write."""
from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from pathlib import Path

from mmengine.config import Config


def create_run_dir(runs_root: Path, seed: int) -> Path:
    """A new folder ``<runs_root>/<stamp>_seed<seed>_<6 hex>``, created with ``exist_ok=False`` so
    that runs started in the same second never share one. ``TREEGRPO_RUN_STAMP`` replaces the
    time stamp (``%Y%m%d_%H%M%S``)."""
    stamp = os.environ.get("TREEGRPO_RUN_STAMP") or time.strftime("%Y%m%d_%H%M%S")
    runs_root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = runs_root / f"{stamp}_seed{seed}_{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder under {runs_root}")


def flat_items(tree, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> ``{'a.b.c': value}`` (lists and other values are leaves)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    items = {}
    for key, value in tree.items():
        items.update(flat_items(value, f"{prefix}.{key}" if prefix else str(key)))
    return items


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs between two config dicts (added and removed ones too)."""
    old_items, new_items = flat_items(old), flat_items(new)
    return sorted(k for k in old_items.keys() | new_items.keys() if old_items.get(k, ...) != new_items.get(k, ...))


def dump_config(cfg: Config, work_dir: Path, resumed_iteration: int | None = None) -> Path:
    """Write the merged config to ``<work_dir>/config.py``. When resuming into a run whose
    ``config.py`` holds other options, that file is kept: the new options go to
    ``config_resume_<iteration>.py`` (they apply from that iteration on) with a warning naming
    the changed keys. Returns the path written (or the unchanged ``config.py``)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "config.py"
    if resumed_iteration is None or not path.is_file():
        cfg.dump(str(path))
        return path
    as_written = Config.fromstring(cfg.pretty_text, ".py").to_dict()  # what dump would write
    changed = changed_keys(Config.fromfile(str(path)).to_dict(), as_written)
    if not changed:
        return path
    resume_path = work_dir / f"config_resume_{resumed_iteration}.py"
    cfg.dump(str(resume_path))
    warnings.warn(f"resuming {work_dir} at iteration {resumed_iteration} with changed config keys "
                  f"{changed}: config.py is kept, the new config is {resume_path.name}", stacklevel=2)
    return resume_path


def write_report(out: str | os.PathLike, stem: str, result: dict, report: str) -> Path:
    """Write ``<out>/<stem>.json`` (``result``, values JSON cannot hold as strings) and
    ``<out>/<stem>.md`` (``report``), print the report and where it went; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(report)
    print(report, end="")
    print(f"wrote {out}/{stem}.json, {stem}.md ({result['seconds']:.1f} s)")
    return out
