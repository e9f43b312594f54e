"""What the method declarations give the rest of the framework: which encoders a scenario
admits, and Hydra's config store.

Every option of a config group that is a schema as it stands is stored here, from the schemas
and the declarations, under the name users select: ``encoder=<name>`` is the encoder's own
config class (``Encoder.config``), ``scenario=<name>`` the scenario's paper settings, and
``data=default``, ``data=lm``, ``device=<name>``, ``logger=<name>`` and ``cache=build`` the
schemas themselves. The YAML files in ``conf/`` are only the presets that change something
(``encoder=mlp_256`` extends ``mlp``), so no option is a bare schema.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from sparsegap.config import (
    DEVICES,
    LOGGERS,
    CacheConfig,
    Config,
    DataConfig,
    DeviceConfig,
    LMDataConfig,
    LoggerConfig,
    ScenarioConfig,
)
from sparsegap.encoders import ENCODERS
from sparsegap.scenarios import SCENARIOS


def encoders_for(scenario: str) -> list[str]:
    """The encoders that apply to ``scenario`` (their ``Encoder.scenarios``), registry order."""
    return [name for name, cls in ENCODERS.items() if scenario in cls.scenarios]


def register_configs() -> None:
    """Store every schema-backed option in Hydra's config store (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)  # the root of conf/config.yaml
    cs.store(group="data", name="default", node=DataConfig)
    cs.store(group="data", name="lm", node=LMDataConfig)
    cs.store(group="cache", name="build", node=CacheConfig)
    for name, cls in ENCODERS.items():
        cs.store(group="encoder", name=name, node=cls.config)
    for scenario in SCENARIOS.values():
        node = ScenarioConfig(name=scenario.name, steps=scenario.steps)
        cs.store(group="scenario", name=scenario.name, node=node)
    for name in DEVICES:
        cs.store(group="device", name=name, node=DeviceConfig(name=name))
    for name in LOGGERS:
        cs.store(group="logger", name=name, node=LoggerConfig(name=name))
