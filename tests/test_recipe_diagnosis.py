"""benchmarks/recipe_diagnosis.py watches the package's training without changing it: one
epoch of its `reference` variant ends with the weights of the paper's recipe written out by
hand (torch.optim.SGD, L1(quality) + 25 L1(NSS), the package's epoch order), and its record
of the steps (the fraction of predictions below target, the mean prediction, the mean
gradient norms) equals what that hand loop sees."""
import numpy as np
import torch
import torch.nn.functional as F

from conftest import load_script
from siqa.models import create_model
from siqa.training.step import epoch_order

PATCHES, PAIRS = 300, 25


def split(rng):
    index = torch.arange(PATCHES) % PAIRS
    patches = {norm: (torch.as_tensor(rng.normal(0, 1, (PATCHES, 1, 32, 32)), dtype=torch.float32),
                      torch.as_tensor(rng.normal(0, 1, (PATCHES, 1, 32, 32)), dtype=torch.float32))
               for norm in ("reference", "contrast")}
    return {"pair_index": index, "patches": patches,
            "score": torch.as_tensor(rng.uniform(0, 60, PAIRS), dtype=torch.float32),
            "nss": torch.as_tensor(rng.normal(0, 1, (PAIRS, 108)), dtype=torch.float32)}


def test_one_epoch_is_the_paper_recipe_written_out_by_hand():
    diagnosis = load_script("benchmarks/recipe_diagnosis.py")
    rng = np.random.default_rng(0)
    data = {"train": split(rng), "val": split(rng)}
    record = diagnosis.run_variant("reference", data, epochs=1, seed=3, scale_match=1.0,
                                   light=True, log=lambda line: None)["history"][1]

    train = data["train"]
    left, right = train["patches"]["reference"]
    torch.manual_seed(3)
    model = create_model("bourbia2021").to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    below, outputs, grad_sums, steps = 0, [], torch.zeros(len(list(model.parameters())), dtype=torch.float64), 0
    model.train()
    for idx in epoch_order(PATCHES, 3, 0).split(128):
        pairs = train["pair_index"][idx]
        quality, nss = model(left[idx], right[idx])
        loss = F.l1_loss(quality, train["score"][pairs]) + 25.0 * F.l1_loss(nss, train["nss"][pairs])
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        grad_sums += torch.tensor([p.grad.norm().item() for p in model.parameters()], dtype=torch.float64)
        steps += 1
        sgd.step()
        below += int((quality < train["score"][pairs]).sum())
        outputs.append(quality.detach().double())

    assert record["weight_norm"] == {n: p.detach().norm().item() for n, p in model.named_parameters()}
    assert record["frac_pred_below_target"] == below / PATCHES
    assert record["train_batch_pred_mean"] == float(torch.cat(outputs).mean())
    # torch._foreach_norm against one norm per tensor: equal on the 2-core Intel Xeon (1 and 2
    # threads); another CPU's kernels may sum in another order, so float32 round-off is allowed
    got = np.array(list(record["grad_norm_mean"].values()))
    np.testing.assert_allclose(got, (grad_sums / steps).numpy(), rtol=1e-5)
