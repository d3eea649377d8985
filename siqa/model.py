"""The paper's network, now `siqa.models.bourbia2021` (this name stays for existing imports)."""
from siqa.models.bourbia2021 import (NSS_DIM, PATCH_SIZE, DiffSumHigh, DiffSumLow, FCBranch,  # noqa: F401
                                     MultiTaskSIQA, ViewColumn, count_parameters, sum_diff)

__all__ = ["NSS_DIM", "PATCH_SIZE", "DiffSumHigh", "DiffSumLow", "FCBranch", "MultiTaskSIQA",
           "ViewColumn", "count_parameters", "sum_diff"]  # re-exported (pyflakes reads this)
