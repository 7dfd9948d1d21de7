"""``asr-distill``: the command line. Each subcommand parses its arguments and calls library code.

Subcommands import their libraries inside the function that runs them (start-up time): ``asr-distill --help``, a
config error and a torch/torchaudio mismatch report come back without loading transformers, Lightning or Lhotse.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.config import ConfigError


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("lhotse").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from common.config import load
    from common.evaluate import EvalConfig, markdown_table, run_evaluation

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    if args.manifest:
        overrides.append("sets=[" + ",".join(args.manifest) + "]")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load(EvalConfig, args.config, overrides)
    summary = run_evaluation(cfg, overwrite=args.overwrite)
    print(markdown_table(summary, Path(cfg.model).name or cfg.model))
    print(f"run directory: {cfg.out_dir}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from common.config import load
    from common.data.synth import SynthConfig, synthesize_corpus

    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    cfg = load(SynthConfig, args.config, overrides)
    out = synthesize_corpus(cfg)
    print(f"corpus in {out}")
    for m in sorted(out.glob("*/manifest.jsonl")):
        print(f"  {m}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from common.audio import AudioError, decode_check
    from common.data.manifests import load_manifest

    bad = 0
    for spec in args.manifests:
        cuts, report = load_manifest(spec, policy="skip")
        if args.decode:  # full decode: finds files whose header is fine but whose data is corrupt
            from common.data.manifests import Problem

            for cut in cuts:
                try:  # block by block: a header declaring 37 hours is read in bounded memory
                    decode_check(cut.recording.sources[0].source, offset=cut.start, duration=cut.duration)
                except AudioError as err:
                    report.problems.append(Problem(cut.id, "undecodable_audio", str(err)))
                    report.n_ok -= 1
        print(report.summary(max_items=args.max_problems))
        if report.warnings:
            print(report.warning_summary(max_items=args.max_problems))
        rates = ", ".join(f"{sr} Hz x{n}" for sr, n in sorted(report.sample_rates.items()))
        print(f"  sample rates: {rates or '-'}; audio: {report.total_seconds / 3600:.3f} h")
        bad += report.n_bad
    return 1 if bad else 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from common.data.recipes import prepare

    out = prepare(
        args.corpus,
        args.corpus_dir,
        args.out,
        shar=args.shar,
        shar_shard_size=args.shar_shard_size,
        annotations_dir=args.annotations_dir,
        parts=args.parts.split(",") if args.parts else None,
    )
    print(f"{len(out)} set(s) in {args.out}; use them as data.train/dev/test entries, e.g. {next(iter(out.values()))}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from common.app.sweep import SweepConfig, run_local, run_slurm
    from common.config import load

    cfg = load(SweepConfig, args.file, list(args.overrides))
    status = (run_slurm if args.launcher == "slurm" else run_local)(cfg, dry_run=args.dry_run)
    failed = [k for k, v in status.items() if v.startswith("failed")]
    print(
        f"sweep {cfg.name}: "
        + ", ".join(f"{v}: {sum(1 for x in status.values() if x == v)}" for v in sorted(set(status.values())))
    )
    if not args.dry_run and args.launcher == "local":
        print(f"ablation table: asr-distill table --sweep {cfg.out_dir}")
    return 1 if failed else 0


def cmd_table(args: argparse.Namespace) -> int:
    from common.app.table import build_table, run_row, to_latex, to_markdown
    from common.io import atomic_write_text

    rows = []
    if args.sweep:
        from common.app.sweep import sweep_rows

        rows += sweep_rows(args.sweep, args.bootstrap, args.seed)
    rows += [run_row(r, None, args.bootstrap, args.seed) for r in args.runs]
    if not rows:
        raise ValueError("nothing to tabulate: give run directories and/or --sweep DIR")
    table = build_table(rows, args.paper, ci=args.bootstrap > 0)
    md = to_markdown(table)
    if args.compare:
        from common.app.table import compare_runs, comparisons_markdown

        comps = [c for a, b in args.compare for c in compare_runs(a, b, n_boot=max(args.bootstrap, 1), seed=args.seed)]
        md += "\n" + comparisons_markdown(comps)
    print(md)
    if args.out:
        atomic_write_text(Path(args.out), md)
        atomic_write_text(Path(args.out).with_suffix(".tex"), to_latex(table))
        print(f"written {args.out} and {Path(args.out).with_suffix('.tex')}")
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from common.config import load
    from common.teachers.cache import CacheConfig, build_cache

    cfg = load(CacheConfig, args.config, list(args.overrides))
    index = build_cache(cfg)
    s = index["summary"]
    rate = s["teacher_error_rate"]
    print(
        f"teacher cache {cfg.out_dir}: {s['n_utts']} utterances in {len(index['shards'])} shards"
        + (f"; teacher normalised error rate vs references {100 * rate:.2f} %" if rate is not None else "")
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from common.app.experiment import load_experiment

    cfg, fit = load_experiment(args.config, list(args.overrides))
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from common.training.preemption import Preempted

    try:
        summary = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    except Preempted as p:
        print(
            f"asr-distill fit: stopped by signal {p.signum} at step {p.step}; {p.path} written; rerun with --resume",
            file=sys.stderr,
        )
        return int(p.code)
    except SIGTERMException:
        print(
            f"asr-distill fit: stopped by SIGTERM; {Path(cfg.run_dir) / 'checkpoints' / 'last.ckpt'} written; "
            "rerun with --resume",
            file=sys.stderr,
        )
        return 143
    if summary.get("stopped_early"):
        print(f"stopped at step {summary['steps']}; continue with --resume")
    if "table" in summary:
        print(summary["table"])
    print(f"run directory: {cfg.run_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from common import registry
    from common.io import check_run_dir
    from common.runs import run_method

    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    run = ckpt.resolve().parent.parent
    if not (run / "config.yaml").is_file():
        raise ValueError(
            f"{ckpt} is not in a run directory's checkpoints/ folder (no {run / 'config.yaml'}): export reads"
            " the run's config.yaml and processor/ beside it; give RUN_DIR/checkpoints/last.ckpt"
        )
    method = registry.get(run_method(run))
    if method.export is None:
        raise ValueError(
            f"{ckpt}: {method.name} students need no export: RUN_DIR/student is the model directory "
            "(asr-distill evaluate --model RUN_DIR/student; ArkStudent.from_pretrained); export writes Whisper students"
        )
    check_run_dir(Path(args.out), overwrite=args.overwrite)
    out = method.export(ckpt, Path(args.out))
    print(f"exported a Hugging Face model to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from common.app.demo import run_demo

    run_demo(
        Path(args.out),
        corpus_dir=Path(args.corpus) if args.corpus else None,
        seeds=args.seeds,
        precision=args.precision,
    )
    return 0


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr-distill", description="Knowledge distillation of speech recognition models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ev = sub.add_parser("evaluate", help="decode test sets and score WER/CER into a run directory")
    ev.add_argument("-c", "--config", help="YAML config (common.evaluate.EvalConfig)")
    ev.add_argument("--model", help="bundled:tiny.en, a local model directory or a hub id")
    ev.add_argument(
        "--manifest", action="append", help="a test manifest (repeatable); the set is named after its folder"
    )
    ev.add_argument("--out", help="run directory")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. decoding.num_beams=4")
    ev.set_defaults(func=cmd_evaluate)

    data = sub.add_parser("data", help="corpus tools: synth, validate, prepare")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    sy = dsub.add_parser("synth", help="synthesise the embedded English/Mandarin corpus with espeak-ng (cached)")
    sy.add_argument("-c", "--config", help="YAML config (common.data.synth.SynthConfig)")
    sy.add_argument("--out", help="output directory")
    sy.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. seed=1 en_sizes=[100,10,10]")
    sy.set_defaults(func=cmd_data_synth)
    va = dsub.add_parser("validate", help="report missing/unreadable audio, bad text, duration and rate mismatches")
    va.add_argument("manifests", nargs="+", help="manifests (JSONL, Lhotse, Kaldi dir, hf:NAME[:SPLIT])")
    va.add_argument("--decode", action="store_true", help="also decode every file completely")
    va.add_argument("--max-problems", type=int, default=20, help="problems listed per manifest")
    va.set_defaults(func=cmd_data_validate)

    pr = dsub.add_parser(
        "prepare", help="a corpus on disk -> Lhotse cut manifests per part (+ Shar), via Lhotse's recipes"
    )
    pr.add_argument("corpus", choices=["librispeech", "aishell1", "wenetspeech", "ami"])
    pr.add_argument(
        "--corpus-dir",
        required=True,
        help="the corpus root (LibriSpeech/, data_aishell's parent, WenetSpeech.json's folder, AMI wav dir)",
    )
    pr.add_argument("--out", required=True, help="output folder: OUT/<corpus>_<part>/cuts.jsonl.gz")
    pr.add_argument(
        "--shar", action="store_true", help="also write Lhotse Shar shards with FLAC audio (OUT/<set>/shar)"
    )
    pr.add_argument("--shar-shard-size", type=int, default=1000, help="cuts per Shar shard")
    pr.add_argument(
        "--parts", help="comma-separated parts (LibriSpeech: test-clean,...; WenetSpeech: TEST_NET,TEST_MEETING,DEV,L)"
    )
    pr.add_argument("--annotations-dir", help="AMI only: the manual annotations folder")
    pr.set_defaults(func=cmd_data_prepare)

    sw = sub.add_parser("sweep", help="run an ablation sweep (configs/sweeps/*.yaml) here or as a SLURM array")
    sw.add_argument("file", help="sweep YAML (common.app.sweep.SweepConfig)")
    sw.add_argument("--launcher", choices=["local", "slurm"], default="local")
    sw.add_argument("--dry-run", action="store_true", help="print the runs (and the sbatch script) without running")
    sw.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="sweep-file overrides, e.g. out_dir=runs/x slurm.partition=gpu",
    )
    sw.set_defaults(func=cmd_sweep)

    tb = sub.add_parser("table", help="markdown + LaTeX table with 95%% bootstrap CIs from run directories or a sweep")
    tb.add_argument(
        "runs", nargs="*", help="run directories (training runs or evaluations); a row each, named after the folder"
    )
    tb.add_argument("--sweep", help="a sweep directory (with sweep.json): one row per run, knob values as columns")
    tb.add_argument("--paper", choices=["ark_table1", "askd"], help="put the paper's own numbers beside ours")
    tb.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("RUN_A", "RUN_B"),
        help="also the paired difference A - B on each shared test set, with its 95%% paired bootstrap interval "
        "(repeatable)",
    )
    tb.add_argument("--out", help="write the markdown here and the LaTeX beside it (.tex)")
    tb.set_defaults(func=cmd_table)

    ct = sub.add_parser(
        "cache-teacher", help="store a teacher's transcripts and top-k log-probs for a manifest (resumable)"
    )
    ct.add_argument("-c", "--config", help="YAML config (common.teachers.cache.CacheConfig)")
    ct.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. manifest=... out_dir=... top_k=16")
    ct.set_defaults(func=cmd_cache_teacher)

    fi = sub.add_parser("fit", help="train one stage/experiment from a config (method: askd_whisper | ark_asr)")
    fi.add_argument("-c", "--config", required=True, help="YAML experiment config with a 'method:' key")
    fi.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/checkpoints/last.ckpt if there is one (else start; safe for requeued jobs)",
    )
    fi.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    fi.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. trainer.max_steps=100 curriculum.schedule=linear"
    )
    fi.set_defaults(func=cmd_fit)

    ex = sub.add_parser(
        "export",
        help="write a Hugging Face directory (weights, config, processor) from an ASKD-Whisper checkpoint",
        description="Writes a transformers Whisper directory. transformers.pipeline('automatic-speech-recognition', "
        "model=DIR) then transcribes numpy arrays (16 kHz); file paths need ffmpeg; clips over 30 s need "
        "return_timestamps=True (long-form decoding). Ark-ASR students need no export: RUN_DIR/student loads as is.",
    )
    ex.add_argument("--ckpt", required=True, help="a student checkpoint (RUN_DIR/checkpoints/last.ckpt)")
    ex.add_argument("--out", required=True, help="output directory (refused if it exists, unless --overwrite)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    ex.set_defaults(func=cmd_export)

    de = sub.add_parser("demo", help="the main job on the embedded default corpus; prints the results table(s)")
    de.add_argument("--out", default="runs/demo", help="demo run directory")
    de.add_argument(
        "--seeds", type=int, default=1, help="run the student stages under this many seeds (mean, range, conclusions)"
    )
    de.add_argument("--corpus", help="synthetic corpus directory (default: cache folder)")
    de.add_argument(
        "--precision",
        choices=("auto", "32-true", "bf16-mixed"),
        default="auto",
        help="every stage's precision; auto: bf16-mixed on a CPU with native bf16 (AVX512-BF16/AMX), else 32-true",
    )
    de.set_defaults(func=cmd_demo)
    return p


AUDIO_COMMANDS = ("evaluate", "fit", "cache-teacher", "demo", "data")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come in several groups between options (argparse takes only the first group)
    stray = [a for a in extra if not hasattr(args, "overrides") or a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    _quiet()
    from common.training.allocator import keep_large_blocks

    keep_large_blocks()  # large CPU tensors reused from the heap, not page-faulted in each step (its docstring)
    from common.audio import AudioError, DependencyError
    from common.data.manifests import ManifestError
    from common.io import RunDirExistsError, RunDirLockedError
    from common.runs import RunError
    from common.teachers.cache import CacheMismatchError
    from common.training.preemption import CheckpointError

    try:
        if args.command in AUDIO_COMMANDS:  # fail at start-up, in one line, on a torch/torchaudio pair that cannot load
            from common.audio import torchaudio_functional

            torchaudio_functional()
        return int(args.func(args) or 0)
    except (
        ValueError,
        ConfigError,
        ManifestError,
        AudioError,
        RunDirExistsError,
        RunDirLockedError,
        FileNotFoundError,
        CacheMismatchError,
        RunError,
        DependencyError,
        CheckpointError,
    ) as err:
        if os.environ.get("ASR_DISTILL_DEBUG"):
            raise
        print(f"asr-distill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full run_dir / --out, a permission, a quota: one line naming the path
        if os.environ.get("ASR_DISTILL_DEBUG"):
            raise
        path = err.filename if err.filename is not None else ""
        extra = f" -> {err.filename2}" if getattr(err, "filename2", None) else ""
        print(f"asr-distill {args.command}: error: {path}{extra}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (fit checkpoints on Ctrl-C itself): one line, no traceback
        if os.environ.get("ASR_DISTILL_DEBUG"):
            raise
        print(
            f"asr-distill {args.command}: interrupted; an unfinished run directory has no summary.json "
            "(rerun with --overwrite, or --resume for fit)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
