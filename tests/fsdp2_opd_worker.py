"""One OPD step of the tiny Ark student under FSDP2 on 2 gloo processes, each rank rolling out a different number of
tokens (``opd.max_new_tokens`` 4 on rank 0, 12 on rank 1), against the same step of an unsharded copy (the loss on
each rank, and the gradients averaged across the ranks as DDP would). Launched by tests/test_distributed.py:

    python -m torch.distributed.run --nproc_per_node=2 tests/fsdp2_opd_worker.py CORPUS OUT_JSON
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from conftest import ark_cfg
    from torch.distributed.device_mesh import init_device_mesh

    from ark_asr.run import build
    from common.teachers.whisper_teacher import WhisperTeacher
    from common.training import full_tensor, shard_student

    teacher = WhisperTeacher.from_pretrained("bundled:tiny.en")
    torch.manual_seed(0)  # the same student on every rank
    cfg = ark_cfg(corpus, "/tmp/unused", "opd", opd={"max_new_tokens": 4 + 8 * rank})
    module, dm, _ = build(cfg, teacher)
    reference = copy.deepcopy(module)
    batches = iter(dm.train_dataloader())
    for _ in range(rank + 1):  # a different batch on each rank
        batch = next(batches)

    class Mesh:  # what Lightning's ModelParallelStrategy gives the LightningModule
        _device_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))

    n_sharded = shard_student(Mesh, module.student)
    results = {}
    for name, m in (("fsdp2", module), ("reference", reference)):
        torch.manual_seed(1)
        loss, logs = m.opd_step(batch)
        loss.backward()
        results[name] = {"loss": float(loss), "rollout_len": float(logs["rollout_len"])}
    max_diff = 0.0
    for p, q in zip(module.student.parameters(), reference.student.parameters()):
        if q.grad is None:
            continue
        g = q.grad.clone()
        dist.all_reduce(g)
        g /= world  # DDP's average
        mine = full_tensor(p.grad) if type(p.grad).__name__ == "DTensor" else p.grad
        if type(p.grad).__name__ != "DTensor":  # replicated: averaged by FSDP2Gradients before the optimizer step
            mine = mine.clone()
            dist.all_reduce(mine)
            mine /= world
        max_diff = max(max_diff, float((mine - g).abs().max()))
    mine = torch.tensor(
        [
            results["fsdp2"]["rollout_len"],
            results["reference"]["rollout_len"],
            results["fsdp2"]["loss"],
            results["reference"]["loss"],
        ]
    )
    rows = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(rows, mine)
    if rank == 0:
        out.write_text(
            json.dumps({"n_sharded": n_sharded, "max_grad_diff": max_diff, "per_rank": [r.tolist() for r in rows]})
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
