"""``CommandTrainer``: a command per run (see ``mixopt.worker`` for its environment)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from mixopt import schemas
from mixopt.worker.run import RunContext, RunOutcome

__all__ = ["CommandTrainer"]

log = logging.getLogger("mixopt.worker")


class CommandTrainer:
    """Runs ``command`` for each run (see the module doc for its environment): in ``workdir``
    (default: the current directory when the trainer is made), through ``/bin/sh -c`` if
    ``shell``, else split into arguments with ``shlex`` and run directly."""

    def __init__(
        self, command: str, *, workdir: str | Path | None = None, shell: bool = False
    ) -> None:
        self.command = command
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("the command is empty")
        self.shell = shell
        self.workdir = Path(workdir).resolve() if workdir is not None else Path.cwd()
        if not self.workdir.is_dir():
            raise ValueError(f"--workdir {self.workdir} is not a directory")

    def __call__(self, run: schemas.Run, context: RunContext) -> RunOutcome:
        with tempfile.TemporaryDirectory(prefix=f"mixopt-run-{run.id}-") as scratch:
            metrics_file = Path(scratch) / "metrics.json"
            run_file = Path(scratch) / "run.json"
            run_file.write_text(run.model_dump_json(indent=2))
            env = {
                **os.environ,
                "MIXOPT_RUN_ID": run.id,
                "MIXOPT_EXPERIMENT_ID": run.experiment_id,
                "MIXOPT_RUN_DIR": scratch,
                "MIXOPT_WEIGHTS": json.dumps(run.weights),
                "MIXOPT_RUN_FILE": str(run_file),
                "MIXOPT_METRICS_FILE": str(metrics_file),
                "MIXOPT_URL": context.client.base_url,
            }
            if context.client.token:
                env["MIXOPT_TOKEN"] = context.client.token
            log.info("run %s: %s (in %s)", run.id, self.command, self.workdir)
            try:
                # A session of its own: stopping the run stops everything the command started
                # (a shell's children too), and a terminal's Ctrl-C reaches the worker only.
                process = subprocess.Popen(
                    ["/bin/sh", "-c", self.command] if self.shell else self.argv,
                    env=env,
                    cwd=self.workdir,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            except OSError as exc:
                return RunOutcome.failed(f"could not start {self.argv[0]!r}: {exc}")
            stderr_tail: list[str] = []
            reader = threading.Thread(target=_keep_tail, args=(process, stderr_tail), daemon=True)
            reader.start()
            try:
                while process.poll() is None:
                    if _wait_exit(process, 0.2):
                        break
                    if context.should_stop():
                        _terminate(process)
            finally:
                _terminate(process)  # on KeyboardInterrupt too: never leave the command behind
            reader.join(timeout=10)
            code = process.returncode
            if code == 0:
                metrics, problem = _read_metrics(metrics_file)
                if problem is not None:
                    return RunOutcome.failed(problem)
                return RunOutcome.completed(metrics)
            if context.should_stop():
                return RunOutcome.stopped()
            return RunOutcome.failed(f"exit code {code}: {''.join(stderr_tail)[-2000:].strip()}")


def _read_metrics(path: Path) -> tuple[dict[str, float], str | None]:
    """The command's final metrics, or the reason they cannot be used."""
    if not path.exists():
        return {}, f"the command exited 0 but wrote no metrics to {path.name}"
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        return {}, f"{path.name} is not JSON: {exc}"
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in raw.values()
    ):
        return {}, f"{path.name} must be a JSON object of finite numbers"
    return {str(k): float(v) for k, v in raw.items()}, None


def _keep_tail(process: subprocess.Popen[str], tail: list[str], keep: int = 50) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line)
        del tail[:-keep]


def _wait_exit(process: subprocess.Popen[str], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate(process: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the command's process group, SIGKILL it after ``grace`` seconds."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    if not _wait_exit(process, grace):
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(process.pid, signum)
