"""Run under `torchrun --standalone --nproc_per_node=2` by tests/test_resume_and_torchrun.py: the
per-rank random streams of siqa.training.checkpoints, seen from inside two gloo processes.

Each rank initialises the model and then its own stream exactly as train_split does, draws a
dropout mask, saves and restores its RNG state the way checkpoints do; rank 0 writes what it
gathered to the JSON file named on the command line."""
import json
import sys

import torch
import torch.nn.functional as F

from siqa.checkpoint import rng_state
from siqa.models.bourbia2021 import MultiTaskSIQA
from siqa.training import distributed
from siqa.training.checkpoints import restore_rank_rng, seed_rank_stream

SEED = 3


def main(out_path):
    torch.set_num_threads(1)
    dist = distributed.setup("cpu")
    torch.manual_seed(SEED)
    model = MultiTaskSIQA()
    seed_rank_stream(SEED, dist.rank)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    mask = F.dropout(torch.ones(4096), 0.5, training=True) > 0
    # the model's own dropout layers draw from the same stream
    model.train()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    quality = model(x, x)[0].detach()

    saved = dist.gather(rng_state(dist.device))  # what a checkpoint holds: every rank's state
    after = torch.rand(16)
    exact = restore_rank_rng(saved, dist, SEED, epoch=1)
    again = torch.rand(16)
    mismatched = restore_rank_rng(saved[:1], dist, SEED, epoch=1)

    gathered = dist.gather({
        "weights": weights.double().sum().item(),
        "weights_head": weights[:64].tolist(),
        "mask": mask.tolist(),
        "quality": quality.flatten().tolist(),
        "after": after.tolist(),
        "again": again.tolist(),
        "exact": exact,
        "mismatched": mismatched,
    })
    if dist.is_main:
        with open(out_path, "w") as f:
            json.dump({"world": dist.world, "ranks": gathered}, f)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
