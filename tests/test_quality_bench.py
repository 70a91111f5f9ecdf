"""The toy world's quality benchmark, run end to end on the tiny model with a handful of steps."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import quality as benchmark
from benchmarks.cli import bench
from invert.evaluation import as_tensor, psnr
from invert.toy import world

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)


def test_quality_table(tiny_model_dir, tmp_path):
    out = tmp_path / "q.json"
    r = CliRunner().invoke(bench, ["quality", "--model", str(tiny_model_dir),
                                 "--edits", "night,circle_red,hue90", "--steps", "1", "--shots", "1,2",
                                 "--n-test", "2", "--apply-steps", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert "| brush_no_parts |" in r.stdout and "**2-shot**" in r.stdout

    night = result["edits"]["night"]
    size = 32
    test = world.make_pairs("night", 2, benchmark.TEST_SEED + list(world.EDITS).index("night"), size)
    expected = psnr(as_tensor([b for b, _ in test]), as_tensor([a for _, a in test])).mean().item()
    assert night["text"]["no_edit"]["psnr"] == pytest.approx(expected, rel=1e-5), "no edit = the input itself"
    assert "best_single_text" not in night["text"]
    best = result["edits"]["hue90"]["text"]["best_single_text"]
    assert best["instruction"] in {e.instruction for e in world.EDITS.values()}
    for k in ("1", "2"):
        assert set(night["shots"][k]) == {"visii", "visii_cfg", "visii_cond", "brush", "brush_no_parts",
                                          "brush_no_phrase_init", "lora"}
        rows = night["shots"][k]
        assert [rows[r]["loss_target"] for r in ("visii", "visii_cfg", "visii_cond")] == ["cfg", "cfg", "cond"]
        assert rows["visii"]["psnr"] == rows["visii_cfg"]["psnr"], "the tiny model's default is the library's cfg"
    assert night["shots"]["1"]["brush_no_phrase_init"]["init_text"] == ""
    # --init best's search runs once per edit and shot count, and every row without its own text starts from it
    for k in ("1", "2"):
        chosen = night["init_search"][k]["text"]
        assert chosen in night["init_search"][k]["scores"]["texts"]
        assert {night["shots"][k][row]["init_text"] for row in ("visii", "visii_cfg", "visii_cond", "brush",
                                                                 "brush_no_parts", "lora")} == {chosen}

    summary = result["summary"]["2"]
    assert summary["visii"]["all"]["psnr"] == pytest.approx(np.mean(
        [result["edits"][n]["shots"]["2"]["visii"]["psnr"] for n in ("night", "circle_red")]))
    assert set(summary["best_single_text"]) == {"hard"}
    assert summary["no_edit"]["global"]["psnr"] == pytest.approx(night["text"]["no_edit"]["psnr"])


def test_quality_on_validation_scenes(tiny_model_dir, tmp_path):
    """--scenes validation scores on the scenes defaults are chosen on, not the table's test scenes; --loss-target
    sets every method row's but those that pin one."""
    out = tmp_path / "q.json"
    r = CliRunner().invoke(bench, ["quality", "--model", str(tiny_model_dir), "--edits", "night", "--shots", "1",
                                   "--n-test", "2", "--rows", "no_edit,visii,visii_cfg", "--steps", "1",
                                   "--apply-steps", "2", "--scenes", "validation", "--loss-target", "cond", "-o",
                                   str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["settings"]["test_seed"] == benchmark.VALIDATION_SEED
    rows = result["edits"]["night"]["shots"]["1"]
    assert rows["visii"]["loss_target"] == "cond" and rows["visii_cfg"]["loss_target"] == "cfg", "a row's pin wins"
    val = world.make_pairs("night", 2, benchmark.VALIDATION_SEED + list(world.EDITS).index("night"), 32)
    expected = psnr(as_tensor([b for b, _ in val]), as_tensor([a for _, a in val])).mean().item()
    assert result["edits"]["night"]["text"]["no_edit"]["psnr"] == pytest.approx(expected, rel=1e-5)


def test_quality_rejects_unknown_names(tiny_model_dir):
    r = CliRunner().invoke(bench, ["quality", "--model", str(tiny_model_dir), "--edits", "night,teleport"])
    assert r.exit_code == 1 and "unknown edit 'teleport'" in r.output


def test_the_steps_study_scores_each_snapshot_as_the_fit_that_stopped_there(editor, clip):
    """benchmarks.steps_lr fits once to the largest step count and scores its snapshots: the snapshot at step 1
    must score what a 1-step fit scores (the learning rate is constant and the schedule a prefix)."""
    from benchmarks.steps_lr import study
    from invert.api import apply, fit_images
    from invert.methods import settings_for

    rows = study(editor, clip, "visii", 1e-2, ["night"], [1, 3], shots=2, n_val=2, log=lambda line: None)["night"]
    assert {"0", "1", "3", "no_edit", "init_text"} <= set(rows)
    train, val = benchmark.edit_pairs("night", 2, 2, editor.resolution, test_seed=benchmark.VALIDATION_SEED)
    options = {"steps": 1, "lr": 1e-2, "seed": 0, "guidance": 3.0, "image_guidance": 1.5, "keep": "last",
               "val_every": 0, "resolution": editor.resolution}
    one = fit_images(editor, [b for b, _ in train], [a for _, a in train], "visii", *settings_for("visii", options),
                     clip=clip, quiet=True)
    results = apply(one, [b for b, _ in val], editor=editor, steps=20)
    assert rows["1"] == pytest.approx(psnr(as_tensor(results), as_tensor([a for _, a in val])).mean().item(), abs=1e-4)
    assert rows["1"] != rows["3"], "snapshots of different steps are different states"


def test_quality_encoder_rows(editor, clip, tiny_model_dir, tmp_path):
    """The encoder rows: the encoder's instruction in one forward pass (its seconds: that pass alone), refined, and
    fits started from either; a row list naming them without an encoder is refused."""
    from test_encoder import make_trainer, write_sets

    encoder = make_trainer(editor, clip, write_sets(tmp_path / "sets"), steps=1).run(quiet=True)
    path = encoder.save(tmp_path / "enc.safetensors")
    out = tmp_path / "q.json"
    r = CliRunner().invoke(bench, ["quality", "--model", str(tiny_model_dir), "--edits", "night", "--steps", "1",
                                   "--shots", "2", "--n-test", "2", "--apply-steps", "2", "--rows",
                                   "no_edit,encoder,encoder+refine,encoder+fit,encoder+cond_fit,"
                                   "encoder+refine+cond_fit", "--encoder-refine", "2", "--encoder", str(path), "-o",
                                   str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["edits"]["night"]["shots"]["2"]
    assert set(rows) == {"encoder", "encoder+refine", "encoder+fit", "encoder+cond_fit", "encoder+refine+cond_fit"}
    # +fit pins the fit's cfg loss; +cond_fit takes --init encoder's default, the encoder's own (it trained on cond)
    assert rows["encoder+fit"]["loss_target"] == "cfg"
    assert rows["encoder+cond_fit"]["loss_target"] == rows["encoder+refine+cond_fit"]["loss_target"] == "cond"
    assert rows["encoder"]["fit_seconds"] < min(rows[r]["fit_seconds"] for r in rows if r != "encoder")
    assert {row["init_text"] for row in rows.values()} == {encoder.info["init_text"]}
    r = CliRunner().invoke(bench, ["quality", "--model", str(tiny_model_dir), "--edits", "night", "--rows", "encoder"])
    assert r.exit_code == 1 and "need --encoder FILE" in r.output


def test_the_init_pick_check_fits_only_where_the_picks_differ(editor, clip):
    """benchmarks.init_pick: both searches' picks; the rows fitted both ways only where they differ, each way
    starting from its own pick."""
    from benchmarks import init_pick

    bench = benchmark.QualitySettings(steps=1, n_test=2, apply_steps=2)
    same = init_pick.compare(editor, clip, "night", 2, {"best_val_steps": 10}, {"best_val_steps": 10}, bench,
                             log=lambda line: None)
    assert same["today_options"] == {"best_val_steps": 10} and same["texts"]["today"] == same["texts"]["proposed"]
    assert "today" not in same and "proposed" not in same
    for steps in (1, 2, 3):  # some step count picks another text than 10 steps on the tiny model
        found = init_pick.compare(editor, clip, "night", 2, {"best_val_steps": 10}, {"best_val_steps": steps}, bench,
                                  log=lambda line: None)
        if found["texts"]["today"] != found["texts"]["proposed"]:
            break
    else:
        pytest.skip("every step count picks the same text on the tiny model")
    for key in ("today", "proposed"):
        assert set(found[key]) == set(init_pick.ROWS)
        assert {cells["init_text"] for cells in found[key].values()} == {found["texts"][key]}


def test_the_init_pick_summary_counts_unchanged_edits_as_no_change():
    def edit(group, today=None, proposed=None, no_edit=10.0):
        out = {"group": group, "shots": 10}
        if today is not None:
            out |= {"no_edit": no_edit, "today": {r: {"psnr": today} for r in ROWS},
                    "proposed": {r: {"psnr": proposed} for r in ROWS}}
        return out

    from benchmarks.init_pick import ROWS, summarize
    summary = summarize([edit("local", 12.0, 9.0), edit("local"), edit("local"), edit("hard", 9.0, 11.0)])
    cells = summary["10"]["visii"]
    assert cells["local"] == {"delta_db": pytest.approx(-1.0), "changed_edits": 1, "edits": 3,
                              "below_no_edit_today": 0, "below_no_edit_proposed": 1}
    assert cells["hard"]["delta_db"] == pytest.approx(2.0) and cells["hard"]["below_no_edit_today"] == 1
    assert "global" not in cells
