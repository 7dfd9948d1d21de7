"""A synthetic English and Mandarin speech corpus: a seeded sentence generator + espeak-ng.

Layout written under ``out_dir`` (one folder per language and split, so a manifest's parent folder
names the test set)::

    en_train/manifest.jsonl  en_train/audio/*.flac   en_dev/...  en_test/...
    zh_train/...             zh_dev/...              zh_test/...
    synth.json               (the arguments; written last, marks the corpus complete)

Deterministic by seed: the same arguments give the same texts, voices and samples. A second call with
the same arguments finds ``synth.json`` and does nothing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from common.audio import TARGET_SR, resample, write_flac
from common.io import atomic_write_json, atomic_write_text

SPLITS = ("train", "dev", "test")

# ----------------------------------------------------------------------------------------------
# Sentence generators (the vocabulary is ours; combinations give tens of millions of sentences)
# ----------------------------------------------------------------------------------------------
_EN = {
    "name": [
        "alice",
        "bob",
        "carol",
        "david",
        "emma",
        "frank",
        "grace",
        "henry",
        "julia",
        "kevin",
        "laura",
        "michael",
        "nina",
        "oliver",
        "paula",
        "robert",
        "sarah",
        "thomas",
        "victor",
        "wendy",
    ],
    "adj": [
        "small",
        "large",
        "red",
        "green",
        "blue",
        "old",
        "new",
        "quiet",
        "busy",
        "bright",
        "dark",
        "warm",
        "cold",
        "heavy",
        "light",
        "quick",
        "slow",
        "happy",
        "careful",
        "strange",
        "empty",
        "golden",
        "wooden",
        "simple",
    ],
    "noun": [
        "dog",
        "cat",
        "house",
        "car",
        "river",
        "garden",
        "window",
        "teacher",
        "doctor",
        "farmer",
        "letter",
        "book",
        "table",
        "train",
        "city",
        "bridge",
        "market",
        "student",
        "kitchen",
        "mountain",
        "forest",
        "picture",
        "village",
        "island",
        "station",
        "machine",
        "computer",
        "report",
        "meeting",
        "song",
    ],
    "place": [
        "the park",
        "the station",
        "the office",
        "the library",
        "the market",
        "the hospital",
        "the school",
        "the museum",
        "the harbour",
        "the airport",
        "the village",
        "the kitchen",
    ],
    "verb_past": [
        "found",
        "painted",
        "opened",
        "closed",
        "carried",
        "watched",
        "cleaned",
        "moved",
        "visited",
        "built",
        "sold",
        "bought",
        "fixed",
        "followed",
        "described",
        "remembered",
        "noticed",
        "finished",
    ],
    "verb_inf": [
        "read",
        "write",
        "visit",
        "clean",
        "repair",
        "paint",
        "explain",
        "open",
        "deliver",
        "count",
        "check",
        "describe",
        "carry",
        "measure",
    ],
    "time": [
        "yesterday",
        "today",
        "this morning",
        "last week",
        "on monday",
        "in the evening",
        "after lunch",
        "before dinner",
        "every day",
        "at night",
        "next year",
        "in the spring",
    ],
    "number": [
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "one hundred",
    ],
}
_EN_TEMPLATES = [
    "{name} {verb_past} the {adj} {noun} {time}",
    "the {adj} {noun} was near {place}",
    "{name} wants to {verb_inf} the {noun} at {place}",
    "there are {number} {noun}s in {place}",
    "{time} {name} and {name2} {verb_past} a {adj} {noun}",
    "please {verb_inf} the {adj} {noun} before {name} arrives",
    "we saw {number} {adj} {noun}s {time}",
    "the {noun} in {place} is very {adj}",
    "did {name} {verb_inf} the {noun} {time}",
    "{name} said that the {noun} looked {adj}",
]
_ZH = {
    "name": ["小明", "小红", "王老师", "李医生", "张先生", "刘阿姨", "我们", "他们", "我", "你", "她", "同学们"],
    "time": ["今天", "明天", "昨天", "上午", "下午", "晚上", "周末", "现在", "去年", "明年"],
    "place": ["北京", "上海", "学校", "医院", "公司", "市场", "图书馆", "公园", "车站", "家里", "饭店", "银行"],
    "verb_obj": [
        "看书",
        "写字",
        "吃饭",
        "开会",
        "上课",
        "买菜",
        "打电话",
        "做作业",
        "听音乐",
        "学习中文",
        "工作",
        "休息",
        "买东西",
        "看电影",
        "喝茶",
    ],
    "adj": ["很好", "很大", "很忙", "很热", "很冷", "很高兴", "很漂亮", "很安静", "很干净", "很重要"],
    "noun": ["天气", "房子", "城市", "问题", "学生", "朋友", "电脑", "手机", "衣服", "水果", "汽车", "飞机"],
    "number": ["一", "两", "三", "四", "五", "六", "七", "八", "九", "十"],
    "measure": ["个", "本", "辆", "件", "张"],
}
_ZH_TEMPLATES = [
    "{name}{time}在{place}{verb_obj}",
    "{time}的{noun}{adj}",
    "{name}想去{place}{verb_obj}",
    "{place}有{number}{measure}{noun}",
    "{name}{time}要去{place}",
    "这个{noun}{adj}",
    "{name}觉得{place}{adj}",
    "{name}和{name2}一起{verb_obj}",
]


# The shifted English domain (``domain: shifted``, an out-of-domain test set): a vocabulary and sentence styles (wh-
# questions, requests, clauses) that the standard generator never writes; its voices, variants, rates and pitches
# below are disjoint from the standard ones as well (tests check both).
_EN_SHIFTED = {
    "name": ["margaret", "william", "sophia", "george", "lucy", "arthur", "isabel", "samuel", "hannah", "edgar"],
    "adj": ["shiny", "broken", "dusty", "narrow", "frozen", "tiny", "famous", "ancient", "muddy", "curious"],
    "noun": [
        "violin",
        "tractor",
        "lantern",
        "bicycle",
        "telescope",
        "umbrella",
        "pumpkin",
        "blanket",
        "ladder",
        "sandwich",
        "kettle",
        "helmet",
    ],
    "place": ["the bakery", "the factory", "the stadium", "the castle", "the theatre", "the beach", "the farm"],
    "verb_past": ["repaired", "borrowed", "dropped", "washed", "hid", "polished", "lost", "wrapped", "lifted"],
    "time": ["on friday", "that summer", "at dawn", "tomorrow afternoon", "during the storm", "around noon"],
    "number": ["thirteen", "fourteen", "fifteen", "sixteen", "eighteen", "sixty", "seventy", "ninety"],
}
_EN_SHIFTED_TEMPLATES = [
    "where did {name} put the {adj} {noun} {time}",
    "how many {noun}s did {name} see at {place}",
    "{name} {verb_past} the {noun} because it was {adj}",
    "if it rains {time} {name} will stay at {place}",
    "could you bring the {adj} {noun} to {place}",
    "after {name} {verb_past} the {noun} everybody went to {place}",
    "{number} {adj} {noun}s were found near {place} {time}",
    "nobody knew why {name} {verb_past} the {noun}",
]
_QUESTION_WORDS = {"did", "where", "how", "could"}


def generate_sentence(rng: random.Random, language: str, domain: str = "standard") -> str:
    """One sentence from the language's templates (lower-case English without punctuation, Mandarin Han);
    ``domain="shifted"``: English from the shifted vocabulary and sentence styles."""
    if domain == "shifted":
        lex, templates = _EN_SHIFTED, _EN_SHIFTED_TEMPLATES
    else:
        lex, templates = (_EN, _EN_TEMPLATES) if language == "en" else (_ZH, _ZH_TEMPLATES)
    tpl = rng.choice(templates)
    values = {k: rng.choice(v) for k, v in lex.items()}
    values["name2"] = rng.choice([n for n in lex["name"] if n != values["name"]])
    return tpl.format(**values)


_CAPITALISED = set(_EN["name"]) | set(_EN_SHIFTED["name"]) | {"monday", "friday"}


def written_form(sentence: str, language: str) -> str:
    """A generated sentence in written convention: 'did laura open the car' -> 'Did Laura open the car?'."""
    if language != "en":
        return sentence + "。"
    words = [w.capitalize() if w in _CAPITALISED else w for w in sentence.split()]
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("?" if words[0] in _QUESTION_WORDS else ".")


# ----------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------
_VOICES = {
    "en": ["en-us", "en", "en-gb-x-rp", "en-us-nyc", "en-gb-scotland", "en-029"],
    "zh": ["cmn"],
}
_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+f1", "+f2", "+f3", "+f4"]
RATES, PITCHES = (120, 175), (30, 70)  # words per minute, espeak pitch 0-99

_SHIFTED_VOICES = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]  # accents the standard voices do not have
_SHIFTED_VARIANTS = ["+m5", "+m6", "+m7", "+f5", "+klatt", "+klatt3", "+edward", "+linda"]
_SHIFTED_RATES, _SHIFTED_PITCHES = ((90, 112), (185, 215)), ((10, 26), (74, 90))  # slower/faster, lower/higher


@dataclass
class SynthConfig:
    """Arguments of ``asr-distill data synth`` (the cache key is their JSON)."""

    out_dir: str = "data/synth"
    """Where the corpus is written."""
    seed: int = 0
    """Seed of the sentence generator, voices, rates, pitches and noise."""
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Languages to synthesise (en, zh)."""
    en_sizes: list[int] = field(default_factory=lambda: [1200, 100, 100])
    """English utterances in train, dev, test."""
    zh_sizes: list[int] = field(default_factory=lambda: [400, 50, 50])
    """Mandarin utterances in train, dev, test."""
    noise_prob: float = 0.3
    """Probability that white noise is added to an utterance."""
    snr_db: list[float] = field(default_factory=lambda: [15.0, 35.0])
    """Range of the signal-to-noise ratio (dB) of added noise."""
    text_style: Literal["plain", "written"] = "plain"
    """plain: lower-case English without punctuation; written: the convention of Whisper's (and Qwen3-ASR's) output -
    sentence case, capitalised names and weekdays, final '.' or '?' (Mandarin: final '。'). Train a student that a
    teacher distils toward on the teacher's convention (scoring normalises both away)."""
    domain: Literal["standard", "shifted"] = "standard"
    """standard: the corpus's own voices, rates, pitches and sentences; shifted (English only): an out-of-domain set -
    two accents, voice variants, speaking rates, pitches, a vocabulary and sentence styles (questions, requests,
    clauses) that the standard corpus never has."""

    def __post_init__(self) -> None:
        for lang in self.languages:
            if lang not in _VOICES:
                raise ValueError(f"languages: unknown language {lang!r} (known: en, zh)")
        if self.domain == "shifted" and any(self.zh_sizes) and "zh" in self.languages:
            raise ValueError("domain: shifted exists for English only (set zh_sizes to [0, 0, 0])")
        for name in ("en_sizes", "zh_sizes"):
            sizes = getattr(self, name)
            if len(sizes) != 3 or min(sizes) < 0:
                raise ValueError(f"{name}: expected three non-negative sizes (train, dev, test), got {sizes}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")


def _add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    power = float(np.mean(wave**2)) + 1e-12
    noise = rng.standard_normal(wave.shape).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return wave + noise


def _plan(cfg: SynthConfig) -> dict[tuple[str, str], list[dict]]:
    """Texts, voices, rates, pitches and noise levels of every utterance (no audio yet)."""
    plan: dict[tuple[str, str], list[dict]] = {}
    for lang in cfg.languages:
        seen: set[str] = set()  # texts are disjoint across splits, so dev/test measure generalisation
        for split, n in zip(SPLITS, getattr(cfg, f"{lang}_sizes")):
            if n == 0:  # no empty split directories
                continue
            rng = random.Random(f"{cfg.seed}-{lang}-{split}")
            rows = []
            for i in range(n):
                text = generate_sentence(rng, lang, cfg.domain)
                while text in seen:
                    text = generate_sentence(rng, lang, cfg.domain)
                seen.add(text)
                if cfg.text_style == "written":
                    text = written_form(text, lang)
                if cfg.domain == "shifted":
                    voice = rng.choice(_SHIFTED_VOICES) + rng.choice(_SHIFTED_VARIANTS)
                    rate, pitch = rng.randint(*rng.choice(_SHIFTED_RATES)), rng.randint(*rng.choice(_SHIFTED_PITCHES))
                else:
                    voice = rng.choice(_VOICES[lang]) + rng.choice(_VARIANTS)
                    rate, pitch = rng.randint(*RATES), rng.randint(*PITCHES)
                snr = rng.uniform(*cfg.snr_db) if rng.random() < cfg.noise_prob else None
                uid = f"synth_{lang}{'' if cfg.domain == 'standard' else '_shifted'}_{split}_{i:05d}"
                rows.append(
                    {
                        "audio_filepath": f"audio/{uid}.flac",
                        "text": text,
                        "language": lang,
                        "id": uid,
                        "voice": voice,
                        "rate": rate,
                        "pitch": pitch,
                        "snr_db": None if snr is None else round(snr, 1),
                    }
                )
            plan[(lang, split)] = rows
    return plan


def _synth_split(split_dir: str, rows: list[dict], noise_seed: int, threads: int) -> int:
    """Synthesise one split (run in a fresh process: espeak-ng output depends on the engine's earlier calls,
    so only a fresh engine makes the corpus reproducible). ``threads``: torch's intra-op threads for the resampling,
    the process's share of the cores (the pool runs one split per core: with every process at torch's default, one
    thread per core each, their OpenMP threads contend; bench/corpus.py: the demo's corpora 69 s instead of 23 on 2
    cores, the same bytes either way)."""
    import torch

    from common.data.tts import Espeak

    torch.set_num_threads(threads)
    tts = Espeak.get()
    nrng = np.random.default_rng(noise_seed)
    out = []
    for i, row in enumerate(rows):
        raw = tts.synth(row["text"], voice=row["voice"], rate=row["rate"], pitch=row["pitch"], seed=noise_seed + i)
        wave = resample(raw, tts.sample_rate, TARGET_SR)
        wave = wave / max(1e-3, float(np.abs(wave).max())) * 0.8
        if row["snr_db"] is not None:
            wave = _add_noise(wave, nrng, row["snr_db"])
        write_flac(Path(split_dir) / row["audio_filepath"], wave, TARGET_SR)
        out.append({**row, "duration": round(len(wave) / TARGET_SR, 4)})
    atomic_write_text(
        Path(split_dir) / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    )
    return len(out)


class CorpusMismatchError(ValueError):
    """``out_dir`` holds a corpus synthesised with other arguments (it is not overwritten unless asked)."""


def synthesize_corpus(
    cfg: SynthConfig, progress: bool = True, workers: int | None = None, replace: bool = False
) -> Path:
    """Write the corpus (see module doc); return ``out_dir``. Cached by the arguments.

    Each (language, split) is synthesised in a fresh spawned process, ``workers`` at a time. A directory that holds a
    finished corpus of other arguments is refused (:class:`CorpusMismatchError`, naming it and the arguments that
    differ) unless ``replace``: its audio files are another corpus's under the same names, and runs reading it would
    train on other audio (``make demo`` replaces its own cached corpus when its config changes).
    """
    return synthesize_corpora([cfg], progress, workers, replace)[0]


def synthesize_corpora(
    cfgs: list[SynthConfig],
    progress: bool = True,
    workers: int | None = None,
    replace: bool = False,
    threads: int | None = None,
) -> list[Path]:
    """:func:`synthesize_corpus` for several corpora in one process pool (their ``out_dir``\\ s, in order): every
    split of every corpus that is not cached is a task, the largest first, so that a small corpus's split runs beside
    a large one's instead of after it (the demo's 1300-utterance train split and its 300-utterance ``en_ood``). The
    audio is the same as corpus by corpus: each split runs in its own fresh process either way. Every corpus is
    checked (cached / :class:`CorpusMismatchError`) before any is synthesised; a corpus's stamp is written when its
    own splits have finished. ``threads``: torch threads per process (default: the cores over ``workers``)."""

    from tqdm import tqdm

    todo = []  # (cfg, args, plan) of the corpora to synthesise
    for cfg in cfgs:
        out = Path(cfg.out_dir)
        stamp = out / "synth.json"
        args = asdict(cfg)
        args.pop("out_dir")
        if args["domain"] == "standard":
            args.pop("domain")  # corpora cached before the field existed stay valid
        found = json.loads(stamp.read_text()).get("args") if stamp.is_file() else None
        if found == args:
            continue
        if found is not None and not replace:
            diff = sorted(k for k in set(found) | set(args) if found.get(k) != args.get(k))
            raise CorpusMismatchError(
                f"{out} holds a corpus synthesised with other arguments ({', '.join(diff)}); "
                "use another out_dir, or delete it to synthesise this one there"
            )
        todo.append((cfg, args, _plan(cfg)))
    tasks = sorted(
        ((c, lang, split, rows) for c, (_, _, plan) in enumerate(todo) for (lang, split), rows in plan.items()),
        key=lambda t: -len(t[3]),
    )
    if tasks:
        workers = workers or max(1, min(len(tasks), os.cpu_count() or 1))
        threads = threads or max(1, (os.cpu_count() or 1) // workers)  # each process's share of the cores
        bar = tqdm(total=sum(len(t[3]) for t in tasks), desc="synthesising", disable=not progress, unit="utt")
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
            futures = {
                pool.submit(
                    _synth_split,
                    str(Path(todo[c][0].out_dir) / f"{lang}_{split}"),
                    rows,
                    random.Random(f"{todo[c][0].seed}-{lang}-{split}-noise").getrandbits(63),
                    threads,
                ): c
                for c, lang, split, rows in tasks
            }
            left = [len(plan) for _, _, plan in todo]  # splits still running, per corpus
            for f in as_completed(futures):
                bar.update(f.result())
                c = futures[f]
                left[c] -= 1
                if left[c] == 0:
                    cfg, args, _ = todo[c]
                    stamp = Path(cfg.out_dir) / "synth.json"
                    atomic_write_json(stamp, {"args": args, "generator": "asr-distill synth v2"})
        bar.close()
    return [Path(cfg.out_dir) for cfg in cfgs]
