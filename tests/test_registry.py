"""treegrpo.registry.build builds only classes registered in its registry: a dotted ``type``
(``os.system``, ``builtins.eval``, a module path) is never imported or called, at any nesting
level (WeightedSum parts, hooks, datasets)."""
import os
import sys

import pytest

from treegrpo.registry import DATASETS, HOOKS, REWARDS, build, registered_names, resolve_type
from treegrpo.rewards.http import HTTPReward
from treegrpo.rewards.image_stats import JPEGCompressibility


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so a command such as ``touch pwned`` would leave a file here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dotted_type_is_never_imported_or_called(in_tmp):
    with pytest.raises(KeyError, match=r"unknown reward type 'os.system'.*JPEGCompressibility"
                                       r".*custom_imports"):
        build(REWARDS, dict(type="os.system", command="touch pwned"))
    assert not (in_tmp / "pwned").exists()
    with pytest.raises(KeyError, match="unknown reward type 'builtins.eval'"):
        build(REWARDS, dict(type="builtins.eval", source="open('pwned', 'w')"))
    assert not (in_tmp / "pwned").exists()


def test_a_module_path_is_not_imported(in_tmp, monkeypatch):
    """mmengine's Registry.get imports '<scope>.registry' and any 'module.attr': neither may happen."""
    (in_tmp / "evil_plugin").mkdir()
    (in_tmp / "evil_plugin" / "__init__.py").write_text("open('imported', 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    for name in ("evil_plugin.Thing", "evil_plugin.registry.Thing"):
        with pytest.raises(KeyError, match="unknown hook type"):
            build(HOOKS, dict(type=name))
    assert "evil_plugin" not in sys.modules and not (in_tmp / "imported").exists()


def test_class_objects_must_be_registered(in_tmp):
    with pytest.raises(TypeError, match=r"\.system is not a class registered in the reward registry"):
        build(REWARDS, dict(type=os.system, command="touch pwned"))
    assert not (in_tmp / "pwned").exists()

    class Unregistered(JPEGCompressibility):
        pass

    with pytest.raises(TypeError, match="Unregistered.*not a class registered"):
        build(REWARDS, dict(type=Unregistered))
    with pytest.raises(TypeError, match="3 is not a class registered.*type must be a registered name"):
        build(REWARDS, dict(type=3))
    assert isinstance(build(REWARDS, dict(type=JPEGCompressibility, quality=90)), JPEGCompressibility)


def test_scope_prefix_only_for_registered_names():
    assert resolve_type(REWARDS, "treegrpo.HTTPReward") is HTTPReward
    assert resolve_type(REWARDS, "JPEGCompressibility") is JPEGCompressibility
    assert build(REWARDS, dict(type="treegrpo.JPEGCompressibility", quality=80)).quality == 80
    for name in ("treegrpo.rewards.http.HTTPReward", "mmengine.JPEGCompressibility", "treegrpo.",
                 "HTTPReward.__init__", ""):
        with pytest.raises(KeyError, match="unknown reward type"):
            resolve_type(REWARDS, name)
    with pytest.raises(KeyError, match="unknown dataset type"):
        build(DATASETS, dict(type="JPEGCompressibility"))  # registered, but in another registry


def test_nested_parts_go_through_the_same_check(in_tmp):
    bad = dict(type="WeightedSum", weights=[1.0], rewards=[dict(type="os.system", command="touch pwned")])
    with pytest.raises(KeyError, match="unknown reward type 'os.system'"):
        build(REWARDS, bad)
    deeper = dict(type="WeightedSum", weights=[1.0], rewards=[dict(bad)])
    with pytest.raises(KeyError, match="unknown reward type 'os.system'"):
        build(REWARDS, deeper)
    hook = build(HOOKS, dict(type="EvalHook", dataset=dict(type="subprocess.getoutput", cmd="touch pwned")))
    with pytest.raises(KeyError, match="unknown dataset type 'subprocess.getoutput'"):
        hook.before_run(None)
    assert not (in_tmp / "pwned").exists()


def test_mmengine_scope_switch_is_refused():
    with pytest.raises(KeyError, match="_scope_"):
        build(REWARDS, dict(type="JPEGCompressibility", _scope_="mmdet"))


def test_default_args_fill_missing_keys_only():
    reward = build(REWARDS, dict(type="JPEGCompressibility", quality=70), quality=10)
    assert reward.quality == 70
    assert build(REWARDS, dict(type="JPEGCompressibility"), quality=10).quality == 10
    assert "WeightedSum" in registered_names(REWARDS)
