"""The faithfulness benchmarks run end to end on small models: clip rules (tiny model) and PEZ init (toy CLIP)."""
import pytest
from conftest import scene

from benchmarks import pez_init, visii_clip_rules

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)


def test_clip_rules_bench_on_the_tiny_model(editor, clip):
    befores, afters = [scene(i) for i in range(2)], [scene(i, night=True) for i in range(2)]
    out = visii_clip_rules.measure(editor, clip, befores, afters, steps=4, lrs=[1e-2], init_text="make it night",
                                   eval_pairs=(befores[:1], afters[:1]), eval_timesteps=2,
                                   runs=[("official", "adamw"), visii_clip_rules.REFERENCE])
    official, ours = out["runs"]
    # Loss-scaled gradients are thousands of times the threshold; unscaled ones stay far below it here.
    assert official["clipped_mean"] > 0.5 and ours["clipped_mean"] == 0
    assert ours["moved_vs_reference_rel"] == 0 and official["moved_vs_reference_rel"] > 0
    for row in out["runs"]:
        assert row["eval_train_init"] == official["eval_train_init"], "every run starts from the same embedding"
        assert {"eval_test_final", "best_step", "loss_last_quarter"} <= row.keys()


def test_pez_init_bench_on_the_toy_clip():
    from invert.clip import clip_name_for, load_clip

    rows = pez_init.measure(load_clip(clip_name_for(None, "toy")), ("night",), n=2, steps=[5])
    (row,) = rows
    assert row["edit"] == "night" and row["pez5"] and row["caption"]
    assert -1 <= row["random_mean"] <= row["random_max"] <= 1
    assert row["pez5_ip2p_tokens"] >= 1
