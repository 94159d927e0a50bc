"""What ``--resume`` checks before it touches a run folder, and the run's identity (``run.json``).

A resume continues *the same run*: the saved config and the new one may differ only in
:data:`RESUMABLE` fields (how calls are sent and paid, where things are, how fast), and the data
must be the same examples (a fingerprint of the pool and test set, so a moved file is fine).
The ledger is the truth about money: a run that has one must find *its* ledger (same id, at
least as many charged calls as the state last recorded), or it stops before a call is paid again.
Accepted changes are written to ``config.yaml`` and listed in ``run.json``'s history.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from domdistill.config import RunConfig, read_config_yaml
from domdistill.errors import ConfigError, RunFolderError
from domdistill.io import read_json
from domdistill.redact import cut
from domdistill.runs import RunDir, read_manifest, write_manifest

# Fields a resume may change: they decide how calls are sent, limited and priced, where files
# are, and speed, never what the run computes. method.budget may change before the last stage.
RESUMABLE = frozenset({
    "method.budget", "teacher.budget_tokens", "teacher.budget_money",
    "teacher.base_url", "teacher.api_key_env", "teacher.concurrency", "teacher.requests_per_minute",
    "teacher.tokens_per_minute", "teacher.timeout_s", "teacher.max_retries", "teacher.max_outage_s",
    "teacher.max_failure_rate", "teacher.retry_base_s", "teacher.retry_max_s",
    "teacher.price_per_1k_input", "teacher.price_per_1k_output", "teacher.shared_cache",
    "teacher.batch_size", "training.cpu_threads", "evaluation.batch_size",
    "data.path", "data.test_path", "output.dir", "output.overwrite", "output.tracking",
})
RESULT_FREE_AFTER_FINISH = RESUMABLE - {"method.budget", "teacher.budget_tokens", "teacher.budget_money"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def data_fingerprint(task: Any) -> str:
    """A hash of the pool and the test set (ids, domains, inputs, answers), in order."""
    h = hashlib.sha256()
    for part in (task.pool, task.test):
        for ex in part:
            h.update("\x1f".join((ex.id, ex.domain, ex.input, str(ex.answer))).encode("utf-8"))
            h.update(b"\x1e")
        h.update(b"\x1d")
    return h.hexdigest()


def config_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted field: (saved value, new value)}`` for every field that differs (fields the
    saved file lacks count as their defaults: an older version wrote it)."""
    defaults = flatten(RunConfig().model_dump(mode="json"))
    old = {**defaults, **flatten(saved)}
    new = flatten(cfg.redacted())
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def _show(value: Any) -> str:
    return cut(repr(value), 60)


def check_resume(run_dir: RunDir, cfg: RunConfig, task: Any, uses_ledger: bool) -> dict[str, Any]:
    """Refuse a resume that would not continue the same run; returns the accepted changes.
    Reads only: nothing in the folder changes here."""
    manifest = read_manifest(run_dir)
    state = read_json(run_dir.state, "the run's state") or {}
    if not run_dir.config.exists() and (manifest or state):
        raise RunFolderError(f"{run_dir.config}: missing, so nothing says which run this folder "
                             "holds; put it back (a copy of the config the run was started with "
                             "will do), or start over with --overwrite")
    saved = read_config_yaml(run_dir.config) if run_dir.config.exists() else {}
    if not isinstance(saved, dict):
        raise RunFolderError(f"{run_dir.config}: damaged (not a mapping); restore it or start over")
    finished = run_dir.results.exists()
    changes = config_changes(saved, cfg)
    allowed = RESULT_FREE_AFTER_FINISH if finished else RESUMABLE
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        lines = [f"{k}: saved {_show(a)}, now {_show(b)}" for k, (a, b) in refused.items()]
        why = ("the run has finished: only settings that do not change its results may differ"
               if finished and set(refused) <= RESUMABLE else
               "these settings decide what the run computes, so the resumed run would not be "
               "the one that was started")
        raise ConfigError(f"--resume of {run_dir.root}: the config differs from the run's "
                          f"config.yaml in {len(refused)} field(s) ({why}): "
                          + "; ".join(lines) + ". Use the saved settings (e.g. "
                          f"`domdistill run {run_dir.config} --resume`), or start a new run in "
                          "another folder.")
    fingerprint = manifest.get("data_fingerprint")
    if fingerprint is not None and fingerprint != data_fingerprint(task):
        raise ConfigError(f"--resume of {run_dir.root}: the data is not the data this run "
                          f"started on (pool {manifest.get('pool_size')} examples then, "
                          f"{len(task.pool)} now, or their content changed); resume with the "
                          "same files, or start a new run", field="data.path")
    if uses_ledger:
        check_ledger(run_dir, manifest, state)
    return {k: list(v) for k, v in changes.items()}


def check_ledger(run_dir: RunDir, manifest: dict[str, Any], state: dict[str, Any]) -> None:
    """The ledger the run paid through is there, is that run's, and lost no charged calls."""
    from domdistill.teachers.ledger import ledger_identity

    expected = manifest.get("ledger_id")
    recorded = state.get("ledger") or {}
    if expected is None and not state.get("stage"):
        return  # a folder from before ledgers had ids, with no stage done: nothing to lose
    advice = ("Resuming without it would pay for its calls again. Put the run's own ledger "
              "back (from a backup), or start over with --overwrite (calls are paid again).")
    try:
        found = ledger_identity(run_dir.ledger)
    except RunFolderError as err:
        done = f" after stage {state['stage']}" if state.get("stage") else ""
        paid = f"{recorded['charged']} charged calls" if recorded.get("charged") else "its calls"
        raise RunFolderError(f"{err}. It is this run's record of {paid}{done}. {advice}") from None
    if expected is not None and found["id"] != expected:
        raise RunFolderError(f"{run_dir.ledger}: not this run's ledger (id {found['id'] or 'none'}"
                             f", the run's is {expected}): it was replaced by another run's. "
                             f"{advice}")
    if found["charged"] < recorded.get("charged", 0) or found["rows"] < recorded.get("rows", 0):
        raise RunFolderError(f"{run_dir.ledger}: holds {found['charged']} charged calls in "
                             f"{found['rows']} rows, but the run recorded {recorded['charged']} in "
                             f"{recorded['rows']} after stage {state.get('stage')}: it was "
                             f"replaced by an older copy or rows were deleted. {advice}")


def start_manifest(run_dir: RunDir, cfg: RunConfig, task: Any, ledger_id: str | None) -> None:
    """``run.json`` of a new run: what identifies it (data fingerprint, ledger id) and its history."""
    write_manifest(run_dir, {"method": cfg.method.name, "created": time.time(),
                             "data_fingerprint": data_fingerprint(task),
                             "pool_size": len(task.pool), "ledger_id": ledger_id,
                             "history": [{"at": time.time(), "action": "run"}]})


def record_resume(run_dir: RunDir, cfg: RunConfig, task: Any, changes: dict[str, Any],
                  ledger_id: str | None) -> None:
    """Add this resume (and the fields it changed) to ``run.json``'s history."""
    manifest = read_manifest(run_dir)
    if not manifest:  # a folder from before run.json: identify it now
        manifest = {"method": cfg.method.name, "created": None, "history": [],
                    "data_fingerprint": data_fingerprint(task), "pool_size": len(task.pool)}
    manifest.setdefault("ledger_id", ledger_id)
    manifest.setdefault("history", []).append({"at": time.time(), "action": "resume",
                                               "changed": changes})
    write_manifest(run_dir, manifest)
