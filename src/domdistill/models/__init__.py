"""Students and teachers as HF models: tiny presets built from config, hub ids, local folders."""

from domdistill.models.loading import load_model_and_tokenizer, load_student, resolve_dtype
from domdistill.models.tiny import TINY_PRESETS, build_tiny_model, create_tiny_model, train_tokenizer

__all__ = ["TINY_PRESETS", "build_tiny_model", "create_tiny_model", "load_model_and_tokenizer",
           "load_student", "resolve_dtype", "train_tokenizer"]
