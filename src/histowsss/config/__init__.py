"""Typed configuration: one pydantic model per pipeline step, loaded from YAML with CLI overrides.

Unknown keys are errors that name the key. The resolved config is saved into the run folder. The modules follow the
pipeline: ``base`` (the strict base model, shared checks), ``data`` (data, points), ``cam`` (backbone, train_cam,
make_cam, eval_cam), ``irn`` (ir_label, train_irn, sem_seg, ins_seg), ``seg`` (train_seg, eval_seg), ``run`` (the
whole config, step hashes, file fingerprints) and ``loading`` (YAML, overrides, builtin configs). Everything is
importable from ``histowsss.config``.
"""

from histowsss.config.base import (ConfigError, Strict, check_model_kwargs, check_normalisation, check_not_hub,
                                   yaml_floats)
from histowsss.config.cam import (RPNET_OPTIONS, AugmentConfig, BackboneConfig, EvalCamConfig, MakeCamConfig,
                                  TrainCamConfig)
from histowsss.config.data import (ClassMap, DataConfig, PatchConfig, PointsConfig, check_stain_reference,
                                   data_split_leaks)
from histowsss.config.irn import InsSegConfig, IrLabelConfig, SemSegConfig, TrainIrnConfig
from histowsss.config.loading import (BUILTIN_CONFIGS, apply_overrides, builtin_config_path, dump_config, load_config,
                                      parse_override, validate_config)
from histowsss.config.run import (HASH_EXEMPT, LATE_SECTIONS, RunConfig, background_only_settings,
                                  split_leaks, step_split_leaks)
from histowsss.config.seg import EvalSegConfig, TrainSegConfig

__all__ = ["BUILTIN_CONFIGS", "HASH_EXEMPT", "LATE_SECTIONS", "RPNET_OPTIONS", "AugmentConfig", "BackboneConfig",
           "ClassMap", "ConfigError", "DataConfig", "EvalCamConfig", "EvalSegConfig", "InsSegConfig", "IrLabelConfig",
           "MakeCamConfig", "PatchConfig", "PointsConfig", "RunConfig", "SemSegConfig", "Strict", "TrainCamConfig",
           "TrainIrnConfig", "TrainSegConfig", "apply_overrides", "background_only_settings",
           "builtin_config_path", "check_model_kwargs", "check_normalisation", "check_not_hub", "check_stain_reference",
           "data_split_leaks", "dump_config", "load_config", "parse_override", "split_leaks", "step_split_leaks",
           "validate_config", "yaml_floats"]
