"""``make demo`` / ``asr-distill demo``: both methods end to end on the embedded default, on a CPU.

The papers' premise in miniature: a teacher much stronger than the student where it teaches, a student with few
transcripts, and audio without transcripts that only the teacher can label. Stages (``configs/demo/``; each is a run
directory under ``--out`` and is reused when finished, so a second run only rebuilds the tables):
 1. corpus: English espeak-ng speech, 1300 train / 100 dev / 300 test utterances (cached by its arguments; texts
    disjoint across them), the train pool split (:data:`SPLITS`, disjoint by id and text) into 400 labelled
    utterances, 250 audio-only utterances for teacher labels (TD, ASKD pseudo-labels), 250 audio-only utterances for
    OPD and 400 for the teacher alone; ``en_ood``, 300 utterances in accents, voices, rates, pitches, words and
    sentence styles that no other part has (configs/demo/synth_ood.yaml: the ASKD students' out-of-domain set); plus the
    40 real English clips of ``../shared/data/real_speech`` when present. ``en_dev`` is for choices (the OPD
    learning-rate sweep, configs/sweeps/demo_opd.yaml); the tables read ``en_test``, ``en_ood`` and ``real_en``;
 2. teacher: the bundled real Whisper tiny.en fine-tuned on its own part with its transcripts (as Qwen3-ASR saw far
    more transcribed audio than Ark, and none of the students' data), scored in-domain and on the real clips, exported
    as a Hugging Face directory;
 3. teacher cache: its transcripts on the TD part (TD's labels);
 4. Ark-ASR: Ark-Base (SFT on the labelled part), + TD, + OPD, + TD + OPD, with the adapted teacher, and the two
    controls of OPD (same steps, lr and batch, no teacher): self-training on Ark-Base's own transcripts of the OPD
    audio, and more SFT on the labelled part;
 5. ASKD-Whisper: 3-of-4-decoder-layer students of the teacher, CE on the labelled part's references for ~2.4 epochs
    (the frozen encoder's states computed once per clip and process, shared by the teacher and the three students:
    ``common.teachers.encoder_cache``) - CE only, Distil-Whisper-style loss, ASKD; latency. The criteria, written
    before the run (docs/RESULTS.md#demo-criteria): ASKD - CE only < 0 on en_ood (out of domain; real_en beside it)
    and ASKD - Distil-Whisper-style not significantly > 0 on en_test;
 6. ``results.json`` (rows with 95 % bootstrap intervals, paired comparisons, OPD diagnostics, timings), rendered to
    ``results.md`` and ``results.tex``.

This is an entry point like ``common.app.cli``: it reaches both methods through the registry (``common.registry``).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.io import atomic_write_json, atomic_write_text, is_complete
from common.paths import default_corpus_dir, shared_real_speech

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"


class _Stages:
    def __init__(self, log: Callable[[str], None], precision: str = "32-true") -> None:
        self.log, self.timings, self.precision = log, {}, precision

    def fit(self, config: str, overrides: list[str]) -> dict:
        """One training stage (``configs/demo/<config>``) at the demo's precision."""
        return _fit(config, [*overrides, f"trainer.precision={self.precision}"])

    def run(self, name: str, done: bool, fn: Callable[[], object]) -> None:
        if done:
            self.log(f"[demo] {name}: finished earlier, reused")
            return
        self.log(f"[demo] {name} ...")
        t0 = time.time()
        fn()
        self.timings[name] = round(time.time() - t0, 1)
        self.log(f"[demo] {name}: done in {self.timings[name]:.0f} s")


def _fit(config: str, overrides: list[str]) -> dict:
    from common.app.experiment import fit_experiment

    return fit_experiment(CONFIGS / config, overrides, resume=True)


ASKD_LAYERS = 3  # the demo's ASKD students: 3 of the teacher's 4 decoder layers (configs/demo/askd_*.yaml)


def _latency(teacher_path: str, test_manifest: str, precision: str = "32-true") -> dict:
    """The teacher (4 decoder layers) vs its 3-layer student: batch 1, greedy, 32 tokens, on the first test clip, at
    the demo's precision."""
    import torch

    from common import registry
    from common.data.datamodule import cut_audio
    from common.data.manifests import load_manifest
    from common.latency import measure
    from common.training.precision import autocast_for
    from common.whisper import load_whisper

    teacher, proc = load_whisper(teacher_path)
    student = registry.get("askd_whisper").build_student(teacher, ASKD_LAYERS).eval()
    cut = next(iter(load_manifest(test_manifest)[0]))
    feats = proc.feature_extractor(cut_audio(cut), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad(), autocast_for(precision):
        r = measure(teacher.eval(), student, feats, n_tokens=32, repeats=3)
    return {
        **r,
        "precision": precision,
        "ratio": r["teacher"] / r["student"],
        "decode_ratio": r["dec_teacher"] / r["dec_student"],
        "audio_seconds": cut.duration,
        "threads": torch.get_num_threads(),
    }


def _export_teacher(run_dir: Path, out: Path) -> None:
    """The adapted teacher's final checkpoint as a Hugging Face Whisper directory, written whole or not at all."""
    from common import registry

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    registry.get("askd_whisper").export(run_dir / "checkpoints" / "last.ckpt", tmp)
    tmp.rename(out)


# the train pool's parts: (name, rows of en_train, audio only)
SPLITS = [
    ("en_labelled", slice(0, 400), False),  # Ark-Base SFT
    ("en_audio_td", slice(400, 650), True),  # teacher transcripts: TD
    ("en_audio_opd", slice(650, 900), True),  # OPD rollouts, and the self-training control
    ("en_teacher", slice(900, 1300), False),  # the teacher's adaptation alone: it never sees the students' data
]


# run directory -> the system names of results.json (scripts read these names)
SYSTEMS = {
    "askd_whisper": {"askd_ce_only": "CE only", "askd_distil_whisper": "Distil-Whisper-style", "askd_askd": "ASKD"},
    "ark_asr": {
        "ark_base_sft": "Ark-Base",
        "ark_base_td": "Ark-Base + TD",
        "ark_base_opd": "Ark-Base + OPD",
        "ark_base_td_opd": "Ark-Base + TD + OPD",
        "ark_base_self": "Ark-Base + self-training",
        "ark_base_sft_more": "Ark-Base + more SFT",
    },
}
# (method, a, b): each stage against its predecessor, each ASKD student against the teacher and its baselines
PAIRS = [
    ("ark_asr", "Ark-Base + TD", "Ark-Base"),
    ("ark_asr", "Ark-Base + OPD", "Ark-Base"),
    ("ark_asr", "Ark-Base + TD + OPD", "Ark-Base + TD"),
    ("ark_asr", "Ark-Base", "teacher"),
    # the controls: what part of OPD's gain is the teacher's, not more steps on new (or the same) audio
    ("ark_asr", "Ark-Base + self-training", "Ark-Base"),
    ("ark_asr", "Ark-Base + more SFT", "Ark-Base"),
    ("ark_asr", "Ark-Base + OPD", "Ark-Base + self-training"),
    ("ark_asr", "Ark-Base + OPD", "Ark-Base + more SFT"),
    ("askd_whisper", "ASKD", "CE only"),
    ("askd_whisper", "ASKD", "Distil-Whisper-style"),
    ("askd_whisper", "CE only", "teacher"),
    ("askd_whisper", "Distil-Whisper-style", "teacher"),
    ("askd_whisper", "ASKD", "teacher"),
]


def _opd_diagnostics(run_dir: Path) -> dict:
    """VUSS (mean, min, max over the logged steps), overlap |S ∩ K| / k and teacher mass on S ∩ K (means) of an OPD
    run; empty when the run has no TensorBoard log."""
    from common.runs import RunError, read_scalars

    try:
        sc = read_scalars(run_dir, "train/")
    except RunError:
        return {}
    keys = ("vuss", "overlap_ratio", "teacher_mass_overlap", "opd_loss", "rollout_len", "empty_rollouts")
    vals = {k: [v for _, v in sc.get(f"train/{k}", [])] for k in keys}
    if not vals["vuss"]:
        return {}
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    kl, q = vals["opd_loss"], max(1, len(vals["opd_loss"]) // 5)
    return {
        "vuss_mean": mean(vals["vuss"]),
        "vuss_min": round(min(vals["vuss"]), 4),
        "vuss_max": round(max(vals["vuss"]), 4),
        "overlap_ratio_mean": mean(vals["overlap_ratio"]),
        "teacher_mass_overlap_mean": mean(vals["teacher_mass_overlap"]),
        "kl_first_fifth": mean(kl[:q]),  # the per-position KL toward the teacher at the start and end of the run
        "kl_last_fifth": mean(kl[-q:]),
        "rollout_len_mean": mean(vals["rollout_len"]),
        "empty_rollouts_mean": mean(vals["empty_rollouts"]),
        "steps_logged": len(vals["vuss"]),
    }


SWEEP = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "demo_opd.yaml"


def opd_selection(out: Path) -> dict:
    """How the demo's OPD learning rate was chosen: the value its OPD run trained with, and - when the dev sweep
    (configs/sweeps/demo_opd.yaml, scored on en_dev, never on a test set) has run beside the demo - each point's dev
    error rate, the point it selects (the lowest) and whether the demo uses it."""
    from omegaconf import OmegaConf

    from common.app.sweep import SweepConfig, sweep_rows
    from common.config import load
    from common.runs import RunError

    cfg_file = out / "ark_base_opd" / "config.yaml"  # the config the OPD run saved: the value it trained with
    used = float(OmegaConf.load(cfg_file).optim.lr) if cfg_file.is_file() else None
    res: dict[str, Any] = {"opd_lr": used, "sweep": str(SWEEP.relative_to(SWEEP.parents[2])), "selected_on": "en_dev"}
    sweep_dir = Path(load(SweepConfig, SWEEP).out_dir)
    if not (sweep_dir / "sweep.json").is_file():
        sweep_dir = out.parent / "sweeps" / sweep_dir.name  # beside a demo written elsewhere than runs/demo
    try:
        rows = sweep_rows(sweep_dir)
    except (OSError, RunError):
        return {**res, "points": [], "note": f"no dev sweep found in {sweep_dir}"}
    points = []
    for r in rows:
        cell = next(iter(r.cells.values()), None)  # the sweep scores one set: en_dev
        points.append({"lr": float(r.extra["lr"]), "dev_error_rate": None if cell is None else round(cell.rate, 3)})
    done = [p for p in points if p["dev_error_rate"] is not None]
    best = min(done, key=lambda p: p["dev_error_rate"])["lr"] if done else None
    return {
        **res,
        "points": points,
        "complete": len(done) == len(points),
        "dev_best_lr": best,
        "uses_dev_best": best is not None and used is not None and abs(best - used) <= 1e-12 * best,
    }


def demo_results(out: Path, teacher_dir: Path, timings: dict, seeds: int = 1) -> dict:
    """The machine-readable result of the demo (``results.json``): every system's error rate per test set with its
    95 % bootstrap interval, the paired comparisons (a - b in points, paired 95 % interval), the OPD diagnostics of
    OPD from Ark-Base and from Ark-Base + TD (the paper's Table 2 comparison), timings and the environment."""

    import torch

    from common.app.table import compare_runs, run_row
    from common.io import git_revision

    dirs = {(m, "teacher"): teacher_dir for m in SYSTEMS}
    dirs.update({(m, name): out / run for m, systems in SYSTEMS.items() for run, name in systems.items()})
    rows = []
    for (method, system), d in dirs.items():
        for set_name, c in run_row(d).cells.items():
            rows.append(
                {
                    "method": method,
                    "system": system,
                    "set": set_name,
                    "error_rate": round(c.rate, 3),
                    "ci": [round(c.lo, 3), round(c.hi, 3)],
                    "unit": c.unit,
                    "n_utts": c.n_utts,
                }
            )
    comparisons = []
    for method, a, b in PAIRS:
        for c in compare_runs(dirs[(method, a)], dirs[(method, b)], a, b):
            comparisons.append(
                {
                    "method": method,
                    "a": a,
                    "b": b,
                    "set": c.set,
                    "delta": round(c.delta, 3),
                    "ci": [round(c.lo, 3), round(c.hi, 3)],
                    "verdict": c.verdict,
                    "n_utts": c.n_utts,
                }
            )
    diagnostics = {
        "opd_from_base": _opd_diagnostics(out / "ark_base_opd"),
        "opd_from_td": _opd_diagnostics(out / "ark_base_td_opd"),
    }
    environment = {
        "precision": run_precisions(list(dirs.values())),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "git_revision": git_revision(),
    }
    result = {
        "rows": rows,
        "comparisons": comparisons,
        "diagnostics": diagnostics,
        "selection": opd_selection(out),
        "timings": timings,
        "environment": environment,
        "seeds": seeds,
    }
    result["control_shares"] = control_shares(out, seeds)
    if seeds > 1:
        result.update(seed_summary(out, teacher_dir, seeds))
    return result


def run_precisions(run_dirs: list[Path]) -> list[str]:
    """The ``trainer.precision`` values the runs were trained with (their saved config.yaml): one value unless a rerun
    with another ``--precision`` reused stages finished at another."""
    import yaml

    found = set()
    for d in run_dirs:
        cfg = Path(d) / "config.yaml"
        if cfg.is_file():
            found.add(((yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("trainer") or {}).get("precision"))
    return sorted(str(p) for p in found)


def control_shares(out: Path, seeds: int = 1) -> dict:
    """Per test set and seed, the share of OPD's gain over Ark-Base that each teacher-free control recovers:
    (control - Ark-Base) / (OPD - Ark-Base) in error rate (1 = all of it, 0 = none, < 0 = the control is worse than
    Ark-Base; None when OPD gains nothing)."""
    from common.app.table import run_row

    res: dict[str, dict[str, list]] = {}
    controls = ("ark_base_self", "ark_base_sft_more")
    for seed in range(seeds):  # each run's row (its bootstrap) once per seed, shared by both controls
        rates = {r: run_row(seed_dir(out, r, seed)).cells for r in ("ark_base_sft", "ark_base_opd", *controls)}
        for control in controls:
            name = SYSTEMS["ark_asr"][control]
            for set_name, base in rates["ark_base_sft"].items():
                opd, ctl = rates["ark_base_opd"].get(set_name), rates[control].get(set_name)
                gain = None if opd is None else opd.rate - base.rate
                ok = ctl is not None and gain is not None and gain < 0
                share = round((ctl.rate - base.rate) / gain, 3) or 0.0 if ok else None  # "or 0.0": no -0.0
                res.setdefault(name, {}).setdefault(set_name, []).append(share)
    return res


def seed_summary(out: Path, teacher_dir: Path, seeds: int) -> dict:
    """Per system and set: the error rate of every seed, their mean and range; per paired comparison: the verdict of
    every seed and whether the conclusion (an interval excluding zero, the same way) holds in every seed."""
    from common.app.table import compare_runs, run_row

    def run_dir(method: str, system: str, seed: int) -> Path:
        if system == "teacher":
            return teacher_dir
        run = next(r for r, name in SYSTEMS[method].items() if name == system)
        return seed_dir(out, run, seed)

    spread = []
    for method, systems in SYSTEMS.items():
        for system in systems.values():
            per: dict[str, list[float]] = {}
            for seed in range(seeds):
                for set_name, c in run_row(run_dir(method, system, seed)).cells.items():
                    per.setdefault(set_name, []).append(round(c.rate, 3))
            for set_name, rates in per.items():
                spread.append(
                    {
                        "method": method,
                        "system": system,
                        "set": set_name,
                        "per_seed": rates,
                        "mean": round(sum(rates) / len(rates), 3),
                        "range": [min(rates), max(rates)],
                    }
                )
    conclusions = []
    for method, a, b in PAIRS:
        by_set: dict[str, list] = {}
        for seed in range(seeds):
            for c in compare_runs(run_dir(method, a, seed), run_dir(method, b, seed), a, b):
                by_set.setdefault(c.set, []).append(c)
        for set_name, cs in by_set.items():
            verdicts = [c.verdict for c in cs]
            conclusions.append(
                {
                    "method": method,
                    "a": a,
                    "b": b,
                    "set": set_name,
                    "delta_per_seed": [round(c.delta, 3) for c in cs],
                    "ci_per_seed": [[round(c.lo, 3), round(c.hi, 3)] for c in cs],
                    "verdict_per_seed": verdicts,
                    "holds_in_every_seed": len(set(verdicts)) == 1 and "no significant" not in verdicts[0],
                }
            )
    return {"seed_spread": spread, "seed_conclusions": conclusions}


def _comparisons_md(results: dict) -> str:
    lines = [
        "\n## Paired comparisons (a - b, points; 95 % paired bootstrap interval over the test utterances)\n",
        "| method | a | b | set | a - b | 95 % CI | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        lines.append(
            f"| {c['method']} | {c['a']} | {c['b']} | {c['set']} | {c['delta']:+.2f} | "
            f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | {c['verdict']} |"
        )
    for control, by_set in (results.get("control_shares") or {}).items():
        for set_name, shares in by_set.items():
            vals = ", ".join("-" if v is None else f"{v:.2f}" for v in shares)
            lines.append(f"\nShare of OPD's gain over Ark-Base that {control} recovers on {set_name}, per seed: {vals}")
    sel = results.get("selection") or {}
    if sel.get("points"):
        pts = ", ".join(
            f"{p['lr']:g} -> " + ("not finished" if p["dev_error_rate"] is None else f"{p['dev_error_rate']:.2f} %")
            for p in sel["points"]
        )
        lines.append(
            f"\nOPD learning rate {sel['opd_lr']:g}, chosen on {sel['selected_on']} by {sel['sweep']} ({pts}): "
            + (
                "the dev sweep's best."
                if sel["uses_dev_best"]
                else f"NOT the dev sweep's best ({sel['dev_best_lr']:g})."
            )
            + ("" if sel["complete"] else " The sweep is not finished.")
        )
    lines += [
        "\n## OPD diagnostics (training-time means over the logged steps)\n",
        "| OPD from | VUSS mean [min, max] | overlap |S ∩ K| / k | teacher mass on S ∩ K | KL first -> last fifth |",
        "|---|---|---|---|---|",
    ]
    for name, d in (
        ("Ark-Base", results["diagnostics"]["opd_from_base"]),
        ("Ark-Base + TD", results["diagnostics"]["opd_from_td"]),
    ):
        if d:
            lines.append(
                f"| {name} | {d['vuss_mean']:.2f} [{d['vuss_min']:.2f}, {d['vuss_max']:.2f}] | "
                f"{d['overlap_ratio_mean']:.3f} | {d['teacher_mass_overlap_mean']:.3f} | "
                f"{d['kl_first_fifth']:.3f} -> {d['kl_last_fifth']:.3f} |"
            )
    if results.get("seed_conclusions"):
        lines += [
            f"\n## Over {results['seeds']} seeds: which conclusions hold in every seed\n",
            "| method | a | b | set | a - b per seed | verdicts | holds in every seed |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in results["seed_conclusions"]:
            deltas = ", ".join(f"{d:+.2f}" for d in c["delta_per_seed"])
            lines.append(
                f"| {c['method']} | {c['a']} | {c['b']} | {c['set']} | {deltas} | {'; '.join(c['verdict_per_seed'])} | "
                f"{'yes' if c['holds_in_every_seed'] else 'no'} |"
            )
        lines += [
            "\n| method | system | set | mean over seeds | seed range |",
            "|---|---|---|---|---|",
        ]
        for r in results["seed_spread"]:
            lo, hi = r["range"]
            lines.append(f"| {r['method']} | {r['system']} | {r['set']} | {r['mean']:.2f} | [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(lines) + "\n"


ARK_LABELS = {
    "ark_base_sft": "Ark-Base (SFT)",
    "ark_base_td": "Ark-Base + TD",
    "ark_base_opd": "Ark-Base + OPD",
    "ark_base_td_opd": "Ark-Base + TD + OPD",
    "ark_base_self": "Ark-Base + self-training (control)",
    "ark_base_sft_more": "Ark-Base + more SFT (control)",
}
ASKD_LABELS = {
    "ce_only": "student, CE only",
    "distil_whisper": "student, Distil-Whisper-style",
    "askd": "student, ASKD",
}
TEACHER_LABEL = "teacher: tiny.en adapted"


@dataclass
class DemoData:
    """The demo's data parts (manifest paths) and the test-set override every evaluating stage gets."""

    pool: str
    parts: dict[str, Path]
    dev: str
    test: str
    test_sets: str


@dataclass
class DemoTeacher:
    run: Path
    model: Path
    cache: Path

    @property
    def overrides(self) -> list[str]:
        return [f"teacher.name_or_path={self.model}"]


def seed_dir(out: Path, run: str, seed: int) -> Path:
    """The run directory of a student stage under a seed: seed 0 is the plain name (what ``make demo`` runs)."""
    return out / (run if seed == 0 else f"{run}_seed{seed}")


def run_demo(
    out: Path,
    corpus_dir: Path | None = None,
    log: Callable[[str], None] = print,
    seeds: int = 1,
    precision: str = "auto",
) -> str:
    """``make demo``: its stages in order (each a run directory, reused when finished), then the tables. ``seeds``:
    the student stages (Ark-ASR and its controls, the ASKD students) are run under seeds 0 .. seeds-1 (training seed
    and data order), the data, teacher and teacher cache once; results.json then holds each system's mean and seed
    range and which paired conclusions hold in every seed. ``precision`` (every stage's training, decoding and teacher
    cache): ``auto`` is bf16-mixed on a CPU with native bf16 and 32-true elsewhere
    (:func:`common.training.precision.demo_precision`)."""
    from common.training.precision import demo_precision

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    prec = demo_precision(precision)  # start-up checks: before the run directory exists
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    st = _Stages(log, prec)
    log(f"[demo] precision {prec} (--precision {precision}), {seeds} seed(s)")
    from common.training.allocator import keep_large_blocks

    log(f"[demo] CPU allocator: {keep_large_blocks()} (common.training.allocator)")
    data = stage_data(out, st, Path(corpus_dir or default_corpus_dir()), log)
    teacher = stage_teacher(out, st, data)
    for seed in range(seeds):
        ark = stage_ark(out, st, data, teacher, seed)
        stage_askd(out, st, data, teacher, seed)
    lat_file = out / "latency.json"
    st.run(
        "ASKD-Whisper: teacher/student latency",
        lat_file.is_file(),
        lambda: atomic_write_json(lat_file, _latency(str(teacher.model), data.test, prec)),
    )
    md = write_tables(out, st, teacher, ark, json.loads(lat_file.read_text()), seeds)
    log("\n" + md)
    log(f"results written to {out / 'results.md'} (and results.tex); this run took {time.time() - t_start:.0f} s")
    return md


def stage_data(out: Path, st: _Stages, corpus_dir: Path, log: Callable[[str], None]) -> DemoData:
    """The espeak-ng corpus, its disjoint parts (:data:`SPLITS`), ``en_test`` and the real English clips."""
    from common.config import load
    from common.data.manifests import write_jsonl_subset
    from common.data.synth import SynthConfig, synthesize_corpora

    corpus: list[Path] = []
    cfgs = [
        load(SynthConfig, CONFIGS / name, [f"out_dir={d}"])
        for name, d in (("synth.yaml", corpus_dir), ("synth_ood.yaml", f"{corpus_dir}_ood"))
    ]  # one process pool for both: en_ood's split runs beside en_train's
    st.run("corpus (espeak-ng)", False, lambda: corpus.extend(synthesize_corpora(cfgs, replace=True)))  # its own cache
    pool = str(corpus[0] / "en_train" / "manifest.jsonl")
    parts = {name: out / "data" / name / "manifest.jsonl" for name, _, _ in SPLITS}
    for name, rows, audio_only in SPLITS:  # cheap: rewritten every run, identical when the corpus is
        write_jsonl_subset(pool, parts[name], rows=rows, audio_only=audio_only)
    test = str(
        write_jsonl_subset(corpus[0] / "en_test" / "manifest.jsonl", out / "data" / "en_test" / "manifest.jsonl")
    )
    dev = str(write_jsonl_subset(corpus[0] / "en_dev" / "manifest.jsonl", out / "data" / "en_dev" / "manifest.jsonl"))
    ood = write_jsonl_subset(corpus[1] / "en_test" / "manifest.jsonl", out / "data" / "en_ood" / "manifest.jsonl")
    tests = [test, str(ood)]  # en_ood: the ASKD students' out-of-domain set (configs/demo/synth_ood.yaml)
    real = shared_real_speech() / "manifest.jsonl"
    if real.is_file():
        tests.append(str(write_jsonl_subset(real, out / "data" / "real_en" / "manifest.jsonl", language="en")))
    else:
        log(f"[demo] {real} not found: no real_en column (the real English clips live in ../shared)")
    return DemoData(pool, parts, dev, test, f"data.test=[{','.join(tests)}]")


def stage_teacher(out: Path, st: _Stages, data: DemoData) -> DemoTeacher:
    """tiny.en adapted to the domain on its own part, exported, and its cache (transcripts + top-k) of the TD part."""
    from common.config import load
    from common.teachers.cache import CacheConfig, build_cache

    t = DemoTeacher(out / "teacher_adapt", out / "teacher_model", out / "teacher_cache")
    st.run(
        "teacher: tiny.en fine-tuned on its own part of the pool",
        is_complete(t.run),
        lambda: st.fit(
            "teacher_adapt.yaml", [f"data.train=[{data.parts['en_teacher']}]", data.test_sets, f"run_dir={t.run}"]
        ),
    )
    st.run("teacher: export", t.model.is_dir(), lambda: _export_teacher(t.run, t.model))
    index = t.cache / "index.json"
    cache_done = index.is_file() and json.loads(index.read_text()).get("complete", False)
    st.run(
        "teacher cache (the teacher's transcripts + top-8 on the TD part)",
        cache_done,
        lambda: build_cache(
            load(
                CacheConfig,
                CONFIGS / "teacher_cache.yaml",
                [f"manifest={data.parts['en_audio_td']}", f"out_dir={t.cache}", f"teacher.name_or_path={t.model}"]
                + [f"precision={st.precision}"],
            )
        ),
    )
    return t


def stage_ark(
    out: Path, st: _Stages, data: DemoData, teacher: DemoTeacher, seed: int = 0
) -> list[tuple[str, str, list[str]]]:
    """Ark-ASR: SFT on the labelled part, TD and OPD (from Base and from +TD) on audio only, and OPD's two controls
    (one chain per seed: each stage starts from the same seed's predecessor)."""
    base, td = seed_dir(out, "ark_base_sft", seed), seed_dir(out, "ark_base_td", seed)
    opd_data = f"data.train=[{data.parts['en_audio_opd']}]"
    ark = [
        ("ark_base_sft", "ark_sft.yaml", [f"data.train=[{data.parts['en_labelled']}]"]),
        (
            "ark_base_td",
            "ark_td.yaml",
            [f"data.train=[{data.parts['en_audio_td']}]", f"model.init_from={base}", f"teacher_cache={teacher.cache}"],
        ),
        ("ark_base_opd", "ark_opd.yaml", [opd_data, f"model.init_from={base}", *teacher.overrides]),
        ("ark_base_td_opd", "ark_opd.yaml", [opd_data, f"model.init_from={td}", *teacher.overrides]),
        ("ark_base_self", "ark_self.yaml", [opd_data, f"model.init_from={base}"]),  # controls: OPD without a teacher
        (
            "ark_base_sft_more",
            "ark_sft_more.yaml",
            [f"data.train=[{data.parts['en_labelled']}]", f"model.init_from={base}"],
        ),
    ]
    seeded = [f"trainer.seed={seed}", f"data.seed={seed}"]
    for run, config, extra in ark:
        rd = seed_dir(out, run, seed)
        st.run(
            f"Ark-ASR: {rd.name}",
            is_complete(rd),
            lambda c=config, e=extra, rd=rd: st.fit(c, e + seeded + [f"data.test=[{data.test}]", f"run_dir={rd}"]),
        )
    return ark


def stage_askd(out: Path, st: _Stages, data: DemoData, teacher: DemoTeacher, seed: int = 0) -> None:
    """ASKD-Whisper: 3-layer students of the teacher with CE on the labelled part's references (several epochs)."""
    for name, label in ASKD_LABELS.items():
        rd = seed_dir(out, f"askd_{name}", seed)
        st.run(
            f"ASKD-Whisper: {label}" + (f" (seed {seed})" if seed else ""),
            is_complete(rd),
            lambda n=name, rd=rd: st.fit(
                f"askd_{n}.yaml",
                [f"data.train=[{data.parts['en_labelled']}]", data.test_sets, *teacher.overrides]
                + [f"trainer.seed={seed}", f"data.seed={seed}", f"run_dir={rd}"],
            ),
        )


def write_tables(out: Path, st: _Stages, teacher: DemoTeacher, ark: list, lat: dict[str, Any], seeds: int = 1) -> str:
    """results.md / .tex / .json and timings.json from the finished stages; returns the markdown."""
    from common.app.table import build_table, run_row, to_latex, to_markdown

    rows_a = [run_row(teacher.run, TEACHER_LABEL)]
    rows_a[0].extra = {"decoder layers": "4", "speed-up vs teacher": "1.00x"}
    for name, label in ASKD_LABELS.items():
        r = run_row(out / f"askd_{name}", label)
        r.extra = {"decoder layers": str(ASKD_LAYERS), "speed-up vs teacher": f"{lat['ratio']:.2f}x"}
        rows_a.append(r)
    rows_b = [run_row(out / run, ARK_LABELS[run]) for run, _, _ in ark] + [run_row(teacher.run, TEACHER_LABEL)]
    for r, (run, _, _) in zip(rows_b, ark):
        s = json.loads((out / run / "summary.json").read_text())
        r.extra = {"steps": str(s["steps"])}
    rows_b[-1].extra = {"steps": "-"}
    ta, tb = build_table(rows_a), build_table(rows_b)
    md = (
        "# asr-distill demo (CPU, synthetic English speech, Whisper tiny.en adapted to it as the teacher)\n\n"
        f"## ASKD-Whisper: adapted tiny.en -> {ASKD_LAYERS} decoder layers (CE on the labelled part's references)\n\n"
        + to_markdown(ta)
        + f"\nLatency: batch 1, greedy, 32 tokens, {lat['audio_seconds']:.1f} s clip, CPU, {lat['threads']} threads: "
        + "teacher "
        f"{lat['teacher']:.3f} s, student {lat['student']:.3f} s (teacher/student {lat['ratio']:.2f}x total, "
        f"{lat['decode_ratio']:.2f}x decoding only).\n\n"
        "## Ark-ASR: SFT (400 labelled) -> TD / OPD (audio only) with the adapted tiny.en as the teacher\n\n"
        + to_markdown(tb)
        + "\nA CPU-sized run of the whole pipeline on a synthetic corpus; not the papers' settings or numbers.\n"
    )
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    # a rerun finds the corpus cached (~0 s): keep the first run's measured time for it
    timings.update({k: v for k, v in st.timings.items() if not (k.startswith("corpus") and k in timings and v < 1)})
    atomic_write_json(out / "timings.json", timings)
    results = demo_results(out, teacher.run, timings, seeds)
    md += _comparisons_md(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "results.tex", to_latex(ta) + "\n" + to_latex(tb))
    return md
