"""The installed environment is the locked one: consistent (`pip check`), torch and torchaudio a pair that loads, and
the pair the code names as the fix is the pair the lock installs. A lock that drifts fails here, not in a user's run."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from common.audio import LOCKED_TORCH, LOCKED_TORCHAUDIO, DependencyError, torchaudio_functional

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins.setdefault(m.group(1).lower(), m.group(2))
    return pins


def test_pip_check_is_clean():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_torch_torchaudio_pair_loads_and_is_the_locked_pair():
    import torch

    af = torchaudio_functional()  # raises DependencyError on a mismatched pair
    assert af.resample(torch.zeros(160), 16000, 8000).shape == (80,)
    pins = locked_versions()
    assert (pins["torch"], pins["torchaudio"]) == (LOCKED_TORCH, LOCKED_TORCHAUDIO)
    assert version("torch").split("+")[0] == LOCKED_TORCH
    assert version("torchaudio").split("+")[0] == LOCKED_TORCHAUDIO


def test_lock_is_portable():
    """Names and versions only: no index URL, local path or host, so it works with any configured index."""
    text = LOCK.read_text()
    # pip's index and link options, URLs, local paths, direct references (spelled in parts: this file is no lock)
    for bad in (
        "--" + "index-url",
        "--extra-" + "index-url",
        "--find-links",
        "file" + ":",
        "http://",
        "https://",
        " @ ",
    ):
        assert bad not in text, bad
    pins = locked_versions()
    assert {"torch", "torchaudio", "transformers", "lightning", "peft", "jiwer", "lhotse", "pytest"} <= set(pins)


def test_installed_versions_match_the_lock():
    """Every locked package that applies to this interpreter is installed at its locked version."""
    from importlib.metadata import PackageNotFoundError

    wrong = []
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.+))?$", line)
        if not m:
            continue
        name, ver, marker = m.groups()
        if marker:
            from packaging.markers import Marker

            if not Marker(marker).evaluate():
                continue
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name} missing")
            continue
        if have.split("+")[0] != ver:
            wrong.append(f"{name} {have} (locked {ver})")
    assert not wrong, "installed set differs from requirements.lock (run `make install`): " + ", ".join(wrong)


@pytest.mark.unit
def test_mismatched_pair_is_one_line(monkeypatch, capsys):
    """torchaudio's own error (a RuntimeError from its extension loader) becomes one line naming both versions and
    the pair to install; the CLI prints it at start-up without a traceback."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] == "torchaudio":
            raise RuntimeError(
                "Detected that PyTorch and TorchAudio were compiled with different CUDA versions. "
                "PyTorch has CUDA version 13.2 whereas TorchAudio has CUDA version 13.0.\nmore"
            )
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in sys.modules if m.startswith("torchaudio")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(DependencyError) as err:
        torchaudio_functional()
    msg = str(err.value)
    assert "\n" not in msg and LOCKED_TORCH in msg and LOCKED_TORCHAUDIO in msg and "different CUDA versions" in msg

    from common.app.cli import main

    assert main(["evaluate", "--model", "bundled:tiny.en", "--manifest", "x.jsonl", "--out", "unused"]) == 2
    err_out = capsys.readouterr().err.strip()
    assert err_out.count("\n") == 0 and "torchaudio cannot be loaded" in err_out and "Traceback" not in err_out
