"""The notebooks run headless (nbclient) against tiny run directories made here, and are stored without outputs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import ark_cfg, askd_cfg

REPO = Path(__file__).resolve().parents[1]

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_and_teacher.ipynb",
        "02_opd_diagnostics.ipynb",
        "03_askd_curriculum.ipynb",
    ]
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, p.name
            if cell["cell_type"] == "code":  # consumers only: no model classes, no optimisation, no training loop
                src = "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
                tree = ast.parse(src)
                assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], p.name
                calls = {
                    n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                    for n in ast.walk(tree)
                    if isinstance(n, ast.Call)
                }
                assert not calls & {"fit", "backward", "Trainer", "step", "zero_grad", "run_fit"}, (p.name, calls)


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory, whisper_tiny):
    """An evaluation run, an ASKD run (both phases) beside a teacher run, and an Ark OPD run with position dumps."""
    from ark_asr.run import fit as ark_fit
    from askd_whisper.run import fit as askd_fit
    from common.evaluate import DecodeConfig, EvalConfig, run_evaluation
    from common.teachers.whisper_teacher import WhisperTeacher

    root = tmp_path_factory.mktemp("nbruns")
    test = str(tiny_corpus / "en_test" / "manifest.jsonl")
    run_evaluation(
        EvalConfig(
            out_dir=str(root / "teacher_tiny.en"),
            model="bundled:tiny.en",
            sets=[test],
            decoding=DecodeConfig(max_new_tokens=24),
        )
    )
    teacher = WhisperTeacher(*whisper_tiny)
    askd_fit(
        askd_cfg(
            tiny_corpus,
            root / "askd_askd",
            trainer={"max_steps": 4},
            data={"test": [test]},
            decoding={"max_new_tokens": 12},
        ),
        teacher=teacher,
    )
    ark_fit(ark_cfg(tiny_corpus, root / "sft", "sft", trainer={"max_steps": 2}, data={"test": []}))
    ark_fit(
        ark_cfg(
            tiny_corpus,
            root / "opd",
            "opd",
            model={"init_from": str(root / "sft")},
            opd={"dump_every": 1},
            trainer={"max_steps": 2},
            data={"test": []},
        ),
        teacher=teacher,
    )
    return {
        "NB_EVAL_RUN": str(root / "teacher_tiny.en"),
        "NB_MANIFEST": test,
        "NB_OPD_RUN": str(root / "opd"),
        "NB_ASKD_RUN": str(root / "askd_askd"),
    }


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_executes(name, runs, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for k, v in runs.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, name
    if name.startswith("01"):
        assert "word errors" in text and "en_test: WER" in text
    if name.startswith("02"):
        assert "dumped batches" in text and "ROLLOUT" in text
    if name.startswith("03"):
        assert "| askd_askd |" in text and "| teacher_tiny.en |" in text
