"""Build a compact Whisper student from a Whisper teacher (the Distil-Whisper construction).

The student is a plain ``WhisperForConditionalGeneration``: the teacher's encoder (frozen by default),
``n`` decoder layers copied from maximally spaced teacher layers (always the first and the last), and the
token embeddings, positional tables, final layer norm and (tied) LM head copied.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


def spaced_layers(n_teacher: int, n_student: int) -> list[int]:
    """Maximally spaced indices including 0 and n_teacher - 1: 32 -> 2 gives [0, 31]; 4 -> 2 gives [0, 3]."""
    if not 1 <= n_student <= n_teacher:
        raise ValueError(f"need 1 <= student layers ({n_student}) <= teacher layers ({n_teacher})")
    if n_student == 1:
        return [n_teacher - 1]
    return [int(i) for i in np.round(np.linspace(0, n_teacher - 1, n_student)).astype(int)]


def build_student(teacher, n_decoder_layers: int = 2, freeze_encoder: bool = True):
    """A new ``WhisperForConditionalGeneration`` initialised from ``teacher`` (works on the meta device too)."""
    from transformers import WhisperForConditionalGeneration

    cfg = copy.deepcopy(teacher.config)
    keep = spaced_layers(cfg.decoder_layers, n_decoder_layers)
    cfg.decoder_layers = n_decoder_layers
    dev = next(teacher.parameters()).device
    with torch.device(dev):
        student = WhisperForConditionalGeneration(cfg)
    t_sd = teacher.state_dict()
    sd = {}
    for k, v in t_sd.items():
        if k.startswith("model.decoder.layers."):
            i = int(k.split(".")[3])
            if i in keep:
                sd[k.replace(f"model.decoder.layers.{i}.", f"model.decoder.layers.{keep.index(i)}.", 1)] = v
        else:
            sd[k] = v
    missing, unexpected = student.load_state_dict(sd, strict=False, assign=dev.type == "meta")
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise RuntimeError(f"student init mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    heads = getattr(student.generation_config, "alignment_heads", None)
    if heads:  # the teacher's cross-attention heads for word timestamps, renumbered to the layers the student kept
        kept = [[keep.index(layer), head] for layer, head in heads if layer in keep]
        student.generation_config.alignment_heads = kept or None
    student.config.student_of = {"decoder_layers_kept": keep}
    if freeze_encoder:
        student.model.encoder.requires_grad_(False)
    return student
