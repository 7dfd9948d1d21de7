"""Corpus recipes (``asr-distill data prepare CORPUS --corpus-dir DIR --out OUT [--shar]``) through Lhotse's own
recipes: LibriSpeech, AISHELL-1, WenetSpeech, AMI (IHM).

Each corpus part becomes ``OUT/<corpus>_<part>/cuts.jsonl.gz``, one cut per supervised segment (long recordings
are trimmed to their segments), with our language codes (``en`` / ``zh``) on the supervisions. The set name is
the folder name, e.g. ``librispeech_test_clean``, ``aishell1_test``, ``wenetspeech_test_net``, ``ami_ihm_test`` -
the names ``asr-distill table --paper`` matches against the papers' columns. ``--shar`` also writes the cuts with
their audio as Lhotse Shar shards (``OUT/<set>/shar/``, FLAC), the sequential-I/O format for 100k-hour training;
the datamodule reads them as ``shar:OUT/<set>/shar``. Nothing is downloaded: the corpus must be on disk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from lhotse import CutSet
from lhotse.utils import fastcopy

from common.io import atomic_write_json

LANGUAGE = {"librispeech": "en", "aishell1": "zh", "wenetspeech": "zh", "ami": "en"}


def _lhotse_manifests(
    corpus: str, corpus_dir: Path, raw_dir: Path, annotations_dir: Optional[Path], parts: Optional[list[str]] = None
) -> dict:
    from lhotse import recipes

    if corpus == "librispeech":
        return recipes.prepare_librispeech(corpus_dir, dataset_parts=parts or "auto", output_dir=raw_dir)
    if corpus == "aishell1":
        return recipes.prepare_aishell(corpus_dir, output_dir=raw_dir)
    if corpus == "wenetspeech":
        # every listed part must have segments (Lhotse refuses an empty part): e.g. parts=[TEST_NET, TEST_MEETING, DEV]
        return recipes.prepare_wenet_speech(corpus_dir, dataset_parts=parts or "all", output_dir=raw_dir)
    if corpus == "ami":
        if annotations_dir is None:
            raise ValueError("ami: --annotations-dir (the AMI manual annotations, ami_public_manual_1.6.2) is required")
        return recipes.prepare_ami(
            corpus_dir, annotations_dir=annotations_dir, output_dir=raw_dir, mic="ihm", partition="full-corpus-asr"
        )
    raise ValueError(f"unknown corpus {corpus!r} (known: {', '.join(LANGUAGE)})")


def set_name(corpus: str, part: str) -> str:
    part = re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_")
    return f"{corpus}_ihm_{part}" if corpus == "ami" else f"{corpus}_{part}"


def prepare(
    corpus: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    shar: bool = False,
    shar_shard_size: int = 1000,
    annotations_dir: Optional[str | Path] = None,
    parts: Optional[list[str]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Prepare the parts of ``corpus`` (LibriSpeech / WenetSpeech: ``parts``, default every part found / all);
    returns set name -> cut manifest."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if corpus not in LANGUAGE:
        raise ValueError(f"unknown corpus {corpus!r} (known: {', '.join(LANGUAGE)})")
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus directory {corpus_dir} not found")
    lang = LANGUAGE[corpus]
    manifests = _lhotse_manifests(
        corpus, corpus_dir, out_dir / f".lhotse_{corpus}", Path(annotations_dir) if annotations_dir else None, parts
    )
    if parts:
        manifests = {k: v for k, v in manifests.items() if k in parts}
    if not manifests:
        raise ValueError(f"{corpus}: no corpus parts found under {corpus_dir}")
    out: dict[str, Path] = {}
    for part, m in sorted(manifests.items()):
        if not m.get("supervisions"):
            continue
        cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"])
        cuts = cuts.trim_to_supervisions(keep_overlapping=False)
        cuts = cuts.map_supervisions(lambda s: fastcopy(s, language=lang)).to_eager()
        name = set_name(corpus, part)
        dest = out_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / ".cuts.tmp.jsonl.gz"
        cuts.to_file(tmp)
        tmp.replace(dest / "cuts.jsonl.gz")  # atomic
        info = {
            "corpus": corpus,
            "part": part,
            "n_cuts": len(cuts),
            "hours": round(sum(c.duration for c in cuts) / 3600, 4),
            "language": lang,
        }
        if shar:
            (dest / "shar").mkdir(exist_ok=True)
            shards = cuts.to_shar(dest / "shar", fields={"recording": "flac"}, shard_size=shar_shard_size)
            info["shar_shards"] = len(shards["cuts"])
        atomic_write_json(dest / "info.json", info)
        log(
            f"{name}: {info['n_cuts']} cuts, {info['hours']} h -> {dest / 'cuts.jsonl.gz'}"
            + (" (+ Shar)" if shar else "")
        )
        out[name] = dest / "cuts.jsonl.gz"
    return out
