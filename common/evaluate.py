"""Batched decoding of test sets, corpus-level WER/CER, and a run directory with everything kept.

Run directory layout::

    config.yaml            resolved config        meta.json   git revision, model, device, timings
    SET/hyp.txt, SET/ref.txt   "id<TAB>text" lines
    SET/errs.jsonl         per utterance: language, raw and normalised ref/hyp, counts, alignment
    summary.json           {"sets": {SET: {error_rate, raw_error_rate, unit, n_utts, ref_units, sub, del, ins,
                            n_empty_refs, n_skipped, audio_seconds, rtf}}}   (written last)
    table.md               the markdown table
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

import torch
from tqdm import tqdm

from common.config import save_yaml
from common.data.datamodule import eval_loader
from common.data.manifests import load_manifest, manifest_digest, set_name
from common.io import SUMMARY, atomic_write_json, atomic_write_text, check_run_dir, git_revision, prepare_run_dir
from common.metrics import ErrorRate, score_utterance
from common.text import normalize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DecodeConfig:
    """How hypotheses are decoded."""

    num_beams: int = 1
    """1 = greedy; >1 = beam search."""
    max_new_tokens: int = 128
    """Generation length limit."""
    batch_seconds: float = 240.0
    """Seconds of audio per decoding batch."""
    max_batch: Optional[int] = 32
    """Upper bound on utterances per batch."""
    encoder_cache_mb: float = 0.0
    """Whisper models: keep the encoder states of decoded clips (up to this many MB) in the process's store for this
    encoder (``common.teachers.encoder_cache.shared_cache``), so that another model of the same process with the same
    frozen encoder (the demo's teacher and its students) decodes the same audio without an encoder pass. 0: off."""

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError("num_beams and max_new_tokens must be >= 1")
        if self.encoder_cache_mb < 0:
            raise ValueError(f"decoding.encoder_cache_mb must be >= 0, got {self.encoder_cache_mb}")


@dataclass
class EvalConfig:
    """``asr-distill evaluate``: which model on which test sets, written where."""

    out_dir: str
    """Run directory (refused if it exists, unless --overwrite)."""
    model: str = "bundled:tiny.en"
    """bundled:tiny.en, a local HF/asr-distill model directory, or a hub id."""
    kind: Literal["auto", "whisper", "qwen3_asr"] = "auto"
    """Model family; auto: a directory saved by a registered method (an Ark-ASR student), else Qwen3-ASR when the
    name or the directory's config says so, else Whisper."""
    sets: list[str] = field(default_factory=list)
    """Test manifests; each set is named after its manifest's parent folder."""
    decoding: DecodeConfig = field(default_factory=DecodeConfig)
    """Decoding options."""
    device: str = "cpu"
    """torch device."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model dtype."""
    bad_sample_policy: Literal["error", "skip"] = "error"
    """error: refuse to start on a bad manifest row; skip: drop and count it."""
    num_workers: int = 0
    """DataLoader workers."""

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("sets: at least one test manifest is needed")


class Transcriber(Protocol):
    """What evaluation needs from a model."""

    name: str
    max_seconds: Optional[float]  # the longest audio the model transcribes whole (None: no limit)

    def collate(self, audios, texts, languages) -> dict[str, Any]: ...

    def transcribe(self, batch: dict[str, Any], decoding: DecodeConfig) -> list[str]: ...


class MixedPrecisionTranscriber:
    """A transcriber whose model calls run under ``precision``'s autocast (``bf16-mixed``: the precision a run trained
    in); reading and collating the audio stay float32 outside it."""

    def __init__(self, inner: Transcriber, precision: str, device: str | torch.device = "cpu") -> None:
        self.inner, self.precision, self.device = inner, precision, device
        self.name, self.max_seconds, self.collate = inner.name, inner.max_seconds, inner.collate

    def transcribe(self, batch: dict[str, Any], decoding: DecodeConfig) -> list[str]:
        from common.training.precision import autocast_for

        with autocast_for(self.precision, self.device):
            return self.inner.transcribe(batch, decoding)


class WhisperTranscriber:
    """Any ``WhisperForConditionalGeneration`` with its processor."""

    def __init__(self, model, processor, name: str = "whisper") -> None:
        from common.data.collate import WhisperCollator, is_multilingual

        self.model, self.processor, self.name = model, processor, name
        self.collate = WhisperCollator(processor, with_labels=False)
        self.multilingual = is_multilingual(processor.tokenizer)
        self.max_seconds = float(processor.feature_extractor.chunk_length)  # the 30 s window; longer audio is cut

    @torch.no_grad()
    def transcribe(self, batch: dict[str, Any], decoding: DecodeConfig) -> list[str]:
        p = next(self.model.parameters())
        feats = batch["input_features"].to(p.device, p.dtype)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams, do_sample=False
        )
        if self.multilingual:
            kwargs.update(language=batch["languages"], task="transcribe")
        if decoding.encoder_cache_mb:
            from transformers.modeling_outputs import BaseModelOutput

            from common.teachers.encoder_cache import content_keys, shared_cache

            encoder = self.model.get_encoder()
            enc, _ = shared_cache(encoder, decoding.encoder_cache_mb).states(
                content_keys(feats), lambda rows: encoder(feats[rows]).last_hidden_state
            )
            out = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), **kwargs)
        else:
            out = self.model.generate(feats, **kwargs)
        seqs = out.sequences if hasattr(out, "sequences") else out
        return [t.strip() for t in self.processor.tokenizer.batch_decode(seqs, skip_special_tokens=True)]


class TeacherTranscriber:
    """A frozen teacher (``common.teachers``, e.g. Qwen3-ASR) as a transcriber: it computes its own features from the
    waveforms and decodes with its own ``generate`` (language forced from the set's language)."""

    def __init__(self, teacher, name: str) -> None:
        self.teacher, self.name = teacher, name
        self.max_seconds = None  # Qwen3-ASR's audio tower chunks long input itself

    def collate(self, audios, texts, languages) -> dict[str, Any]:
        return {}  # the dataset passes the waveforms on as batch["audios"]

    @torch.no_grad()
    def transcribe(self, batch: dict[str, Any], decoding: DecodeConfig) -> list[str]:
        prepared = self.teacher.prepare(batch["audios"], batch["languages"])
        return [
            t.strip()
            for t in self.teacher.generate(
                prepared, max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams
            ).texts
        ]


def model_kind(model: str) -> str:
    """whisper | qwen3_asr for a model name or directory."""
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        import json

        try:
            model_type = json.loads(cfg.read_text()).get("model_type", "")
        except (ValueError, AttributeError):
            raise ValueError(f"{cfg}: not a JSON object") from None
        if model_type not in ("whisper", "qwen3_asr"):
            raise ValueError(
                f"{cfg}: model_type {model_type!r} is not a model evaluate runs (whisper, qwen3_asr, or a directory "
                "that a registered method saved or recognises)"
            )
        return model_type
    return "qwen3_asr" if "qwen3-asr" in model.lower() else "whisper"


def check_model_reference(model: str) -> None:
    """A model reference that cannot load fails here, in one line: a local directory that is missing or holds no model
    (no ``config.json`` / ``ark_config.json``). ``bundled:NAME`` and hub ids (``org/name``, needing a network) pass."""
    if model.startswith("bundled:"):
        return
    p = Path(model).expanduser()
    if p.is_dir():
        if not any((p / f).is_file() for f in ("config.json", "ark_config.json")):
            raise ValueError(f"model directory {model} holds no saved model (no config.json or ark_config.json)")
        return
    if p.exists():
        raise ValueError(f"model {model} is a file; give a model directory, a hub id or bundled:tiny.en")
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local:
        raise ValueError(f"model directory {model} not found (nor is it a hub id org/name or bundled:tiny.en)")


def load_transcriber(model: str, device: str = "cpu", dtype: str = "float32", kind: str = "auto") -> Transcriber:
    """A transcriber for a model directory saved by a registered method (e.g. an Ark-ASR student), or any Whisper
    (bundled, local directory or hub id) or Qwen3-ASR checkpoint."""
    check_model_reference(model)
    try:
        return _load_transcriber(model, device, dtype, kind)
    except OSError as err:  # Hugging Face: no network / no such repo / missing weight files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load model {model}: {first}") from None


def _load_transcriber(model: str, device: str, dtype: str, kind: str) -> Transcriber:
    if kind == "auto" and Path(model).is_dir():
        from common import registry

        for method in registry.methods().values():
            found = method.load_transcriber(Path(model), device, DTYPES[dtype]) if method.load_transcriber else None
            if found is not None:
                return found
    kind = model_kind(model) if kind == "auto" else kind
    if kind == "qwen3_asr":
        from common.teachers.qwen3_asr import Qwen3ASRTeacher

        return TeacherTranscriber(Qwen3ASRTeacher.from_pretrained(model, device, DTYPES[dtype]), name=model)
    from common.whisper import load_whisper

    m, proc = load_whisper(model, device=device, dtype=DTYPES[dtype])
    return WhisperTranscriber(m, proc, name=model)


def evaluate_set(transcriber: Transcriber, cuts, cfg: EvalConfig, name: str, out: Path) -> dict[str, Any]:
    """Decode one set; write its files; return its summary row. Utterances longer than the model's window
    (``transcriber.max_seconds``: Whisper's 30 s) are not cut silently: they are skipped, listed in ``skipped.tsv`` and
    counted (``n_too_long``), like unreadable audio under ``bad_sample_policy: skip``."""
    metric = ErrorRate()
    limit = getattr(transcriber, "max_seconds", None)
    too_long = [c for c in cuts if limit is not None and c.duration > limit + 1e-3]
    if too_long:
        keep = {c.id for c in too_long}
        cuts = cuts.filter(lambda c: c.id not in keep).to_eager()
        print(
            f"{name}: {len(too_long)} utterance(s) longer than the model's {limit:.0f} s window skipped and counted "
            f"(e.g. {too_long[0].id}, {too_long[0].duration:.1f} s); see {out / name / 'skipped.tsv'}",
            flush=True,
        )
    from common.data.collate import WhisperCollator

    collate = transcriber.collate
    if cfg.decoding.encoder_cache_mb and isinstance(collate, WhisperCollator):  # the clips' features kept with states
        collate = collate.with_feature_cache(cfg.decoding.encoder_cache_mb)
    loader = eval_loader(
        cuts,
        collate,
        cfg.decoding.batch_seconds,
        cfg.bad_sample_policy,
        cfg.num_workers,
        cfg.decoding.max_batch,
    )
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    audio_s, decode_s = 0.0, 0.0
    bar = tqdm(total=len(cuts) + len(too_long), desc=f"decoding {name}", unit="utt", leave=False)
    bar.update(len(too_long))
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["ids"]:
            bar.update(len(batch["skipped"]))
            continue
        t0 = time.perf_counter()
        hyps = transcriber.transcribe(batch, cfg.decoding)
        decode_s += time.perf_counter() - t0
        bar.update(len(batch["ids"]) + len(batch["skipped"]))  # counted once decoded
        audio_s += sum(batch["durations"])
        for uid, ref, hyp, lang in zip(batch["ids"], batch["texts"], hyps, batch["languages"]):
            s = score_utterance(ref, hyp, lang)
            raw = score_utterance(ref, hyp, lang, normalised=False)
            metric.add(s, raw)
            rows.append(
                {
                    "id": uid,
                    "language": lang,
                    "ref": ref,
                    "hyp": hyp,
                    "ref_norm": normalize(ref, lang),
                    "hyp_norm": normalize(hyp, lang),
                    "raw_errors": raw.errors,
                    "raw_ref_units": raw.ref_units,
                    **s.as_dict(),
                }
            )
    bar.close()
    res = {k: v.item() for k, v in metric.compute().items()}
    langs = sorted({r["language"] for r in rows})
    unit = "mixed" if len(langs) > 1 else ("char" if langs == ["zh"] else "word")
    set_dir = out / name
    atomic_write_text(set_dir / "hyp.txt", "".join(f"{r['id']}\t{r['hyp']}\n" for r in rows))
    atomic_write_text(set_dir / "ref.txt", "".join(f"{r['id']}\t{r['ref']}\n" for r in rows))
    atomic_write_text(set_dir / "errs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    skipped += [(c.id, f"longer than the model's {limit:.0f} s window ({c.duration:.1f} s)") for c in too_long]
    if skipped:
        atomic_write_text(set_dir / "skipped.tsv", "".join(f"{i}\t{m}\n" for i, m in skipped))
    return {
        "error_rate": res["error_rate"],
        "raw_error_rate": res["raw_error_rate"],
        "unit": unit,
        "metric": {"word": "WER", "char": "CER", "mixed": "MER"}[unit],
        "n_utts": res["n_utts"],
        "ref_units": res["ref_units"],
        "sub": res["sub"],
        "del": res["del"],
        "ins": res["ins"],
        "n_empty_refs": res["n_empty_refs"],
        "n_skipped": len(skipped),  # unreadable audio + too long (+ n_invalid_rows: rows refused by validation)
        "n_too_long": len(too_long),
        "audio_seconds": round(audio_s, 3),
        "rtf": round(decode_s / audio_s, 5) if audio_s else None,
    }


def _skipped(r: dict[str, Any]) -> str:
    invalid, too_long = r.get("n_invalid_rows", 0), r.get("n_too_long", 0)
    total = invalid + r["n_skipped"]
    return f"{total} ({invalid} / {r['n_skipped'] - too_long} / {too_long})" if total else "0"


def markdown_table(summary: dict[str, Any], model: str) -> str:
    lines = [
        "| model | set | metric | error rate % | raw % | utts | ref units | S | D | I | empty refs | skipped "
        "(invalid / unreadable / too long) | RTF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["sets"].items():
        lines.append(
            f"| {model} | {name} | {r['metric']} | {100 * r['error_rate']:.2f} | {100 * r['raw_error_rate']:.2f} "
            f"| {r['n_utts']} | "
            f"{r['ref_units']} | {r['sub']} | {r['del']} | {r['ins']} | {r['n_empty_refs']} | {_skipped(r)} "
            f"| {r['rtf']} |"
        )
    return "\n".join(lines) + "\n"


def run_evaluation(
    cfg: EvalConfig, overwrite: bool = False, transcriber: Optional[Transcriber] = None
) -> dict[str, Any]:
    """Validate every manifest first (nothing starts on a bad one under policy ``error``), then decode."""
    sets, specs = {}, {}
    for spec in cfg.sets:
        name = set_name(spec)
        if name in sets:
            raise ValueError(f"two test manifests give the set name {name!r}")
        sets[name], specs[name] = load_manifest(spec, cfg.bad_sample_policy), spec
    check_run_dir(Path(cfg.out_dir), overwrite=overwrite)  # refuse before the (slow) model load
    t0 = time.time()
    transcriber = transcriber or load_transcriber(cfg.model, cfg.device, cfg.dtype, cfg.kind)
    out = prepare_run_dir(Path(cfg.out_dir), overwrite=overwrite)  # only once the model loaded: no stray run dir
    save_yaml(cfg, out / "config.yaml")
    summary: dict[str, Any] = {"model": cfg.model, "sets": {}}
    for name, (cuts, report) in sets.items():
        row = evaluate_set(transcriber, cuts, cfg, name, out)
        row["n_invalid_rows"] = report.n_bad  # skipped at validation (bad_sample_policy: skip)
        row["manifest"], row["manifest_digest"] = str(specs[name]), manifest_digest([specs[name]])
        summary["sets"][name] = row
    atomic_write_json(
        out / "meta.json",
        {
            "git_revision": git_revision(),
            "model": cfg.model,
            "device": cfg.device,
            "dtype": cfg.dtype,
            "wall_seconds": round(time.time() - t0, 2),
            "torch": torch.__version__,
        },
    )
    atomic_write_text(out / "table.md", markdown_table(summary, Path(cfg.model).name or cfg.model))
    atomic_write_json(out / SUMMARY, summary)
    return summary
