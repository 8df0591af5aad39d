"""GenEval-style structured check reward: a detector lists the objects in each image and each
prompt record's spec is checked against them (objects, counts, colours, relative positions).

Spec (the prompt record's metadata, or ``metadata[spec_key]``), GenEval's format::

    {"tag": "counting",                                  # one of TAGS
     "include": [{"class": "dog", "count": 2, "color": "red"},
                 {"class": "cat", "count": 1, "position": ["left of", 0]}],
     "exclude": [{"class": "dog", "count": 3}],
     "position": ["left of", 1, 0]}                      # optional: include[1] left of include[0]

Checks, each pass / fail (:func:`check_spec`): ``include[k]`` at least ``count`` detections of
``class`` with score >= ``score_threshold``; with ``color``, at least ``count`` of them of that
colour; with ``position: [relation, j]`` every detection of include[k] stands in ``relation`` to
every detection of include[j] (the top-level ``position: [relation, k, j]`` says the same);
``exclude[e]`` fewer than ``count`` detections of its class. Relations come from box centres
with GenEval's margin rule (:func:`box_relations`). Reward: the fraction of checks passed
(``mode='fraction'``) or 1 if all pass, else 0 (``mode='strict'``, GenEval's score).

A detector (registry ``DETECTORS``; ``structured_detectors.py``) maps images [L, 3, H, W] in
[0, 1] to L lists of ``{"label": str, "score": float in [0, 1], "box": [x0, y0, x1, y1] in
pixels, "color": str (optional)}``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from treegrpo.registry import DETECTORS, REWARDS, build
from treegrpo.rewards.base import Reward, check_images, check_metadata

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
MODES = ("fraction", "strict")
MAX_OBJECTS = 32  # entries of include / exclude per spec
MAX_DETECTIONS = 256  # detections per image
MAX_LABEL_CHARS = 100


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= MAX_DETECTIONS


def _check_entry(entry: Any, where: str, n_include: int, allow_position: bool) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("class"), str) or not entry["class"]:
        raise ValueError(f"{where} must be an object with a non-empty string 'class', got {str(entry)[:100]}")
    if not _is_count(entry.get("count", 1)):
        raise ValueError(f"{where}['count'] must be an integer in [1, {MAX_DETECTIONS}], got {entry.get('count')!r}")
    if "color" in entry and not isinstance(entry["color"], str):
        raise ValueError(f"{where}['color'] must be a string, got {entry['color']!r}")
    if "position" in entry:
        pos = entry["position"]
        if not allow_position:
            raise ValueError(f"{where} may not have a 'position' (only include entries do)")
        if (not isinstance(pos, (list, tuple)) or len(pos) != 2 or pos[0] not in RELATIONS
                or isinstance(pos[1], bool) or not isinstance(pos[1], int) or not 0 <= pos[1] < n_include):
            raise ValueError(f"{where}['position'] must be [relation, j] with relation one of {list(RELATIONS)} "
                             f"and j an index into include (< {n_include}), got {pos!r}")


def validate_spec(spec: Any, where: str = "spec") -> dict:
    """Check a spec's structure (ValueError naming ``where``, the field and the allowed values)."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be an object with 'tag' and 'include', got {type(spec).__name__}")
    if spec.get("tag") not in TAGS:
        raise ValueError(f"{where}['tag'] must be one of {list(TAGS)}, got {str(spec.get('tag'))[:100]!r}")
    include, exclude = spec.get("include"), spec.get("exclude", [])
    for key, entries, minimum in (("include", include, 1), ("exclude", exclude, 0)):
        if not isinstance(entries, list) or not minimum <= len(entries) <= MAX_OBJECTS:
            raise ValueError(f"{where}['{key}'] must be a list of {minimum} to {MAX_OBJECTS} objects, "
                             f"got {str(entries)[:100]}")
    for k, entry in enumerate(include):
        _check_entry(entry, f"{where}['include'][{k}]", len(include), allow_position=True)
    for e, entry in enumerate(exclude):
        _check_entry(entry, f"{where}['exclude'][{e}]", len(include), allow_position=False)
    if "position" in spec:
        pos = spec["position"]
        if (not isinstance(pos, (list, tuple)) or len(pos) != 3 or pos[0] not in RELATIONS
                or not all(not isinstance(i, bool) and isinstance(i, int) and 0 <= i < len(include) for i in pos[1:])):
            raise ValueError(f"{where}['position'] must be [relation, k, j] with relation one of {list(RELATIONS)} "
                             f"and k, j indices into include (< {len(include)}), got {str(pos)[:100]}")
    return spec


def validate_detections(detections: Any, where: str = "detections") -> list[dict]:
    """Check one image's detections (ValueError naming ``where``, the index and the field)."""
    if not isinstance(detections, list) or len(detections) > MAX_DETECTIONS:
        raise ValueError(f"{where} must be a list of at most {MAX_DETECTIONS} detections, got "
                         f"{len(detections) if isinstance(detections, list) else type(detections).__name__}")
    for i, det in enumerate(detections):
        at = f"{where}[{i}]"
        if not isinstance(det, dict):
            raise ValueError(f"{at} must be an object {{label, score, box, color?}}, got {type(det).__name__}")
        if not isinstance(det.get("label"), str) or not 0 < len(det["label"]) <= MAX_LABEL_CHARS:
            raise ValueError(f"{at}['label'] must be a string of 1 to {MAX_LABEL_CHARS} characters")
        if not _is_number(det.get("score")) or not 0 <= det["score"] <= 1:
            raise ValueError(f"{at}['score'] must be a number in [0, 1], got {str(det.get('score'))[:50]}")
        box = det.get("box")
        if (not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box)
                or box[0] > box[2] or box[1] > box[3]):
            raise ValueError(f"{at}['box'] must be [x0, y0, x1, y1] finite numbers with x0 <= x1 and y0 <= y1, "
                             f"got {str(box)[:100]}")
        if det.get("color") is not None and not (isinstance(det["color"], str) and len(det["color"]) <= MAX_LABEL_CHARS):
            raise ValueError(f"{at}['color'] must be a string or null")
    return detections


def box_relations(box_a: list[float], box_b: list[float], margin: float = 0.1) -> set[str]:
    """Relations of box a to box b ([x0, y0, x1, y1], y down): the centre offset a - b is shrunk
    towards 0 by ``margin * (size_a + size_b)`` per axis; if nothing is left, no relation; else
    with the shrunk offset divided by the length of the raw one, x < -0.5: 'left of', x > 0.5:
    'right of', y < -0.5: 'above', y > 0.5: 'below'."""
    offset, shrunk = [], []
    for axis in (0, 1):
        centre_a = (box_a[axis] + box_a[axis + 2]) / 2
        centre_b = (box_b[axis] + box_b[axis + 2]) / 2
        size = (box_a[axis + 2] - box_a[axis]) + (box_b[axis + 2] - box_b[axis])
        delta = centre_a - centre_b
        offset.append(delta)
        shrunk.append(math.copysign(max(abs(delta) - margin * size, 0.0), delta))
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    dx, dy = (v / math.hypot(*offset) for v in shrunk)
    names = (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5))
    return {name for name, holds in names if holds}


def check_spec(spec: dict, detections: list[dict], score_threshold: float = 0.3,
               margin: float = 0.1) -> list[tuple[str, bool]]:
    """Spec (validated) + one image's detections -> [(check name, passed)] in spec order."""
    kept = [d for d in detections if d["score"] >= score_threshold]
    groups = [[d for d in kept if d["label"] == entry["class"]] for entry in spec["include"]]
    results = []
    for k, (entry, found) in enumerate(zip(spec["include"], groups)):
        count = entry.get("count", 1)
        results.append((f"include[{k}] {count} x {entry['class']}", len(found) >= count))
        if "color" in entry:
            coloured = sum(d.get("color") == entry["color"] for d in found)
            results.append((f"include[{k}] color {entry['color']}", coloured >= count))
    pairs = [(k, e["position"][0], e["position"][1]) for k, e in enumerate(spec["include"]) if "position" in e]
    if "position" in spec:
        pairs.append((spec["position"][1], spec["position"][0], spec["position"][2]))
    for k, relation, j in pairs:
        ok = bool(groups[k]) and bool(groups[j]) and all(
            relation in box_relations(a["box"], b["box"], margin)
            for a in groups[k] for b in groups[j] if a is not b)
        results.append((f"include[{k}] {relation} include[{j}]", ok))
    for e, entry in enumerate(spec.get("exclude", [])):
        count = entry.get("count", 1)
        present = sum(d["label"] == entry["class"] for d in kept)
        results.append((f"exclude[{e}] fewer than {count} x {entry['class']}", present < count))
    return results


def spec_score(results: list[tuple[str, bool]], mode: str = "fraction") -> float:
    """Fraction of passed checks (``'fraction'``) or 1.0 if all passed else 0.0 (``'strict'``)."""
    passed = sum(ok for _, ok in results)
    if mode == "strict":
        return float(passed == len(results))
    return passed / len(results)


@REWARDS.register_module()
class StructuredReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata [L specs]) -> [L] float32``
    in [0, 1]: the detector's objects checked against each record's spec (module docstring).

    Args:
        detector: config ``dict(type=...)`` in ``DETECTORS`` (``HTTPDetector``, ``ToyDetector``)
            or a callable ``images -> L lists of detections``.
        mode: ``'fraction'`` (share of checks passed) or ``'strict'`` (all pass: 1, else 0).
        spec_key: metadata key holding the spec (None: the metadata dict is the spec).
        score_threshold: detections below this score are ignored (GenEval: 0.3).
        margin: the position margin of :func:`box_relations` (GenEval: 0.1).
    """

    sends_requests = True  # its detector may be an HTTPDetector

    def __init__(self, detector: Any, mode: str = "fraction", spec_key: str | None = None,
                 score_threshold: float = 0.3, margin: float = 0.1) -> None:
        if mode not in MODES:
            raise ValueError(f"StructuredReward mode must be one of {list(MODES)}, got {mode!r}")
        if spec_key is not None and (not isinstance(spec_key, str) or not spec_key):
            raise ValueError(f"StructuredReward spec_key must be None or a non-empty string, got {spec_key!r}")
        for key, value in (("score_threshold", score_threshold), ("margin", margin)):
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"StructuredReward {key} must be a number in [0, 1], got {value!r}")
        if isinstance(detector, dict):
            detector = build(DETECTORS, detector)
        if not callable(detector):
            raise ValueError(f"StructuredReward detector must be a dict(type=...) naming one of "
                             f"{sorted(DETECTORS.module_dict)} or a callable, got {detector!r}")
        self.detector, self.mode, self.spec_key = detector, mode, spec_key
        self.score_threshold, self.margin = float(score_threshold), float(margin)
        self.last_checks: list[list[tuple[str, bool]]] = []

    def load(self) -> "StructuredReward":
        if callable(getattr(self.detector, "load", None)):
            self.detector.load()
        return self

    def specs(self, metadata: list[dict] | None, count: int) -> list[dict]:
        """The ``count`` validated specs of the metadata (ValueError naming the record)."""
        if metadata is None:
            raise ValueError("StructuredReward needs metadata: one GenEval-style spec per image "
                             "({'tag': ..., 'include': [...]}, e.g. from a jsonl prompt file)")
        specs = []
        for i, meta in enumerate(check_metadata(metadata, count, self.name)):
            where = f"metadata[{i}]" + (f"[{self.spec_key!r}]" if self.spec_key else "")
            specs.append(validate_spec(meta.get(self.spec_key) if self.spec_key else meta, where))
        return specs

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        check_images(images, prompts, self.name)
        specs = self.specs(metadata, len(prompts))
        detections = self.detector(images)
        if not isinstance(detections, list) or len(detections) != len(prompts):
            raise ValueError(f"StructuredReward: the detector must return {len(prompts)} lists of detections, "
                             f"got {str(detections)[:100]}")
        self.last_checks = [check_spec(spec, validate_detections(dets, f"detections of image {i}"),
                                       self.score_threshold, self.margin)
                            for i, (spec, dets) in enumerate(zip(specs, detections))]
        scores = [spec_score(checks, self.mode) for checks in self.last_checks]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def log_values(self) -> dict[str, float]:
        """``reward/structured_all_pass``: share of the last call's images passing every check."""
        if not self.last_checks:
            return {}
        return {"reward/structured_all_pass": sum(spec_score(c, "strict") for c in self.last_checks)
                / len(self.last_checks)}

    def __repr__(self) -> str:
        return (f"StructuredReward(detector={type(self.detector).__name__}, mode={self.mode!r}, "
                f"spec_key={self.spec_key!r}, score_threshold={self.score_threshold:g}, margin={self.margin:g})")
