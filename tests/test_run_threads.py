"""use_run_threads sets a run's train.threads for evaluating its checkpoint, and an in-process
caller (evaluate, the cross-database matrix) gets its own thread count back afterwards."""
import pytest
import torch

from siqa.device import use_run_threads


def test_the_run_count_inside_the_callers_count_after(process_numerics):
    torch.set_num_threads(3)
    with use_run_threads({"train": {"threads": 1}}) as inside:
        assert inside == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 3
    with use_run_threads({"train": {"threads": 0}}) as inside:  # 0: the caller's count stays
        assert inside == 3
    with pytest.raises(RuntimeError), use_run_threads({"train": {"threads": 1}}):
        raise RuntimeError("a failed evaluation")
    assert torch.get_num_threads() == 3


def test_evaluate_and_matrix_in_process_restore_the_thread_count(checkpoint, tiny_manifest, tmp_path,
                                                                 process_numerics):
    """The session's tiny run trained with train.threads=1; the caller runs with 3."""
    from siqa.evaluation.evaluate import evaluate
    from siqa.evaluation.matrix import cross_database_matrix

    torch.set_num_threads(3)
    evaluate(checkpoint, out=tmp_path / "ev", progress=False, log=lambda *a: None)
    assert torch.get_num_threads() == 3
    cross_database_matrix([checkpoint], [f"csv={tiny_manifest}"], tmp_path / "matrix",
                          log=lambda *a: None)
    assert torch.get_num_threads() == 3
