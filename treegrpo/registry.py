"""All component registries of treegrpo (mmengine ``Registry`` objects, scope ``treegrpo``).

A component class registers itself with ``@REWARDS.register_module()`` and is built from a
config dict such as ``dict(type='JPEGCompressibility', quality=95)`` by :func:`build`.
"""
from __future__ import annotations

from typing import Any

from mmengine.registry import Registry

POLICIES = Registry("policy", scope="treegrpo", locations=["treegrpo.policies"])
KERNELS = Registry("kernel", scope="treegrpo", locations=["treegrpo.kernels"])
SCHEDULES = Registry("schedule", scope="treegrpo", locations=["treegrpo.schedules"])
SAMPLERS = Registry("sampler", scope="treegrpo", locations=["treegrpo.samplers"])
REWARDS = Registry("reward", scope="treegrpo", locations=["treegrpo.rewards"])
ADVANTAGES = Registry("advantage", scope="treegrpo", locations=["treegrpo.advantages"])
LOSSES = Registry("loss", scope="treegrpo", locations=["treegrpo.losses"])
HOOKS = Registry("hook", scope="treegrpo", locations=["treegrpo.hooks"])
DATASETS = Registry("dataset", scope="treegrpo", locations=["treegrpo.datasets"])


def build(registry: Registry, cfg: Any, **default_args: Any) -> Any:
    """Build one component from a config dict, with errors that name the problem and the fix.

    ``cfg`` must be a mapping with a ``type`` key naming a class registered in ``registry``
    (an already built object is returned unchanged).
    """
    if cfg is None or not hasattr(cfg, "keys"):
        if cfg is not None and not isinstance(cfg, (str, int, float, list, tuple)):
            return cfg  # already an object
        raise TypeError(
            f"a {registry.name} config must be a dict with a 'type' key, got {cfg!r}"
        )
    if "type" not in cfg:
        raise KeyError(
            f"the {registry.name} config {dict(cfg)!r} has no 'type' key; "
            f"registered {registry.name} types: {registered_names(registry)}"
        )
    registry.import_from_location()
    type_name = cfg["type"]
    if isinstance(type_name, str) and registry.get(type_name) is None:
        raise KeyError(
            f"unknown {registry.name} type {type_name!r}; registered {registry.name} types: "
            f"{registered_names(registry)}. Register a new one with @<REGISTRY>.register_module() "
            f"from treegrpo.registry and list its module in the config's custom_imports."
        )
    return registry.build(dict(cfg), default_args=default_args or None)


def registered_names(registry: Registry) -> list[str]:
    """Sorted names registered in ``registry`` (after importing its default locations)."""
    registry.import_from_location()
    return sorted(registry.module_dict)
