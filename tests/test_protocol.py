"""The protocol card: config hash, git state, versions, splits, logistic status."""
import hashlib
import json
import subprocess

import pytest
import torch

from siqa.config import load_config
from siqa.evaluation import protocol, selection


def test_config_hash_is_canonical_and_changes_with_any_key():
    cfg = load_config()
    h = protocol.config_sha256(cfg)
    want = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert h == want
    assert protocol.config_sha256(load_config()) == h  # deterministic
    for override in ("train.nss_weight=0", "train.seed=1", "dataset.split_file=splits/x.json",
                     "nss.marginal=scipy_free_loc"):
        assert protocol.config_sha256(load_config(overrides=[override])) != h, override


def test_git_state_of_this_checkout_and_of_a_plain_folder(tmp_path):
    state = protocol.git_state()
    try:
        head = subprocess.run(["git", "-C", str(protocol.ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        pytest.skip("git is not installed")
    if head:
        assert state["commit"] == head and isinstance(state["dirty"], bool)
    assert protocol.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_card_fields(tmp_path):
    import time

    from conftest import make_tiny_database
    from siqa.data.databases.csv_manifest import load_csv
    from siqa.data.splits import content_splits, split_document, write_split_file

    pairs = load_csv(make_tiny_database(tmp_path / "db", scenes=5, levels=1, size=(40, 36)))
    doc = split_document(pairs, content_splits(pairs, seed=3, repeats=2), "csv", 3, [0.6, 0.2, 0.2])
    write_split_file(tmp_path / "s.json", doc)
    cfg = load_config(overrides=["dataset.name=csv", "train.seed=3",
                                              f"dataset.split_file={tmp_path / 's.json'}"])
    info = protocol.split_info(cfg, doc)
    assert info["file_sha256"] == hashlib.sha256((tmp_path / "s.json").read_bytes()).hexdigest()
    assert info["count"] == 2 and info["seed"] == 3
    test = {"logistic": {"kind": "linear", "reason": "fewer than 5 items"}}
    card = protocol.card(cfg, info, torch.device("cpu"), time.perf_counter() - 2.0, [test], split=1)
    assert card["seeds"] == {"split": 3, "init_and_order": [4]}
    assert card["splits"] == {**info, "index": 1} and protocol.split_index(card) == 1
    assert card["logistic"]["converged"] is False and card["logistic"]["mapping"] == "linear"
    assert "5-parameter" in card["logistic"]["function"]
    assert card["selection"] == selection.RULE
    assert card["versions"]["torch"] == torch.__version__ and "cuda" not in card["versions"]
    assert card["wall_time_s"] >= 2.0
    assert card["cpu_threads"] == torch.get_num_threads() >= 1
    assert card["config_sha256"] == protocol.config_sha256(cfg)
    summary = protocol.card(cfg, info, torch.device("cpu"), time.perf_counter(),
                            [test, {"logistic": {"kind": "logistic"}}])
    assert [c["converged"] for c in summary["logistic"]] == [False, True]
    assert summary["seeds"]["init_and_order"] == [3, 4]
    assert summary["splits"]["index"] is None
    earlier = {"splits": {**info, "repeat": 1}}  # a card of an earlier version
    assert protocol.split_index(earlier) == 1 and protocol.split_entry(earlier["splits"]) == info
    json.dumps(card, allow_nan=False)  # JSON as it is


def test_a_run_records_the_code_it_started_with(tiny_manifest, tmp_path, monkeypatch,
                                               one_torch_thread):
    """The checkout may be edited or committed to while a long run trains: the cards of the
    splits and of the summary give the git state taken when the run began."""
    from conftest import tiny_overrides
    from siqa.training import run as runner
    from siqa.training.distributed import Dist

    states = iter([{"commit": "a" * 40, "dirty": False}])
    monkeypatch.setattr(protocol, "git_state", lambda folder=None: next(
        states, {"commit": "b" * 40, "dirty": True}))
    cfg = load_config(overrides=tiny_overrides(tiny_manifest, tmp_path, **{
        "train.repeats": 2, "train.epochs": 1}))
    runner.train(cfg, dist=Dist(), progress=False, log=lambda line: None)
    cards = [json.loads((tmp_path / "run" / name).read_text())["protocol"]
             for name in ("split_0/metrics.json", "split_1/metrics.json", "summary.json")]
    assert [card["code"] for card in cards] == [{"commit": "a" * 40, "dirty": False}] * 3
