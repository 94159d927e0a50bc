"""CPU-sized DDK comparisons: a tiny teacher trained by CPT (cached), then students distilled
from it at equal tokens. Used by ``domdistill demo --method ddk`` and ``bench/ddk_tiny.py``."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from domdistill.config import config_from_dict

DEMO_DATA: dict[str, Any] = {"path": "builtin", "builtin_size": 2000, "max_test_per_domain": 30,
                             "seed": 0}
DEMO_TRAINING: dict[str, Any] = {
    "learning_rate": 3e-3, "batch_size": 16, "max_seq_len": 96, "warmup_ratio": 0.05,
    "schedule": "cosine", "max_grad_norm": 1.0, "weight_decay": 0.1, "cpu_threads": 1,
    "save_total_limit": 1, "logging_steps": 10}
DEMO_TEACHER = {"model": "tiny", "steps": 400, "learning_rate": 3e-3}
DEMO_STUDENT = {"model": "nano", "steps": 240, "interval_steps": 20, "val_per_domain": 40}


def teacher_config(data: dict[str, Any], training: dict[str, Any], preset: str, steps: int,
                   learning_rate: float) -> dict[str, Any]:
    """The CPT run that makes a teacher: a tiny preset trained on the whole pool, no KD."""
    return {"data": data, "student": {"model": preset},
            "method": {"name": "cpt", "val_per_domain": 20, "interval_steps": steps},
            "training": {**training, "max_steps": steps, "learning_rate": learning_rate},
            "evaluation": {"batch_size": 32}}


def ensure_teacher(raw: dict[str, Any], root: Path, progress: bool = False) -> Path:
    """Train the teacher described by ``raw`` into ``root/cpt-<hash>`` once; returns the folder
    of the trained model (reused by later calls with the same settings)."""
    from domdistill.methods import run_config

    key = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
    run = root / f"cpt-{key}"
    model = run / "student"
    if not (model / "config.json").is_file() or not (run / "results.json").is_file():
        cfg = config_from_dict({**raw, "output": {"dir": str(run)}}, source="teacher settings")
        resume = (run / "config.yaml").is_file()
        run_config(cfg, overwrite=not resume, resume=resume, progress=progress)
    return model


def student_config(name: str, data: dict[str, Any], training: dict[str, Any], teacher: Path,
                   preset: str, steps: int, interval: int, val_per_domain: int, out: Path,
                   **method: Any) -> dict[str, Any]:
    """A distillation run: same data, steps and batch for every method (equal sequences)."""
    return {"data": data, "teacher": {"kind": "hf", "model": str(teacher)},
            "student": {"model": preset},
            "method": {"name": name, "interval_steps": interval, "val_per_domain": val_per_domain,
                       **method},
            "training": {**training, "max_steps": steps}, "evaluation": {"batch_size": 32},
            "output": {"dir": str(out / name)}}


def run_demo(out: Path, overwrite: bool = False, methods: tuple[str, ...] = ("kd", "ddk"),
             progress: bool = False) -> dict[str, dict[str, Any]]:
    """Teacher (cached under ``out/teacher``), then each method into ``out/<method>``."""
    from domdistill.methods import run_config

    training = copy.deepcopy(DEMO_TRAINING)
    t = DEMO_TEACHER
    teacher = ensure_teacher(teacher_config(DEMO_DATA, training, t["model"], t["steps"],
                                            t["learning_rate"]), out / "teacher", progress)
    s = DEMO_STUDENT
    runs = {}
    for name in methods:
        raw = student_config(name, DEMO_DATA, training, teacher, s["model"], s["steps"],
                             s["interval_steps"], s["val_per_domain"], out)
        runs[name] = run_config(config_from_dict(raw, source="built-in DDK demo"),
                                overwrite=overwrite, progress=progress)
    return runs
