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
# Parts of rewards: OCRReward's text readers and StructuredReward's object detectors.
OCR_ENGINES = Registry("ocr_engine", scope="treegrpo", locations=["treegrpo.rewards"])
DETECTORS = Registry("detector", scope="treegrpo", locations=["treegrpo.rewards"])


PLUGIN_HINT = ("register a plugin with @<REGISTRY>.register_module() (REGISTRY from treegrpo.registry) in "
               "your own module and list that module in the config's custom_imports, e.g. "
               "custom_imports = dict(imports=['my_rewards'], allow_failed_imports=False)")


def resolve_type(registry: Registry, type_: Any) -> type:
    """The registered class a config's ``type`` names, and nothing else.

    ``type_`` is a name registered in ``registry`` (``'JPEGCompressibility'``, or with the scope
    prefix ``'treegrpo.JPEGCompressibility'``) or one of its registered classes. Unlike mmengine's
    ``Registry.get``, a dotted path (``'os.system'``) is never imported: any other value raises a
    KeyError / TypeError that lists the registered names and says how to register a plugin.
    """
    registry.import_from_location()
    registered = registry.module_dict
    if isinstance(type_, str):
        name = type_
        if name not in registered and name.startswith(f"{registry.scope}."):
            name = name[len(registry.scope) + 1:]
        if name in registered:
            return registered[name]
        raise KeyError(
            f"unknown {registry.name} type {type_!r} (only names registered in the {registry.name} "
            f"registry are built; dotted import paths are not followed); registered {registry.name} "
            f"types: {sorted(registered)}. To add one, {PLUGIN_HINT}"
        )
    if isinstance(type_, type) and any(type_ is cls for cls in registered.values()):
        return type_
    raise TypeError(
        f"{describe(type_)} is not a class registered in the {registry.name} registry: a {registry.name} "
        f"type must be a registered name or class, one of {sorted(registered)}; {PLUGIN_HINT}"
    )


def describe(value: Any) -> str:
    """'module.Name' for a class or function, repr for anything else (for error messages)."""
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(value, '__module__', None) or '?'}.{qualname}"
    return repr(value)


def build(registry: Registry, cfg: Any, **default_args: Any) -> Any:
    """Build one component from a config dict, with errors that name the problem and the fix.

    ``cfg`` must be a mapping with a ``type`` key naming a class registered in ``registry``
    (:func:`resolve_type`); the other keys, then ``default_args`` for keys it lacks, are the
    class's arguments. An already built object is returned unchanged. Components that build
    their own parts (WeightedSum, EvalHook) build them with this function too.
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
    if "_scope_" in cfg:
        raise KeyError(
            f"the {registry.name} config {dict(cfg)!r} sets '_scope_': treegrpo builds only from its own "
            f"registries; remove the key ({PLUGIN_HINT})"
        )
    args = {key: value for key, value in dict(cfg).items() if key != "type"}
    for key, value in default_args.items():
        args.setdefault(key, value)
    cls = resolve_type(registry, cfg["type"])
    return cls(**args)


def registered_names(registry: Registry) -> list[str]:
    """Sorted names registered in ``registry`` (after importing its default locations)."""
    registry.import_from_location()
    return sorted(registry.module_dict)
