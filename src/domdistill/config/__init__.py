"""Typed run configuration: the sections (:mod:`.sections`) and how a YAML file becomes one
(:mod:`.loading`)."""

from domdistill.config.loading import (
    apply_overrides, check_raw, config_from_dict, dotted, expand_env, format_validation_error,
    load_config, parse_overrides, read_config_yaml, save_config,
)
from domdistill.config.sections import (
    METHODS, DataConfig, EvaluationConfig, FieldMap, MethodConfig, OutputConfig, RunConfig,
    Section, StudentConfig, TaskType, TeacherConfig, TrainingConfig,
)

__all__ = ["METHODS", "DataConfig", "EvaluationConfig", "FieldMap", "MethodConfig", "OutputConfig",
           "RunConfig", "Section", "StudentConfig", "TaskType", "TeacherConfig", "TrainingConfig",
           "apply_overrides", "check_raw", "config_from_dict", "dotted", "expand_env",
           "format_validation_error", "load_config", "parse_overrides", "read_config_yaml",
           "save_config"]
