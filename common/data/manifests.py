"""Manifest importers -> Lhotse ``CutSet``, with up-front validation.

Formats (``load_manifest`` picks one from the path):

* NeMo-style JSONL: ``audio_filepath`` (relative to the manifest or absolute), ``text``, optional
  ``duration`` (read from the file when absent), ``language`` (detected from the text when absent),
  ``offset`` (seconds), ``id``.
* Lhotse cut manifest (``.jsonl``/``.jsonl.gz`` whose rows are cuts): supervision text and language.
* Hugging Face ``datasets``: ``hf:NAME_OR_PATH[:SPLIT]`` or :func:`from_hf_dataset`; the audio column
  is read with ``Audio(decode=False)`` and decoded by soundfile.
* Kaldi data directory: ``wav.scp`` (plain paths), ``text``, optional ``segments`` and ``utt2lang``.
* Lhotse Shar: ``shar:DIR`` (written by ``asr-distill data prepare --shar``); text and language are checked up
  front, the audio (inside the shards) when it is loaded, under the same bad-sample policy.

Every row is checked when the manifest is read: missing file, unreadable header, zero-length audio,
empty or non-UTF-8 text, a declared duration or sample rate that disagrees with the file, a segment
past the end of its file. With policy ``error`` the first problems are listed in a
:class:`ManifestError` and nothing starts; with ``skip`` the bad rows are dropped and counted in the
returned :class:`ValidationReport`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.utils import fastcopy

from common.audio import AudioError, audio_info
from common.text import detect_language

BadSamplePolicy = Literal["error", "skip"]
DURATION_TOLERANCE = 0.1  # seconds; a declared duration further off than this is a problem
_LANG_ALIASES = {"english": "en", "en": "en", "zh": "zh", "chinese": "zh", "mandarin": "zh", "cmn": "zh", "zh-cn": "zh"}


class ManifestError(ValueError):
    """A manifest that fails validation under policy ``error``."""


@dataclass(frozen=True)
class Problem:
    source: str  # manifest path and line/utterance id
    # missing_audio | unreadable_audio | empty_audio | empty_text | non_utf8 | bad_json | duration_mismatch
    # | sample_rate_mismatch | bad_segment | bad_language
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}: {self.message}"


@dataclass
class ValidationReport:
    manifest: str
    n_rows: int = 0
    n_ok: int = 0
    problems: list[Problem] = field(default_factory=list)
    sample_rates: dict[int, int] = field(default_factory=dict)
    total_seconds: float = 0.0
    warnings: list[Problem] = field(default_factory=list)
    """Rows that load but look implausible (counted, not refused): see :func:`plausibility`."""

    @property
    def n_bad(self) -> int:
        return self.n_rows - self.n_ok

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def summary(self, max_items: int = 5) -> str:
        head = f"{self.manifest}: {self.n_rows} rows, {self.n_ok} ok, {self.n_bad} bad"
        if not self.problems:
            return head
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        lines = [f"{head} ({kinds})"] + [f"  {p}" for p in self.problems[:max_items]]
        if len(self.problems) > max_items:
            lines.append(f"  ... and {len(self.problems) - max_items} more")
        return "\n".join(lines)

    def warning_summary(self, max_items: int = 5) -> str:
        """Implausible rows (loaded, counted): one line of counts and a few examples; empty when there are none."""
        if not self.warnings:
            return ""
        counts: dict[str, int] = {}
        for w in self.warnings:
            counts[w.kind] = counts.get(w.kind, 0) + 1
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        lines = [f"  implausible but kept: {kinds}"] + [f"    {w}" for w in self.warnings[:max_items]]
        return "\n".join(lines)


def manifest_digest(specs: Sequence[str]) -> str:
    """One short hash of manifests' contents, in order (the spec itself where it is not a file: Shar, hf:); the identity
    of a test set in tables and of a teacher cache's training data."""
    h = hashlib.sha256()
    for spec in specs:
        p = Path(spec)
        h.update(p.read_bytes() if p.is_file() else json.dumps(str(spec)).encode())
    return h.hexdigest()[:16]


def _utterance_id(manifest: Path, audio: Path) -> str:
    """``<manifest folder>/<audio path without suffix>``, the audio path taken relative to the manifest's folder (an
    absolute path inside it included); an absolute path elsewhere contributes its last two components, so ids stay
    clean (no ``//``) and do not depend on where the data is mounted. Duplicates are refused by the loader."""
    rel = audio
    if audio.is_absolute():
        try:
            rel = audio.relative_to(manifest.parent.resolve())
        except ValueError:
            rel = Path(*audio.parts[-2:])
    return f"{manifest.parent.name}/{rel.with_suffix('').as_posix()}"


def normalise_language(lang: Any, text: str) -> str | None:
    if lang is None or lang == "":
        return detect_language(text)
    return _LANG_ALIASES.get(str(lang).strip().lower())


def _make_cut(
    uid: str,
    path: Path,
    text: str,
    language: str,
    report: ValidationReport,
    source: str,
    offset: float = 0.0,
    duration: float | None = None,
    declared_sr: int | None = None,
    is_segment: bool = False,
    language_detected: bool = False,
):
    """Validate one utterance against its audio header; return a cut or record a problem.

    ``is_segment``: ``duration`` is a segment length starting at ``offset``; otherwise it is the declared
    length of the whole file and must agree with it. ``language_detected``: the manifest gave no language (it was
    detected from the reference text); recorded in the supervision's ``custom`` so that stages which transcribe the
    audio themselves (OPD) can infer it from their own transcript instead.
    """
    try:
        info = audio_info(path)
    except AudioError as err:
        kind = "missing_audio" if "not found" in str(err) else "unreadable_audio"
        kind = "not_a_file" if " is a " in str(err) or "not a regular file" in str(err) else kind
        kind = "truncated_audio" if str(err).startswith("truncated") else kind
        report.problems.append(Problem(source, kind, str(err)))
        return None
    if info.num_frames == 0:
        report.problems.append(Problem(source, "empty_audio", f"no samples in {path}"))
        return None
    if declared_sr is not None and int(declared_sr) != info.sample_rate:
        report.problems.append(
            Problem(source, "sample_rate_mismatch", f"manifest says {declared_sr} Hz, {path} is {info.sample_rate} Hz")
        )
        return None
    if duration is not None and not is_segment and abs(duration - info.duration) > DURATION_TOLERANCE:
        msg = f"manifest duration {duration:.3f}s but {path} lasts {info.duration:.3f}s"
        report.problems.append(Problem(source, "duration_mismatch", msg))
        return None
    seg_dur = info.duration - offset if (duration is None or not is_segment) else duration
    if offset < 0 or seg_dur <= 0 or offset + seg_dur > info.duration + DURATION_TOLERANCE:
        msg = f"segment [{offset:.3f}, {offset + seg_dur:.3f}]s outside {path} ({info.duration:.3f}s)"
        report.problems.append(Problem(source, "bad_segment", msg))
        return None
    seg_dur = min(seg_dur, info.duration - offset)
    rec = Recording(
        id=f"{uid}__rec",
        sources=[AudioSource(type="file", channels=list(range(info.channels)), source=str(path))],
        sampling_rate=info.sample_rate,
        num_samples=info.num_frames,
        duration=info.duration,
    )
    cut = rec.to_cut().truncate(offset=offset, duration=seg_dur, preserve_id=False)
    cut.id = uid
    channel = 0 if info.channels == 1 else list(range(info.channels))
    cut.supervisions = [
        SupervisionSegment(
            id=uid,
            recording_id=rec.id,
            start=0.0,
            duration=cut.duration,
            channel=channel,
            text=text,
            language=language,
            custom={"language_detected": True} if language_detected else None,
        )
    ]
    report.warnings.extend(plausibility(text, language, cut.duration, source))
    report.sample_rates[info.sample_rate] = report.sample_rates.get(info.sample_rate, 0) + 1
    report.total_seconds += cut.duration
    report.n_ok += 1
    return cut


MAX_WORDS_PER_SECOND = 8.0  # fast read English is ~4-5 words/s; an auctioneer ~7
MAX_CHARS_PER_SECOND = 12.0  # fast Mandarin is ~6-8 characters/s
MAX_PLAUSIBLE_SECONDS = 3600.0  # one utterance of an hour or more is a whole recording, not a training example


def plausibility(text: str, language: str, duration: float, source: str) -> list[Problem]:
    """What a row's text, language and duration say about each other, counted by validation (never refused): more
    words (en) or characters (zh) per second than speech holds (a transcript of another file, or a label that a
    model's maximum target length would cut), a script that contradicts the declared language (Han text under
    ``en`` is scored as one English word per clip), or a duration of hours."""
    from common.text import detect_language

    out = []
    if not text:  # audio-only rows: nothing to compare
        return out if duration < MAX_PLAUSIBLE_SECONDS else [Problem(source, "very_long", f"{duration / 3600:.1f} h")]
    n = len(text.split()) if language == "en" else sum(not ch.isspace() for ch in text)
    limit = MAX_WORDS_PER_SECOND if language == "en" else MAX_CHARS_PER_SECOND
    if duration > 0 and n / duration > limit:
        unit = "words" if language == "en" else "characters"
        out.append(Problem(source, "implausible_rate", f"{n} {unit} in {duration:.2f} s ({n / duration:.0f}/s)"))
    script = detect_language(text)
    if script != language:
        out.append(Problem(source, "script_mismatch", f"declared language {language!r}, text is written in {script!r}"))
    if duration >= MAX_PLAUSIBLE_SECONDS:
        out.append(Problem(source, "very_long", f"{duration / 3600:.1f} h of audio in one utterance"))
    return out


def _check_text(text: Any, source: str, report: ValidationReport) -> str | None:
    if not isinstance(text, str) or not text.strip():
        report.problems.append(Problem(source, "empty_text", f"empty or missing transcript ({text!r})"))
        return None
    return text.strip()


def _finish(
    cuts: list, report: ValidationReport, policy: BadSamplePolicy, where: dict[str, list[str]] | None = None
) -> tuple[CutSet, ValidationReport]:
    if report.problems and policy == "error":
        raise ManifestError(
            f"manifest {report.manifest} has {report.n_bad} bad row(s) (bad_sample_policy=error; use 'skip' to drop "
            f"and count them):\n" + report.summary()
        )
    ids = [c.id for c in cuts]
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
        dups = [i for i, n in seen.items() if n > 1]
        named = "; ".join(f"{d!r} at {', '.join((where or {}).get(d, [])[:3]) or f'{seen[d]} rows'}" for d in dups[:3])
        raise ManifestError(
            f"manifest {report.manifest}: {len(dups)} duplicate utterance id(s): {named} (ids come from the audio path "
            "relative to the manifest, or its last two parts for an absolute path elsewhere: give each row an 'id')"
        )
    return CutSet.from_cuts(cuts), report


def _iter_lines(path: Path) -> Iterable[tuple[int, bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, raw


def from_jsonl(
    path: str | Path, policy: BadSamplePolicy = "error", audio_only: bool = False
) -> tuple[CutSet, ValidationReport]:
    """NeMo-style JSONL manifest (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    report = ValidationReport(str(path))
    cuts = []
    where: dict[str, list[str]] = {}  # utterance id -> the rows that give it
    for lineno, raw in _iter_lines(path):
        report.n_rows += 1
        src = f"{path}:{lineno}"
        try:
            row = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))  # a BOM (Windows editors) is read
        except UnicodeDecodeError as err:
            report.problems.append(
                Problem(src, "non_utf8", f"line is not valid UTF-8 ({err.reason} at byte {err.start})")
            )
            continue
        except json.JSONDecodeError as err:
            report.problems.append(Problem(src, "bad_json", str(err)))
            continue
        if not isinstance(row, dict) or "audio_filepath" not in row:
            report.problems.append(Problem(src, "bad_json", "row has no 'audio_filepath'"))
            continue
        # audio only: the transcript is never read (TD and OPD on untranscribed audio), whether the row has one or not
        text = "" if audio_only else _check_text(row.get("text"), src, report)
        if text is None:
            continue
        language = normalise_language(row.get("language"), text)
        if language is None:
            report.problems.append(
                Problem(src, "bad_language", f"unknown language {row.get('language')!r} (known: en, zh)")
            )
            continue
        numbers = _numbers(row, ("offset", "duration", "sample_rate"), src, report)
        if numbers is None or not isinstance(row["audio_filepath"], str) or not row["audio_filepath"]:
            if numbers is not None:
                report.problems.append(
                    Problem(src, "bad_value", f"'audio_filepath' must be a path, got {row['audio_filepath']!r}")
                )
            continue
        audio = Path(row["audio_filepath"])
        audio = audio if audio.is_absolute() else path.parent / audio
        uid = str(row.get("id") or _utterance_id(path, Path(row["audio_filepath"])))
        offset = numbers.get("offset") or 0.0
        if "offset" in row and offset > 0:
            uid = f"{uid}@{offset:.3f}"
        where.setdefault(uid, []).append(src)
        cut = _make_cut(
            uid,
            audio,
            text,
            language,
            report,
            src,
            offset=offset,
            duration=numbers.get("duration"),
            declared_sr=None if numbers.get("sample_rate") is None else int(numbers["sample_rate"]),
            is_segment="offset" in row,
            language_detected=not row.get("language"),
        )
        if cut is not None:
            cuts.append(cut)
    return _finish(cuts, report, policy, where)


def _numbers(row: dict, keys: Sequence[str], src: str, report: ValidationReport) -> dict[str, float | None] | None:
    """The numeric fields of a row as floats (None where absent); a non-number is a ``bad_value`` problem naming the
    row and the key (``"duration": "long"``)."""
    out: dict[str, float | None] = {}
    for k in keys:
        v = row.get(k)
        if v is None:
            out[k] = None
            continue
        try:
            if isinstance(v, bool):
                raise TypeError
            out[k] = float(v)
            if not math.isfinite(out[k]):
                raise ValueError
        except (TypeError, ValueError):
            report.problems.append(Problem(src, "bad_value", f"'{k}' must be a finite number, got {v!r}"))
            return None
    return out


def _supervision(cut, src: str, report: ValidationReport):
    """A Lhotse cut's first supervision with its checked text and language, or None (the problem is recorded)."""
    sup = cut.supervisions[0] if cut.supervisions else None
    text = _check_text(sup.text if sup else None, src, report)
    if text is None:
        return None
    language = normalise_language(sup.language, text)
    if language is None:
        report.problems.append(Problem(src, "bad_language", f"unknown language {sup.language!r}"))
        return None
    return sup, text, language


def from_lhotse(path: str | Path, policy: BadSamplePolicy = "error") -> tuple[CutSet, ValidationReport]:
    """A Lhotse cut manifest; each cut must have one supervision with text."""
    path = Path(path)
    report = ValidationReport(str(path))
    cuts = []
    for cut in CutSet.from_file(path):
        report.n_rows += 1
        src = f"{path}:{cut.id}"
        checked = _supervision(cut, src, report)
        if checked is None:
            continue
        sup, text, language = checked
        source = cut.recording.sources[0]
        if source.type != "file":
            report.problems.append(
                Problem(src, "unreadable_audio", f"audio source type {source.type!r} is not supported (only files)")
            )
            continue
        new = _make_cut(
            cut.id,
            Path(source.source),
            text,
            language,
            report,
            src,
            offset=cut.start,
            duration=cut.duration,
            is_segment=True,
            language_detected=not sup.language,
        )
        if new is not None:
            cuts.append(new)
    return _finish(cuts, report, policy)


def from_shar(path: str | Path, policy: BadSamplePolicy = "error") -> tuple[CutSet, ValidationReport]:
    """A Lhotse Shar directory (cuts + audio shards). The cuts keep their Shar audio; ``AsrDataset`` decodes it."""
    path = Path(path)
    if not path.is_dir() or not any(path.glob("cuts.*.jsonl*")):
        raise ManifestError(f"{path}: not a Lhotse Shar directory (no cuts.NNNNNN.jsonl.gz shards)")
    report = ValidationReport(f"shar:{path}")
    cuts = []
    for cut in CutSet.from_shar(in_dir=path):
        report.n_rows += 1
        src = f"shar:{path}:{cut.id}"
        checked = _supervision(cut, src, report)
        if checked is None:
            continue
        sup, text, language = checked
        if cut.duration <= 0:
            report.problems.append(Problem(src, "empty_audio", "zero-length cut"))
            continue
        custom = {**(sup.custom or {}), "language_detected": True} if not sup.language else sup.custom
        cut.supervisions = [fastcopy(sup, text=text, language=language, custom=custom)]
        report.n_ok += 1
        report.total_seconds += cut.duration
        report.sample_rates[cut.sampling_rate] = report.sample_rates.get(cut.sampling_rate, 0) + 1
        cuts.append(cut)
    return _finish(cuts, report, policy)


def from_kaldi_dir(
    path: str | Path, policy: BadSamplePolicy = "error", language: str | None = None
) -> tuple[CutSet, ValidationReport]:
    """A Kaldi data directory: ``wav.scp`` (``rec_id path``), ``text`` (``utt_id words``), optional
    ``segments`` (``utt_id rec_id start end``) and ``utt2lang``."""
    path = Path(path)
    report = ValidationReport(str(path))

    def table(name: str) -> dict[str, str]:
        f = path / name
        out: dict[str, str] = {}
        if not f.is_file():
            return out
        for lineno, raw in _iter_lines(f):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                report.problems.append(Problem(f"{f}:{lineno}", "non_utf8", "line is not valid UTF-8"))
                continue
            key, _, value = line.partition(" ")
            out[key] = value.strip()
        return out

    if not (path / "wav.scp").is_file() or not (path / "text").is_file():
        raise ManifestError(f"{path} is not a Kaldi data directory (needs wav.scp and text)")
    wavs, texts, segments, langs = table("wav.scp"), table("text"), table("segments"), table("utt2lang")
    cuts = []
    rows = segments if segments else {k: f"{k} 0 -1" for k in wavs}
    for utt, seg in rows.items():
        report.n_rows += 1
        src = f"{path}:{utt}"
        rec_id, start, end = seg.split()[:3]
        wav = wavs.get(rec_id)
        if wav is None or wav.endswith("|"):
            msg = (
                f"recording {rec_id} not in wav.scp"
                if wav is None
                else f"piped wav.scp entries are not supported: {wav}"
            )
            report.problems.append(Problem(src, "missing_audio" if wav is None else "unreadable_audio", msg))
            continue
        text = _check_text(texts.get(utt), src, report)
        if text is None:
            continue
        lang = normalise_language(langs.get(utt, language), text)
        if lang is None:
            report.problems.append(Problem(src, "bad_language", f"unknown language {langs.get(utt, language)!r}"))
            continue
        offset, stop = float(start), float(end)
        cut = _make_cut(
            utt,
            Path(wav),
            text,
            lang,
            report,
            src,
            offset=offset,
            duration=None if stop < 0 else stop - offset,
            is_segment=True,
            language_detected=not langs.get(utt, language),
        )
        if cut is not None:
            cuts.append(cut)
    report.n_rows += sum(1 for p in report.problems if p.kind == "non_utf8")
    return _finish(cuts, report, policy)


def from_hf_dataset(
    dataset: Any,
    cache_dir: str | Path,
    audio_column: str = "audio",
    text_column: str = "text",
    language: str | None = None,
    policy: BadSamplePolicy = "error",
    name: str = "hf",
) -> tuple[CutSet, ValidationReport]:
    """A ``datasets.Dataset`` split with an audio column. Audio held as bytes is written once to
    ``cache_dir`` (FLAC/WAV as stored) so cuts always point to files."""
    from datasets import Audio

    ds = dataset.cast_column(audio_column, Audio(decode=False))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report = ValidationReport(f"{name}")
    cuts = []
    for i, row in enumerate(ds):
        report.n_rows += 1
        src = f"{name}[{i}]"
        text = _check_text(row.get(text_column), src, report)
        if text is None:
            continue
        lang = normalise_language(row.get("language", language), text)
        if lang is None:
            report.problems.append(Problem(src, "bad_language", f"unknown language {row.get('language', language)!r}"))
            continue
        audio = row[audio_column]
        if audio.get("bytes"):
            suffix = Path(audio.get("path") or "x.wav").suffix or ".wav"
            target = cache_dir / f"{name.replace('/', '_')}_{i:08d}{suffix}"
            if not target.exists():
                from common.io import atomic_write_bytes

                atomic_write_bytes(target, audio["bytes"])
            apath = target
        else:
            apath = Path(audio.get("path") or "")
        cut = _make_cut(
            f"{name}_{i:08d}", apath, text, lang, report, src, language_detected=not row.get("language", language)
        )
        if cut is not None:
            cuts.append(cut)
    return _finish(cuts, report, policy)


def load_manifest(
    spec: str | Path, policy: BadSamplePolicy = "error", cache_dir: str | Path | None = None, audio_only: bool = False
) -> tuple[CutSet, ValidationReport]:
    """Read any supported manifest (format chosen from ``spec``); see the module doc. ``audio_only`` (JSONL manifests):
    rows need no transcript and any transcript is dropped (every cut's text is empty)."""
    s = str(spec)
    if audio_only:
        p = Path(s) / "manifest.jsonl" if Path(s).is_dir() else Path(s)
        if not p.is_file() or _looks_like_lhotse(p):
            raise ManifestError(f"{spec}: audio-only training data must be a JSONL manifest (audio_filepath per row)")
        return from_jsonl(p, policy, audio_only=True)
    if s.startswith("shar:"):
        return from_shar(s[len("shar:") :], policy)
    if s.startswith("hf:"):
        from datasets import load_dataset, load_from_disk

        ref = s[3:]
        name, _, split = ref.partition(":")
        ds = load_from_disk(name) if Path(name).is_dir() else load_dataset(name, split=split or "test")
        if split and hasattr(ds, "keys"):
            ds = ds[split]
        from common.paths import cache_root

        return from_hf_dataset(
            ds,
            cache_dir or cache_root() / "hf_audio",
            policy=policy,
            name=Path(name).name + (f"_{split}" if split else ""),
        )
    p = Path(s)
    if p.is_dir():
        if (p / "wav.scp").is_file():
            return from_kaldi_dir(p, policy)
        if (p / "manifest.jsonl").is_file():
            return from_jsonl(p / "manifest.jsonl", policy)
        raise ManifestError(f"{p}: a directory that is neither a Kaldi data dir nor holds manifest.jsonl")
    if not p.is_file():
        raise ManifestError(f"manifest not found: {p}")
    if _looks_like_lhotse(p):
        return from_lhotse(p, policy)
    return from_jsonl(p, policy)


def _looks_like_lhotse(p: Path) -> bool:
    try:
        for _, raw in _iter_lines(p):
            row = json.loads(raw.decode("utf-8"))
            return isinstance(row, dict) and ("recording" in row or row.get("type") in ("MonoCut", "MultiCut"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return False
    return False


def set_name(spec: str | Path) -> str:
    """A test-set name for a manifest: its parent folder (or the directory itself)."""
    p = Path(str(spec).removeprefix("hf:").removeprefix("shar:"))
    if str(spec).startswith("shar:") and p.name == "shar":
        return p.parent.name
    if p.is_dir():
        return p.name
    return p.parent.name or p.stem


def write_jsonl_subset(
    src: str | Path, out: str | Path, rows: slice | None = None, language: str | None = None, audio_only: bool = False
) -> Path:
    """Write some rows of a JSONL manifest to ``out`` with absolute audio paths (so the copy is valid anywhere):
    ``rows`` selects by position, ``language`` keeps one language, ``audio_only`` drops the transcripts (``text``) -
    untranscribed audio for teacher labelling or on-policy distillation. Written atomically; returns ``out``."""
    from common.io import atomic_write_text

    src, out = Path(src), Path(out)
    lines = [json.loads(line) for _, line in _iter_lines(src)]
    picked = []
    for r in lines[rows] if rows is not None else lines:
        if language is not None and r.get("language") != language:
            continue
        r = dict(r, audio_filepath=str((src.parent / r["audio_filepath"]).resolve()))
        if audio_only:
            r.pop("text", None)
        picked.append(json.dumps(r, ensure_ascii=False) + "\n")
    atomic_write_text(out, "".join(picked))
    return out
