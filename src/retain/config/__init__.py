"""One YAML file configures a run; ``--set section.key=value`` overrides it.

The file is validated by the pydantic models in :mod:`retain.config.schema`. Every
section has defaults, so an empty file (or none at all) is the recommended recipe.
Mistakes come back as one :class:`~retain.errors.ConfigError` that names the file, the
line, the dotted field and a fix, never as a pydantic dump.

Typical use::

    cfg = load_config("retain.yaml", overrides=["train.lr=5e-5", "method=[lora,replay]"])
    print(dump_config(cfg))
"""

from retain.config.guards import ForgettingGuardConfig, GuardsConfig, LossGuardConfig, SmokeGuardConfig
from retain.config.loading import apply_overrides, dump_config, load_config
from retain.config.messages import OVERRIDE_SOURCE
from retain.config.methods import LoraConfig, MethodConfig
from retain.config.reference import config_reference_markdown
from retain.config.schema import DataConfig, ModelConfig, OutputConfig, ProbesConfig, RetainConfig, TrainConfig
from retain.config.walk import dotted_fields

__all__ = [
    "OVERRIDE_SOURCE",
    "DataConfig",
    "ForgettingGuardConfig",
    "GuardsConfig",
    "LoraConfig",
    "LossGuardConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "ProbesConfig",
    "RetainConfig",
    "SmokeGuardConfig",
    "TrainConfig",
    "apply_overrides",
    "config_reference_markdown",
    "dotted_fields",
    "dump_config",
    "load_config",
]
