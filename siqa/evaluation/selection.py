"""How the tested checkpoint of a split is chosen: the rule that training applies (a split's
run keeps best.pt by `better`) and that the protocol card states (`RULE`,
siqa.evaluation.protocol).

    each validation (train.val_every, and after the last epoch):
        report = the validation pairs' metrics (siqa.evaluation.reports.validation_report)
        better(report, best so far) --> best.pt := this epoch
            higher SROCC wins; an undefined SROCC (near-constant predictions) never wins
            over a defined one; a tie keeps the earlier epoch
    after the last epoch: best.pt is tested once (metrics.json "test")
    no validation part (dataset.split [1, 0, 0], a final fit): nothing is selected, best.pt
        is the last epoch (`NO_VALIDATION_RULE` on the card)

Selection reads the validation pairs only; the test pairs are scored once, after it.
"""
from siqa.runfolder import BEST

METRIC = "srocc"  # higher is better
RULE = f"best validation {METRIC.upper()}, test evaluated once"
NO_VALIDATION_RULE = "none: the last epoch (no validation split)"
NO_VALIDATION_LOG = f" | no validation split: {BEST} is the last epoch"  # the epoch's log line


def better(val, best) -> bool:
    """Whether validation metrics `val` beat `best`, the best so far ({"val": metrics, ...}
    or None before the first validation)."""
    value = val.get(METRIC)
    return best is None or (value is not None and (best["val"].get(METRIC) is None
                                                   or value > best["val"][METRIC]))
