"""The report's findings are computed from the numbers: unit tests on made-up summaries."""

from normlab.config import TARGET_ACC
from normlab.report import failures, findings, summarize, to_markdown


def row(variant, mean, std=0.02, seeds=3, seconds=100.0):
    return {"variant": variant, "final_mean": mean, "final_std": std, "seeds": seeds, "epochs": 20,
            "seconds": seconds}


def test_the_best_variant_comes_first_and_gaps_are_judged_against_the_spread():
    text = findings([row("gn", 99.40, 0.02), row("ln", 99.50, 0.03), row("bn+l1", 99.45, 0.10)])
    assert text[0] == "ln ends best: 99.50% mean final test accuracy over 3 seeds after 20 epochs."
    assert text[1].startswith("bn+l1 ends 0.05 points lower (99.45%); that gap is not larger than the spread")
    assert text[2].startswith("gn ends 0.10 points lower (99.40%); that gap is larger than the spread")


def test_one_seed_makes_no_claim_about_spread():
    text = findings([row("gn", 99.4, seeds=1), row("ln", 99.5, seeds=1)])
    assert text[0].endswith("99.50% final test accuracy after 20 epochs.") and "spread" not in text[1]


def test_the_target_line_and_the_times():
    text = findings([row("gn", TARGET_ACC + 0.1, seconds=80), row("ln", TARGET_ACC - 0.1, seconds=120)])
    assert f"At or above {TARGET_ACC}% at the last epoch: gn." in text
    assert f"Below {TARGET_ACC}% at the last epoch: ln." in text
    assert text[-1] == "Training time per run ranges from 80 s (gn) to 120 s (ln)."


def test_failed_runs_are_named_and_left_out():
    results = {"variants": ["gn"], "runs": [
        {"variant": "gn", "seed": 0, "failed": {"reason": "the training loss became NaN or infinite", "epoch": 1,
                                                 "step": 3}}]}
    assert summarize(results) == []
    assert failures(results) == ["gn seed 0 FAILED: the training loss became NaN or infinite at epoch 1, step 3; "
                                 "it is left out of the table, the graphs and the grids."]
    assert findings([]) == ["Every run failed: there is nothing to compare."]


def test_markdown_blocks():
    md = to_markdown([("h1", "T"), ("p", "text"), ("list", ["a"]), ("table", (["x", "y"], [["1", "2"]]))])
    assert md == "# T\n\ntext\n\n- a\n\n| x | y |\n| --- | --- |\n| 1 | 2 |\n"
