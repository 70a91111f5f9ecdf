"""The toy IP2P trainer (benchmarks/toy_train.py) runs to its final oracle check."""
import json

from benchmarks import oracle, toy_train


def test_a_short_run_ends_with_its_oracle_check(tmp_path, monkeypatch):
    real = oracle.evaluate_oracle  # the whole catalogue at 20 steps is half a minute: two edits at one step here
    monkeypatch.setattr(oracle, "evaluate_oracle",
                        lambda folder, n: real(folder, n=n, steps=1, edits=["night", "circle_red"]))
    toy_train.main(["--out", str(tmp_path), "--steps-clip", "1", "--steps-vae", "1", "--steps-unet", "1",
                    "--pairs-per-edit", "3", "--eval-n", "1", "--threads", "1"])
    info = json.loads((tmp_path / "toy_world.json").read_text())
    assert set(info["oracle_check"]["rows"]) == {"night", "circle_red"}
    assert "oracle check:" in (tmp_path / "train_log.txt").read_text()
