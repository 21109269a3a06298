"""One default per setting: every key of every shipped config maps to a typed field (jaxpetct/config.py), or for the
open model sections to a field of the model's own config; what a user gets wrong is a one-line ConfigError."""
import dataclasses
import glob
import os
import re
import runpy
import typing

import pytest

from jaxpetct import config
from jaxpetct.errors import ConfigError
from jaxpetct.models import factory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


def undeclared(section, cls=config.Config, where=""):
    """Every key of `section` that no typed field declares (open model sections: the model config's fields)."""
    hints = typing.get_type_hints(cls)
    for k, v in section.items():
        key = where + k
        if k not in hints:
            yield key
        elif key in config.OPEN:
            yield from (f"{key}.{kk}" for kk in v if kk not in factory.SECTIONS[k]())
        elif dataclasses.is_dataclass(hints[k]):
            yield from undeclared(v, hints[k], key + ".")
        elif typing.get_origin(hints[k]) is dict:  # stages: any name -> Stage
            for name, entry in v.items():
                yield from undeclared(entry, typing.get_args(hints[k])[1], f"{key}.{name}.")


def leaves(section):
    return sum((leaves(v) if hasattr(v, "items") else 1 for v in section.values()), 0)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_key_of_every_config_maps_to_a_typed_field(path):
    cfg = runpy.run_path(path)["get_config"]()
    assert leaves(cfg) > 150
    assert list(undeclared(cfg)) == []
    typed = config.typed(cfg)
    assert isinstance(typed, config.Config) and all(isinstance(s, config.Stage) for s in typed.stages.values())
    factory.check(cfg.model)


def test_the_walker_finds_an_undeclared_key_at_every_depth():
    cfg = config.base_config()
    cfg.stages.lora.nosuch = 1
    cfg.model.encoder.nosuch = 2
    cfg.data.augment.nosuch = 3
    cfg.nosuch = 4
    assert sorted(undeclared(cfg)) == ["data.augment.nosuch", "model.encoder.nosuch", "nosuch", "stages.lora.nosuch"]


def test_the_default_config_is_the_dataclasses_defaults():
    cfg = config.base_config()
    assert config.typed(cfg) == config.Config()
    assert config.typed(config.to_configdict(config.typed(cfg))) == config.Config()  # round trip
    assert cfg.stages.align.warmup_fraction == config.Stage.warmup_fraction  # one home for a stage default
    assert config.stage(5, peak_lr=1e-3).to_dict() == dataclasses.asdict(config.Stage(steps=5, peak_lr=1e-3))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.stages.lora.__setattr__("nosuch", 1), r"^stages\.lora\.nosuch: no such setting"),
    (lambda c: c.data.__setattr__("workers", 4), r"^data\.workers: no such setting"),
    (lambda c: c.__setattr__("optimizer", "adam"), r"^optimizer: no such setting"),
    (lambda c: c.stages.__setattr__("toy", {"steps": 3}), r"^stages\.toy: .*peak_lr"),
    (lambda c: c.stages.lora.__setattr__("steps", None), r"^stages\.lora\.steps: want int"),
])
def test_a_bad_key_or_value_is_one_line_naming_it(change, message):
    cfg = config.base_config()
    change(cfg)
    with pytest.raises(ConfigError, match=message) as e:
        config.typed(cfg)
    assert "\n" not in str(e.value)


def test_an_unknown_model_key_names_its_section():
    cfg = config.base_config()
    cfg.model.projector.pool_size = 2
    with pytest.raises(ConfigError, match=r"^projector\.pool_size|^model\.projector\.pool_size"):
        config.typed(cfg)
    cfg = config.base_config()
    cfg.model.decoder.num_layer = 2  # open section: the decoder config's fields
    with pytest.raises(ConfigError, match=r"^model\.decoder\.num_layer: no such setting"):
        factory.check(cfg.model)


def test_no_config_default_is_written_again_where_it_is_read():
    """`cfg....get("key", default)` would be a second home for a default: the typed section is the one."""
    pattern = re.compile(r"cfg[\]\[\w.\"']*\.get\([^,()]+,")
    hits = []
    for path in glob.glob(os.path.join(ROOT, "jaxpetct", "**", "*.py"), recursive=True) + [os.path.join(ROOT, "launch.py")]:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            if pattern.search(line):
                hits.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not hits, hits


def test_resolving_fills_what_a_section_leaves_out_from_its_one_default():
    import ml_collections

    from jaxpetct.jobs import resolve_config

    cfg = config.base_config()
    cfg.stages.toy = ml_collections.ConfigDict(dict(steps=3, peak_lr=1e-3))  # written by hand, not with stage()
    resolved = resolve_config(cfg)
    assert resolved.stages.toy.warmup_fraction == config.Stage.warmup_fraction
    assert resolved.stages.toy.to_dict() == dataclasses.asdict(config.Stage(steps=3, peak_lr=1e-3))
    assert resolved.to_dict() == {**cfg.to_dict(), "stages": resolved.stages.to_dict()}
