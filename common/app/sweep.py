"""Ablation sweeps (``asr-distill sweep FILE --launcher local|slurm [--dry-run]``).

A sweep file (``configs/sweeps/*.yaml``, schema :class:`SweepConfig`) names a base experiment config, fixed
overrides, and a grid (every combination) and/or a list of runs (each a dict of overrides); every grid point is
combined with every listed run. Each run is an ordinary ``asr-distill fit`` in ``OUT_DIR/RUN_NAME`` with
``--resume``, so a re-launch skips finished runs (``summary.json``) and continues interrupted ones. Every run's config
is validated before anything starts. ``OUT_DIR/sweep.json`` lists the runs and their knob values;
``asr-distill table --sweep OUT_DIR`` makes the ablation table from it.

SLURM: one array job through ``submitit`` (one array task per run, resources from the ``slurm`` section;
``tasks_per_node = gpus_per_node`` so Lightning's SLURM environment starts DDP/FSDP; SIGUSR2 (submitit's pre-timeout
signal) ``signal_delay_s``
before the time limit makes the run checkpoint and requeue, see ``common.training.preemption.PreemptionCheckpoint``).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from common.io import atomic_write_json, is_complete


@dataclass
class SlurmConfig:
    """Per-run resources of the SLURM array job."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = 1
    """Nodes per run (multi-node DDP/FSDP)."""
    gpus_per_node: int = 8
    """GPUs per node = tasks per node (one process per GPU)."""
    cpus_per_task: int = 8
    mem_gb: int = 0
    """Memory per node in GB (0: the partition's default)."""
    time_min: int = 1440
    """Time limit per job; preempted/timed-out runs requeue and resume."""
    array_parallelism: int = 16
    """At most this many runs at once."""
    signal_delay_s: int = 120
    """SIGUSR2 this long before the limit (submitit's signal): the run checkpoints and requeues."""
    setup: list[str] = field(default_factory=list)
    """Shell lines before the run (module load ..., source .venv/bin/activate)."""


@dataclass
class SweepConfig:
    """A base experiment plus a grid / list of overrides."""

    base: str
    """The experiment config every run starts from (a ``method:`` config)."""
    out_dir: str
    """Sweep directory: one run directory per run, plus sweep.json."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted key -> values; every combination is a run."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    """Explicit runs (dicts of dotted key -> value), each combined with every grid point."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides for every run."""
    name: str = "sweep"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        for k, v in self.grid.items():
            if not v:
                raise ValueError(f"grid.{k}: needs at least one value")
        if not _SAFE_NAME.fullmatch(self.name):
            raise ValueError(
                f"name: {self.name!r} may hold only letters, digits and . _ + - (it becomes a SLURM job name)"
            )
        _no_control("base", self.base)
        _no_control("out_dir", self.out_dir)
        for i, o in enumerate(self.overrides):
            _no_control(f"overrides[{i}]", o)
        for k, values in self.grid.items():
            _no_control("grid key", k)
            for v in values:
                _no_control(f"grid.{k}", v)
        for i, run in enumerate(self.runs):
            for k, v in run.items():
                _no_control(f"runs[{i}].{k}", v)
        for key in ("partition", "account", "qos", "constraint"):
            _no_control(f"slurm.{key}", getattr(self.slurm, key))
        for i, line in enumerate(self.slurm.setup):
            _no_control(f"slurm.setup[{i}]", line)


_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]+")


def _no_control(key: str, value: Any) -> None:
    """Strings that reach a shell script (sbatch lines, printed commands) hold no control characters: a newline in a
    ``#SBATCH`` comment or a run name becomes a line the shell executes."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, str):
            bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
            if bad is not None:
                raise ValueError(f"{key}: {v!r} holds a control character ({bad!r})")


@dataclass
class SweepRun:
    name: str
    run_dir: str
    values: dict[str, Any]
    overrides: list[str]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _short(key: str, all_keys: list[str]) -> str:
    last = key.split(".")[-1]
    clash = sum(k.split(".")[-1] == last for k in all_keys) > 1
    return key.replace(".", "_") if clash else last


def expand(cfg: SweepConfig) -> list[SweepRun]:
    """Every run of the sweep, in a stable order, with unique names built from its knob values."""
    keys = list(cfg.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(cfg.grid[k] for k in keys))] or [{}]
    listed = cfg.runs or [{}]
    all_keys = list(dict.fromkeys(keys + [k for r in listed for k in r]))
    runs, seen = [], set()
    for point in points:
        for extra in listed:
            values = {**point, **extra}
            name = "_".join(f"{_short(k, all_keys)}-{_fmt(v)}" for k, v in values.items()) or "base"
            name = name.replace("/", "-").replace("[", "").replace("]", "").replace(",", "-")
            if name in seen:
                raise ValueError(f"sweep {cfg.name}: two runs would share the name {name!r}")
            seen.add(name)
            run_dir = str(Path(cfg.out_dir) / name)
            overrides = list(cfg.overrides) + [f"{k}={_fmt(v)}" for k, v in values.items()] + [f"run_dir={run_dir}"]
            runs.append(SweepRun(name, run_dir, values, overrides))
    return runs


def validate(cfg: SweepConfig, runs: list[SweepRun], extra: list[str] = ()) -> None:
    """Load every run's config through its schema: an unknown key or a bad value stops the sweep naming the run."""
    from common.app.experiment import load_experiment
    from common.config import ConfigError

    if not Path(cfg.base).is_file():
        raise FileNotFoundError(f"sweep {cfg.name}: base config {cfg.base} not found")
    for r in runs:
        try:
            load_experiment(cfg.base, r.overrides + list(extra))
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"sweep {cfg.name}, run {r.name}: {err}") from None


def fit_command(cfg: SweepConfig, run: SweepRun, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "common.app.cli", "fit", "-c", cfg.base, *run.overrides, *extra, "--resume"]


def write_index(cfg: SweepConfig, runs: list[SweepRun], status: dict[str, str]) -> Path:
    out = Path(cfg.out_dir) / "sweep.json"
    atomic_write_json(
        out,
        {
            "name": cfg.name,
            "base": cfg.base,
            "grid": cfg.grid,
            "overrides": cfg.overrides,
            "runs": [
                {
                    "name": r.name,
                    "run_dir": r.run_dir,
                    "values": r.values,
                    "overrides": r.overrides,
                    "status": status.get(r.name, "pending"),
                }
                for r in runs
            ],
        },
    )
    return out


def run_local(cfg: SweepConfig, dry_run: bool = False, log=print) -> dict[str, str]:
    """Run the sweep here, one run after another (each in a fresh process); finished runs are skipped."""
    runs = expand(cfg)
    validate(cfg, runs)
    status: dict[str, str] = {}
    for i, r in enumerate(runs, 1):
        cmd = fit_command(cfg, r)
        if is_complete(Path(r.run_dir)):
            status[r.name] = "done"
            log(f"[{i}/{len(runs)}] {r.name}: finished, skipped")
            continue
        if dry_run:
            status[r.name] = "would run"
            log(f"[{i}/{len(runs)}] {r.name}: would run: {shlex.join(cmd[1:])}")
            continue
        log(f"[{i}/{len(runs)}] {r.name}: running")
        write_index(cfg, runs, status)
        proc = subprocess.run(cmd, cwd=Path.cwd())
        status[r.name] = (
            "done" if proc.returncode == 0 and is_complete(Path(r.run_dir)) else f"failed (exit {proc.returncode})"
        )
        log(f"[{i}/{len(runs)}] {r.name}: {status[r.name]}")
    if not dry_run:
        write_index(cfg, runs, status)
    return status


class FitJob:
    """One sweep run as a submitit job: ``asr-distill fit ... --resume`` in the job's own process. On submitit's
    timeout/preemption signal it is requeued with the same arguments and resumes from ``last.ckpt``."""

    def __init__(self, base: str, overrides: list[str]) -> None:
        self.base, self.overrides = base, list(overrides)

    def __call__(self) -> int:
        from common.app.experiment import fit_experiment

        fit_experiment(self.base, self.overrides, resume=True)  # a preemption raises; submitit requeues (checkpoint)
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any):  # submitit.helpers.Checkpointable protocol
        import submitit

        return submitit.helpers.DelayedSubmission(FitJob(self.base, self.overrides))


def slurm_parameters(cfg: SweepConfig) -> dict[str, Any]:
    s = cfg.slurm
    params: dict[str, Any] = dict(
        job_name=f"asr-distill-{cfg.name}",
        time=s.time_min,
        nodes=s.nodes,
        ntasks_per_node=s.gpus_per_node,
        gpus_per_node=s.gpus_per_node,
        cpus_per_task=s.cpus_per_task,
        signal_delay_s=s.signal_delay_s,
        array_parallelism=s.array_parallelism,
        setup=list(s.setup),
    )
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.mem_gb:
        params["mem"] = f"{s.mem_gb}GB"
    return params


def slurm_overrides(cfg: SweepConfig) -> list[str]:
    """What every run gets under SLURM: one process per GPU on every node (Lightning reads SLURM's variables)."""
    return [
        "trainer.accelerator=gpu",
        f"trainer.devices={cfg.slurm.gpus_per_node}",
        f"trainer.num_nodes={cfg.slurm.nodes}",
    ]


def submitit_folder(cfg: SweepConfig) -> Path:
    """The folder submitit's executor gets (it makes it absolute, as here)."""
    return (Path(cfg.out_dir) / ".submitit").expanduser().absolute()


def sbatch_script(cfg: SweepConfig, n_runs: int) -> str:
    """The sbatch file submitit submits for the array, built as submitit's ``SlurmExecutor`` builds it (same folder,
    same quoted command, same parameters) so that --dry-run prints what would be submitted; no SLURM needed."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = submitit_folder(cfg)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=n_runs, **slurm_parameters(cfg))


def run_slurm(cfg: SweepConfig, dry_run: bool = False, log=print) -> dict[str, str]:
    """Submit the unfinished runs as one SLURM array job (submitit)."""
    runs = expand(cfg)
    extra = slurm_overrides(cfg)
    validate(cfg, runs, extra)
    todo = [r for r in runs if not is_complete(Path(r.run_dir))]
    status = {r.name: "done" for r in runs if r not in todo}
    for r in todo:
        log(f"{r.name}: {shlex.join(fit_command(cfg, r, extra)[1:])}")
    if dry_run or not todo:
        if todo:
            log(f"--- sbatch script (array of {len(todo)} runs) ---\n{sbatch_script(cfg, len(todo))}")
        status.update({r.name: "would submit" for r in todo})
        return status
    import submitit

    ex = submitit.AutoExecutor(folder=submitit_folder(cfg), cluster="slurm")
    p = slurm_parameters(cfg)
    ex.update_parameters(
        name=p.pop("job_name"),
        timeout_min=p.pop("time"),
        tasks_per_node=p.pop("ntasks_per_node"),
        slurm_array_parallelism=p.pop("array_parallelism"),
        slurm_signal_delay_s=p.pop("signal_delay_s"),
        slurm_setup=p.pop("setup"),
        **{f"slurm_{k}": v for k, v in p.items()},
    )
    with ex.batch():
        jobs = [ex.submit(FitJob(cfg.base, r.overrides + extra)) for r in todo]
    for r, j in zip(todo, jobs):
        status[r.name] = f"submitted {j.job_id}"
        log(f"{r.name}: submitted as {j.job_id}")
    write_index(cfg, runs, status)
    return status


def sweep_rows(sweep_dir: str | Path, n_boot: int = 1000, seed: int = 0):
    """Table rows for every finished run of a sweep (knob values as columns); unfinished runs are listed as such. A run
    directory written relative to the sweep's working directory is also found from elsewhere (``out_dir/NAME``)."""

    from common.app.table import Row, run_row

    index = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    rows = []
    for r in index["runs"]:
        extra = {k.split(".")[-1]: _fmt(v) for k, v in r["values"].items()}
        rd = Path(r["run_dir"])
        if not rd.is_absolute() and not rd.exists():
            rd = Path(sweep_dir) / rd.name
        if is_complete(rd):
            row = run_row(rd, r["name"], n_boot, seed)
            row.extra = extra
        else:
            row = Row(r["name"] + " (not finished)", extra=extra)
        rows.append(row)
    return rows
