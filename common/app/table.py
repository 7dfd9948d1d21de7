"""Result tables from run directories (``asr-distill table``): rows = systems, columns = test sets, the error rate
in each set's own unit (CER for Mandarin, WER for English) with a 95 % bootstrap confidence interval, in markdown and
LaTeX, optionally beside a paper's own numbers.

Confidence interval: utterances are resampled with replacement ``n_boot`` times (seeded); each resample's
corpus-level rate is sum(S+D+I) / sum(reference units); the interval is the 2.5 / 97.5 percentiles of those rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.runs import RunError, set_results, utterance_errors

# Papers' own numbers (Ark-ASR arXiv 2605.28139 Table 1, ASKD-Whisper arXiv 2601.19919), keyed by the set names
# our data recipes write.
PAPERS: dict[str, dict[str, Any]] = {
    "ark_table1": {
        "title": "Ark-ASR (arXiv 2605.28139) Table 1, greedy",
        "columns": {
            "aishell1_test": "AISHELL-1",
            "wenetspeech_test_meeting": "WenetSpeech Meeting",
            "wenetspeech_test_net": "WenetSpeech Net",
            "librispeech_test_clean": "LS test-clean",
            "librispeech_test_other": "LS test-other",
        },
        "rows": {
            "ark_base_sft": ("Ark-Base (SFT)", [3.48, 10.22, 7.74, 3.75, 7.17]),
            "ark_base_opd": ("Ark-Base + OPD", [3.00, 7.18, 6.13, 2.88, 5.50]),
            "ark_base_td_opd": ("Ark-Base + TD + OPD", [1.95, 5.92, 5.39, 2.45, 4.56]),
            "qwen3_asr_0.6b": ("Qwen3-ASR-0.6B", [2.07, 5.57, 5.45, 2.81, 5.05]),
            "qwen3_asr_1.7b": ("Qwen3-ASR-1.7B", [1.50, 4.69, 4.55, 2.20, 4.05]),
        },
    },
    "askd": {
        "title": "ASKD-Whisper (arXiv 2601.19919), third-party numbers attributed to it",
        "columns": {
            "librispeech_test_clean": "LS test-clean",
            "librispeech_test_other": "LS test-other",
            "ami_ihm_test": "AMI",
        },
        "rows": {"askd": ("ASKD-Whisper student (~740M)", [2.34, 4.52, 10.6])},
    },
}


@dataclass
class Cell:
    rate: float  # percent
    lo: float
    hi: float
    n_utts: int
    unit: str  # WER | CER
    n_skipped: int = 0  # utterances of the set not scored (invalid rows, unreadable or too long audio)
    manifest_id: Optional[str] = None  # the test set's identity (a digest of its manifest)


@dataclass
class Row:
    name: str
    cells: dict[str, Cell] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # e.g. swept knob values


def bootstrap_ci(
    errors: Sequence[float], ref_units: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Corpus-level rate sum(errors)/sum(ref_units) and its (1 - alpha) percentile bootstrap interval."""
    e = np.asarray(errors, dtype=np.float64)
    n = np.asarray(ref_units, dtype=np.float64)
    if e.shape != n.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError("errors and ref_units must be equal-length, non-empty 1-D sequences")
    if n.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    rate = e.sum() / n.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(e), size=(n_boot, len(e)))
    num, den = e[idx].sum(1), n[idx].sum(1)
    boots = num[den > 0] / den[den > 0]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(rate), float(lo), float(hi)


def paired_bootstrap_delta(
    errors_a: Sequence[float],
    ref_units_a: Sequence[float],
    errors_b: Sequence[float],
    ref_units_b: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Difference of corpus-level error rates, system a minus system b, on the same utterances (row i of both is
    utterance i), and its (1 - alpha) paired percentile bootstrap interval: every resample draws one set of
    utterance indices and applies it to both systems (Koehn 2004; Bisani & Ney 2004), so the utterance-to-utterance
    variation they share cancels and the interval is much narrower than two independent intervals would suggest.
        delta = sum(e_a) / sum(n_a) - sum(e_b) / sum(n_b)
    """
    ea, na, eb, nb = (np.asarray(x, dtype=np.float64) for x in (errors_a, ref_units_a, errors_b, ref_units_b))
    if not (ea.shape == na.shape == eb.shape == nb.shape) or ea.ndim != 1 or len(ea) == 0:
        raise ValueError("paired comparison: both systems need per-utterance errors for the same utterances")
    if na.sum() <= 0 or nb.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    delta = ea.sum() / na.sum() - eb.sum() / nb.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ea), size=(n_boot, len(ea)))
    den_a, den_b = na[idx].sum(1), nb[idx].sum(1)
    ok = (den_a > 0) & (den_b > 0)
    boots = ea[idx].sum(1)[ok] / den_a[ok] - eb[idx].sum(1)[ok] / den_b[ok]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(delta), float(lo), float(hi)


@dataclass
class Comparison:
    a: str
    b: str
    set: str
    delta: float  # percentage points, a - b
    lo: float
    hi: float
    n_utts: int
    unit: str

    @property
    def verdict(self) -> str:
        """Which system is better, only when the interval excludes zero."""
        if self.hi < 0:
            return f"{self.a} better"
        if self.lo > 0:
            return f"{self.b} better"
        return "no significant difference"


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    name_a: Optional[str] = None,
    name_b: Optional[str] = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Comparison]:
    """Paired comparisons of two runs on every test set they both evaluated; the utterances are matched by id and
    must be the same in both (else the two runs were not scored on the same set: refused)."""
    name_a, name_b = name_a or Path(run_a).name, name_b or Path(run_b).name
    sets_a, sets_b = set_results(run_a), set_results(run_b)
    out = []
    for set_name in [s for s in sets_a if s in sets_b]:
        ua = {u["id"]: u for u in utterance_errors(run_a, set_name)}
        ub = {u["id"]: u for u in utterance_errors(run_b, set_name)}
        if set(ua) != set(ub):
            raise RunError(
                f"set {set_name}: {run_a} and {run_b} scored different utterances ({len(set(ua) ^ set(ub))} differ); "
                "a paired comparison needs the same test set"
            )
        ids = sorted(ua)
        err = lambda u: u["sub"] + u["del"] + u["ins"]  # noqa: E731
        d, lo, hi = paired_bootstrap_delta(
            [err(ua[i]) for i in ids],
            [ua[i]["ref_units"] for i in ids],
            [err(ub[i]) for i in ids],
            [ub[i]["ref_units"] for i in ids],
            n_boot,
            seed,
        )
        unit = sets_a[set_name].get("metric", "WER")
        out.append(Comparison(name_a, name_b, set_name, 100 * d, 100 * lo, 100 * hi, len(ids), unit))
    return out


def comparisons_markdown(comps: Sequence[Comparison]) -> str:
    lines = [
        "| a | b | set | a - b (points) | 95 % paired CI | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comps:
        lines.append(
            f"| {c.a} | {c.b} | {c.set} ({c.unit}, {c.n_utts} utts) | {c.delta:+.2f} | [{c.lo:+.2f}, {c.hi:+.2f}] "
            f"| {c.verdict} |"
        )
    return "\n".join(lines) + (
        "\nPaired bootstrap over utterances (the same resampled utterances for both systems); a system is called "
        "better only when the interval excludes zero.\n"
    )


def run_row(run_dir: str | Path, name: Optional[str] = None, n_boot: int = 1000, seed: int = 0) -> Row:
    """One table row from a run directory: every evaluated set, rate and CI from the per-utterance errors."""
    sets = set_results(run_dir)
    row = Row(name or Path(run_dir).name)
    for set_name, res in sets.items():
        utts = utterance_errors(run_dir, set_name)
        errs = [u["sub"] + u["del"] + u["ins"] for u in utts]
        refs = [u["ref_units"] for u in utts]
        if not utts:
            continue
        rate, lo, hi = bootstrap_ci(errs, refs, n_boot, seed)
        if res.get("error_rate") is not None and abs(rate - res["error_rate"]) > 1e-9:
            raise RunError(
                f"{run_dir}: set {set_name}: per-utterance errors ({rate:.6f}) disagree with summary.json "
                f"({res['error_rate']:.6f})"
            )
        skipped = res.get("n_skipped", 0) + res.get("n_invalid_rows", 0)
        row.cells[set_name] = Cell(
            100 * rate, 100 * lo, 100 * hi, len(utts), res.get("metric", "WER"), skipped, res.get("manifest_digest")
        )
    return row


def _paper_key(row_name: str, paper: dict[str, Any]) -> Optional[str]:
    key = row_name.lower().replace("-", "_")
    return key if key in paper["rows"] else None


def _fmt(c: Optional[Cell], ci: bool) -> str:
    if c is None or np.isnan(c.rate):
        return "-"
    return f"{c.rate:.2f} [{c.lo:.2f}, {c.hi:.2f}]" if ci else f"{c.rate:.2f}"


def _columns(rows: list[Row], paper: Optional[dict[str, Any]]) -> list[str]:
    if paper is not None:
        cols = list(paper["columns"])
        return cols + sorted({s for r in rows for s in r.cells} - set(cols))
    seen: list[str] = []
    for r in rows:
        seen += [s for s in r.cells if s not in seen]
    return seen


def _header(col: str, rows: list[Row], paper: Optional[dict[str, Any]]) -> str:
    units = {r.cells[col].unit for r in rows if col in r.cells}
    label = (paper or {}).get("columns", {}).get(col, col)
    return f"{label} {'/'.join(sorted(units)) or ''} %".replace("  ", " ")


def build_table(rows: list[Row], paper_name: Optional[str] = None, ci: bool = True) -> dict[str, Any]:
    """Rows x columns of formatted cells (ours, and the paper's where it has the row and column)."""
    paper = PAPERS[paper_name] if paper_name else None
    if paper_name and paper is None:
        raise ValueError(f"unknown paper table {paper_name!r} (known: {', '.join(PAPERS)})")
    rows, notes = _split_colliding_sets(rows)
    cols = _columns(rows, paper)
    extra_keys = list(dict.fromkeys(k for r in rows for k in r.extra))  # the sweep's knob order
    header = ["system"] + extra_keys
    for c in cols:
        header.append(_header(c, rows, paper))
        if paper is not None and c in paper["columns"]:
            header.append(f"{paper['columns'][c]} paper")
    body = []
    paper_rows_used = set()
    for r in rows:
        line = [r.name] + [r.extra.get(k, "") for k in extra_keys]
        pk = _paper_key(r.name, paper) if paper else None
        if pk:
            paper_rows_used.add(pk)
        for c in cols:
            line.append(_fmt(r.cells.get(c), ci))
            if paper is not None and c in paper["columns"]:
                line.append(f"{paper['rows'][pk][1][list(paper['columns']).index(c)]:.2f}" if pk else "")
        body.append(line)
    if paper is not None:  # the paper's rows we did not run, for reference
        for pk, (label, values) in paper["rows"].items():
            if pk in paper_rows_used:
                continue
            line = [f"{label} (paper only)"] + [""] * len(extra_keys)
            for c in cols:
                line.append("")
                if c in paper["columns"]:
                    line.append(f"{values[list(paper['columns']).index(c)]:.2f}")
            body.append(line)
    skipped = [f"{r.name}: {n} ({c.n_skipped} skipped)" for r in rows for n, c in r.cells.items() if c.n_skipped]
    if skipped:
        notes.append("Utterances not scored (invalid rows, unreadable or too long audio): " + "; ".join(skipped) + ".")
    return {"header": header, "rows": body, "title": paper["title"] if paper else None, "notes": notes}


def _split_colliding_sets(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Sets are columns by name; two different manifests with the same folder name must not share a column: such a
    name becomes one column per manifest (``name@digest``), with a note saying so."""
    ids: dict[str, set[str]] = {}
    for r in rows:
        for name, c in r.cells.items():
            if c.manifest_id:
                ids.setdefault(name, set()).add(c.manifest_id)
    colliding = {n for n, s in ids.items() if len(s) > 1}
    if not colliding:
        return rows, []
    out = []
    for r in rows:
        cells = {(f"{n}@{c.manifest_id[:6]}" if n in colliding and c.manifest_id else n): c for n, c in r.cells.items()}
        out.append(Row(r.name, cells, dict(r.extra)))
    note = (
        f"Set name(s) {', '.join(sorted(colliding))} come from different manifests in these runs: one column per "
        "manifest (name@manifest digest)."
    )
    return out, [note]


def to_markdown(table: dict[str, Any]) -> str:
    lines = [f"**{table['title']}** (paper columns: the paper's own numbers)\n"] if table["title"] else []
    lines.append("| " + " | ".join(table["header"]) + " |")
    lines.append("|" + "---|" * len(table["header"]))
    lines += ["| " + " | ".join(r) + " |" for r in table["rows"]]
    lines.append(
        "\nError rates in %, normalised text, corpus level; [lo, hi]: 95 % bootstrap interval over utterances."
    )
    lines += table.get("notes", [])
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def to_latex(table: dict[str, Any]) -> str:
    n = len(table["header"])
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * (n - 1) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in table["header"]) + r" \\",
        r"\midrule",
    ]
    for r in table["rows"]:
        out.append(
            " & ".join(_tex(c).replace(" [", r" {\scriptsize [").replace("]", "]}") if "[" in c else _tex(c) for c in r)
            + r" \\"
        )
    out += [r"\bottomrule", r"\end{tabular}"]
    cap = "Error rates in \\%, 95\\% bootstrap intervals in brackets."
    if table["title"]:
        cap += " Paper columns: " + _tex(table["title"]) + "."
    out += [r"\caption{" + cap + "}", r"\end{table}"]
    return "\n".join(out) + "\n"
