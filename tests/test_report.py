"""The report's tables and findings are computed from the numbers: unit tests on made-up results."""

import numpy as np

from normlab.engine.runfiles import pack
from normlab.report.findings import TARGET_ACC as TARGETS
from normlab.report.findings import ask_first, failures, findings
from normlab.report.report import batch_table, chosen_table, results_table, small_batch_table, to_markdown, what_was_run
from normlab.report.results import chosen_lrs, margin, small_batch_rows, summarize
from normlab.report.verdicts import Verdicts

IMAGES = 10_000


def answers(acc, seed):
    """Per-image answers scoring ``acc``: the seed's test images wrong in one order for every variant, so a
    variant with more errors misses the other's and a few more (the paired tests see every image agree)."""
    correct = np.ones(IMAGES, bool)
    correct[np.random.default_rng(seed).permutation(IMAGES)[:round((100 - acc) * IMAGES / 100)]] = False
    return pack(correct)


def run(variant, seed, acc, batch=128, seconds=100.0, **extra):
    ways = {way: answers(acc, seed) for way, acc in (extra.get("evaluation") or {"moving": acc}).items()
            if way in ("moving", "precise", "batch")}
    return {"variant": variant, "seed": seed, "final_test_acc": acc, "batch_size": batch, "lr": 0.1 * batch / 128,
            "norm": variant, "regularization": "no L1", "parameters": 7578, "epochs": 20, "seconds": seconds,
            "final_train_loss": 0.01, "conv_weight_l1": 1000.0, "failed": None, "batch_stats": variant == "bn",
            "test_images": IMAGES, "per_image": ways, **extra}


TARGET_ACC = TARGETS["mnist"]


def small_table(r):
    """The table of the smallest size as the report makes it: after the findings' questions."""
    verdicts = Verdicts(margin(r))
    ask_first(summarize(r), r, verdicts)
    return small_batch_table(r, small_batch_rows(r, verdicts))


def results(runs, batch_sizes=(128,), dataset="mnist", **extra):
    return {"variants": sorted({r["variant"] for r in runs}, reverse=True), "seeds": [0, 1, 2],
            "batch_sizes": list(batch_sizes), "base_config": {"dataset": dataset, "lr": 0.1, "batch_size": 128},
            "lr_scaling": True, "runs": runs, **extra}


def lr_study(cells, seeds=(0, 1, 2), **extra):
    """(variant, lr) -> (validation accuracy, test accuracy), each seed a little off the mean."""
    runs = [run(v, s, test + d, lr=lr, final_val_acc=val + d, test_acc_at_best_val=test + d)
            for (v, lr), (val, test) in cells.items() for s, d in zip(seeds, (0.0, 0.03, -0.03, 0.01, -0.01),
                                                                                 strict=False)]
    r = results(runs, lrs=sorted({lr for _, lr in cells}), **extra)
    r["base_config"]["val_size"] = 10_000
    return r


def test_the_rate_follows_validation_even_where_the_test_set_disagrees():
    # On validation gn is best at 0.2 and bn at 0.05; on the test set both are best at 0.4.
    r = lr_study({("gn", 0.05): (99.1, 99.2), ("gn", 0.2): (99.5, 99.3), ("gn", 0.4): (99.2, 99.6),
                  ("bn", 0.05): (99.4, 99.0), ("bn", 0.2): (99.3, 99.1), ("bn", 0.4): (99.0, 99.5)})
    assert chosen_lrs(r) == {("gn", 128): 0.2, ("bn", 128): 0.05}
    rows = summarize(r)
    assert [(row["variant"], row["lr"]) for row in rows if row["chosen"]] == [("gn", 0.2), ("bn", 0.05)]
    header, table = chosen_table(rows, r)
    assert header[:3] == ["variant", "chosen lr", "val acc (mean ± std)"]
    assert table == [["gn", "0.2", "99.50% ± 0.03", "99.30% ± 0.03", "99.23 to 99.37", "3"],
                     ["bn", "0.05", "99.40% ± 0.03", "99.00% ± 0.03", "98.93 to 99.07", "3"]]
    text = findings(rows, r)
    assert text[0] == ("Learning rates chosen on validation (best mean validation accuracy at the last epoch): "
                       "gn 0.2 (99.50%; 90 validation images ahead of 0.4 over seeds 0, 1, 2), bn 0.05 (99.40%; the "
                       "grid's smallest rate, so a better one may lie below it; 30 validation images ahead of 0.2 over "
                       "seeds 0, 1, 2).")
    assert not any("all at lr" in t for t in text)  # the base rate 0.1 is not among these: no shared rate
    assert text[1].startswith("gn ends best: 99.30%")  # at its chosen rate, not at its best test rate (99.60%)
    assert text[2].startswith("bn ends 0.30 points lower (99.00%); gn − bn: +0.30 points (the same on all 3 seeds: "
                              "no spread to measure; over the test images and seeds +0.2")
    assert text[2].endswith("inconclusive (neither a difference nor equivalence within ±0.2 points, one comparison).")
    assert [row[5] for row in results_table(rows, r)[1]] == ["0.05", "0.2 (chosen)", "0.4", "0.05 (chosen)", "0.2",
                                                           "0.4"]


def test_the_ranking_at_one_shared_rate_is_set_beside_the_ranking_at_the_chosen_rates():
    r = lr_study({("gn", 0.1): (99.3, 99.45), ("gn", 0.2): (99.5, 99.6), ("ln", 0.1): (99.4, 99.5),
                  ("ln", 0.2): (99.35, 99.4)})
    text = findings(summarize(r), r)
    assert ("By mean test accuracy, all at lr 0.1: ln, gn; each at its chosen rate: gn, ln: the means change order "
            "(an order of means, not a tested difference).") in text


def test_a_rate_with_a_failed_run_is_never_chosen_and_later_seeds_do_not_choose():
    failed = {**run("gn", 2, 0.0, lr=0.4), "failed": {"reason": "NaN", "epoch": 1, "step": 3}}
    runs = [run("gn", s, 99.0, lr=0.1, final_val_acc=99.0, test_acc_at_best_val=99.0) for s in range(3)]
    runs += [run("gn", s, 99.0, lr=0.4, final_val_acc=99.9, test_acc_at_best_val=99.0) for s in range(2)] + [failed]
    assert chosen_lrs(results(runs, lrs=[0.1, 0.4])) == {("gn", 128): 0.1}
    # Seeds 0 and 1 choose 0.4; seed 2, trained at the chosen rate only, does not move the choice.
    later = [run("gn", 2, 99.0, lr=0.4, final_val_acc=90.0, test_acc_at_best_val=99.0)]
    tuned = results(runs[:5] + later, lrs=[0.1, 0.4], tune_seeds=[0, 1])
    assert chosen_lrs(tuned) == {("gn", 128): 0.4}
    row = next(r for r in summarize(tuned) if r["chosen"])
    assert row["val"].n == 2 and row["val"].mean == 99.9  # the seeds that chose it
    assert row["final"].n == 1 and row["seeds"] == 1  # reported by seed 2 alone: it did not choose (winner's curse)


def test_a_difference_is_claimed_only_where_the_seeds_and_the_images_both_support_it():
    # gn is 0.09-0.11 above bn on every seed, 9-11 more test images right; ln wanders around gn.
    r = results([run("gn", s, 99.50 + d) for s, d in enumerate((0.0, 0.05, -0.03))]
                + [run("bn", s, 99.40 + d) for s, d in enumerate((0.01, 0.05, -0.04))]
                + [run("ln", s, 99.48 + d) for s, d in enumerate((0.04, -0.02, 0.01))])
    text = findings(summarize(r), r)
    assert text[0] == "gn ends best: 99.51% mean final test accuracy over 3 seeds after 20 epochs."
    assert text[1].startswith("ln ends 0.02 points lower (99.49%); gn − ln: +0.02 points (95% CI over 3 seeds")
    assert text[1].endswith("equivalent within ±0.2 points: TOST over seeds and images, Holm over 3.")
    narrow = findings(summarize(r), {**r, "margin": 0.05})[1]  # the study's --margin
    assert narrow.endswith("inconclusive (neither a difference nor equivalence within ±0.05 points, Holm over 3).")
    assert text[2].startswith("bn ends 0.10 points lower (99.41%); gn − bn: +0.10 points (95% CI over 3 seeds +0.08 "
                              "to +0.12; over the test images and seeds +0.0")
    assert text[2].endswith("a difference: both tests, Holm over 3.")
    # The same seeds' accuracies without per-image answers: the test set's noise is unmeasured, so no claim.
    for run_ in r["runs"]:
        del run_["per_image"]
    assert findings(summarize(r), r)[2].endswith("inconclusive (no per-image answers, Holm over 3).")


def test_one_seed_makes_no_claim():
    r = results([run("gn", 0, 99.4), run("ln", 0, 99.5)])
    text = findings(summarize(r), r)
    assert text[0].endswith("99.50% final test accuracy after 20 epochs.")
    assert text[1] == "gn ends 0.10 points lower (99.40%); one seed in common, so no claim either way."


def test_one_variant_ends_without_being_best_and_a_cut_interval_says_so():
    r = results([run("none", 0, 10.0, batch=2), run("none", 1, 91.4, batch=2), run("none", 2, 90.9, batch=2)],
                batch_sizes=(2,))
    rows = summarize(r)
    assert findings(rows, r)[0] == "none ends: 64.10% mean final test accuracy over 3 seeds after 20 epochs."
    header, table = results_table(rows, r)
    assert table[0][header.index("95% CI")].endswith(" to 100.00 (cut to 0-100)")
    assert batch_table(rows, r)[1][0][1].startswith("35.90 (0.00 to ") and table[0][1] == "none"


def test_a_mean_level_to_two_decimals_is_not_called_best():
    r = results([run("ln", s, a) for s, a in enumerate((90.61, 90.70, 90.52))]
                + [run("bn+l1", s, a) for s, a in enumerate((90.60, 90.71, 90.51))])
    assert findings(summarize(r), r)[0] == ("ln ends highest, level with bn+l1 to two decimals: 90.61% mean final test "
                                            "accuracy over 3 seeds after 20 epochs.")


def test_the_target_line_and_the_times():
    r = results([run("gn", 0, TARGET_ACC + 0.1, seconds=80), run("ln", 0, TARGET_ACC - 0.1, seconds=120)])
    text = findings(summarize(r), r)
    assert f"At or above {TARGET_ACC}% at the last epoch (mean): gn." in text
    assert f"Below {TARGET_ACC}% at the last epoch (mean): ln." in text
    assert text[-1] == "Training time per run ranges from 80 s, gn, to 120 s, ln."
    fashion = results([run("gn", 0, 91.0), run("ln", 0, 90.0)], dataset="fashion-mnist")
    assert not any("99.4" in t for t in findings(summarize(fashion), fashion))  # MNIST's target is MNIST's


def test_batch_sizes_get_a_table_in_the_papers_layout_and_a_finding_each():
    noise = {("bn", 128): (0.0, 0.02, -0.02), ("bn", 2): (0.01, 0.03, -0.04), ("gn", 128): (0.0, 0.02, -0.02),
             ("gn", 2): (0.03, -0.01, -0.08)}
    runs = [run(v, s, acc + d, batch=b) for v, accs in (("bn", {128: 99.4, 2: 98.0}), ("gn", {128: 99.4, 2: 99.40}))
            for b, acc in accs.items() for s, d in enumerate(noise[v, b])]
    r = results(runs, batch_sizes=(2, 128))
    rows = summarize(r)
    header, table = batch_table(rows, r)
    assert header == ["test error (%) at batch size", "128", "2"]
    assert table[0][0] == "gn" and table[1][:2] == ["bn", "0.60 ± 0.05"] and table[1][2].startswith("2.00 ± 0.0")
    text = findings(rows, r)
    assert any(t.startswith("bn: test error 0.60% at batch size 128, 2.00% at batch size 2; the change in error: "
                            "+1.40 points") and t.endswith("the batch size matters: both tests, Holm over 2.")
               for t in text)
    assert any(t.startswith("gn: test error 0.60% at batch size 128, 0.62% at batch size 2") and
               t.endswith("equivalent within ±0.2 points: TOST over seeds and images, Holm over 2.") for t in text)
    assert "Below 99.4% at the last epoch (mean): gn (at batch size 2), bn (at batch size 2)." in text
    assert results_table(rows, r)[0][4:6] == ["batch", "lr"]


def test_validation_columns_appear_when_runs_held_out_images():
    r = results([run("gn", s, 99.4, final_val_acc=99.3, test_acc_at_best_val=99.45) for s in range(3)])
    header, table = results_table(summarize(r), r)
    assert "final val acc" in header and table[0][header.index("test acc at best val epoch")] == "99.45%"
    assert "best" not in " ".join(results_table(summarize(results([run("gn", 0, 99.4)])), results([]))[0])


def test_failed_runs_are_named_and_left_out():
    failed = {**run("gn", 0, 0.0), "failed": {"reason": "the training loss became NaN or infinite", "epoch": 1,
                                             "step": 3}}
    r = results([failed])
    assert summarize(r) == []
    assert failures(r) == ["gn seed 0 FAILED: the training loss became NaN or infinite at epoch 1, "
                           "step 3; it is left out of the tables, graphs and grids."]
    assert findings([], r) == ["Every run failed: there is nothing to compare."]


def test_markdown_blocks():
    md = to_markdown([("h1", "T"), ("p", "text"), ("list", ["a"]), ("table", (["x", "y"], [["1", "2"]]))])
    assert md == "# T\n\ntext\n\n- a\n\n| x | y |\n| --- | --- |\n| 1 | 2 |\n"


def test_the_shared_rate_ranking_compares_the_seeds_that_every_rate_has():
    r = lr_study({("gn", 0.1): (99.3, 99.45), ("gn", 0.2): (99.5, 99.6), ("ln", 0.1): (99.4, 99.5),
                  ("ln", 0.2): (99.35, 99.4)}, seeds=(0, 1))
    r["runs"].append(run("gn", 2, 90.0, lr=0.2, final_val_acc=90.0, test_acc_at_best_val=90.0))  # chosen rate only
    r.update(seeds=[0, 1, 2], tune_seeds=[0, 1])
    text = findings(summarize(r), r)
    assert ("By mean test accuracy over seeds 0, 1, all at lr 0.1: ln, gn; each at its chosen rate: gn, ln: the "
            "means change order (an order of means, not a tested difference).") in text
    r.update(tune_seeds=[0])
    text = findings(summarize(r), r)
    assert any(line.startswith("By mean test accuracy over seed 0, all at lr 0.1") for line in text)


def test_the_first_line_says_what_was_run_without_running_seeds_into_epochs():
    results = {"variants": ["gn"], "seeds": [0], "batch_sizes": [2, 8], "lrs": [0.1], "lr_scaling": True,
               "base_config": {"epochs": 1, "lr": 0.1, "batch_size": 128, "val_size": 0}, "dataset_title": "MNIST",
               "runs": [{"test_images": 200, "trained": {"backend": "local", "runs_at_once": 1, "threads": 2}}]}
    line = what_was_run(results)
    assert line.startswith("1 variant × batch sizes 2, 8 × seed 0; 1 epoch each, on real MNIST (200 test images).")
    many = what_was_run({**results, "variants": ["bn", "gn"], "seeds": [0, 1], "batch_sizes": [128],
                         "base_config": {**results["base_config"], "epochs": 20}})
    assert many.startswith("2 variants × seeds 0, 1; 20 epochs each, on real MNIST")
    tuned = what_was_run({**results, "seeds": [0, 1, 2], "tune_seeds": [0], "lrs": [0.1, 0.2]})
    assert "over seed 0, which trains at every rate (seeds 1, 2 train at the chosen rate only)" in tuned
    assert "The test accuracies at the chosen rates are seeds 1, 2's alone" in tuned
    every = what_was_run({**results, "seeds": [0, 1, 2], "lrs": [0.1, 0.2]})
    assert "Every seed both chose the rate and reports it, so its test accuracy may flatter the choice" in every


def test_every_variant_at_the_smallest_size_is_paired_against_bn_at_the_largest_and_gn_at_the_smallest():
    def with_eval(variant, seed, acc, batch, precise, batch_stats=True):
        return run(variant, seed, acc, batch=batch, batch_stats=batch_stats, evaluation={
            "moving": acc, "precise": acc + precise, "batch": acc - 5.0, "group": batch, "precise_images": 9984})
    bn_large, bn_small = (99.40, 99.42, 99.38), (99.00, 99.03, 98.97)  # a loss of 0.40 the seeds support
    runs = [with_eval("bn", s, a, 128, 0.0) for s, a in enumerate(bn_large)]
    runs += [with_eval("bn", s, a, 2, 0.1) for s, a in enumerate(bn_small)]  # PreciseBN wins back a quarter
    runs += [with_eval("brn", s, a, 2, 0.0) for s, a in enumerate((99.40, 99.30, 99.50))]  # within noise of bn
    runs += [run("gn", s, a, batch=b, folder=f"gn/b128/seed{s}")  # ghost BN: the same runs at every size
             for s, a in enumerate((99.41, 99.45, 99.37)) for b in (2, 128)]
    r = {**results(runs, batch_sizes=(2, 128), ghost=True), "variants": ["bn", "brn", "gn"]}
    text, (header, table) = small_table(r)
    assert header == ["variant", "test error (%)", "extra error vs bn at 128 images per BN group",
                      "extra error vs gn at 2 images per BN group", "share of bn's loss recovered"]
    rows = {line[0]: line for line in table}
    assert list(rows) == ["bn", "bn, PreciseBN", "bn, test batch statistics", "brn", "brn, PreciseBN",
                          "brn, test batch statistics", "gn"]
    assert rows["bn"][1] == "1.00 ± 0.07" and rows["bn"][2].startswith("+0.40 (+0.38 to +0.42) [+0.3")
    assert rows["bn"][2].endswith("] more error †") and rows["bn"][4] == "0%"  # the batch-size question's
    assert rows["bn, PreciseBN"][2].startswith("+0.30") and rows["bn, PreciseBN"][4].startswith("25% (")
    assert rows["brn"][2].endswith(" ?") and rows["brn"][4].startswith("100% (") and rows["gn"][3] == "reference"
    assert rows["gn"][2].endswith(" ≈ †") and "Holm's correction over the table's 13 comparisons" in text
    sentence = [t for t in findings(summarize(r), r) if t.startswith("At 2 images per BN group, against bn")]
    assert sentence == ["At 2 images per BN group, against bn at 128 images per BN group (extra error, Holm over the "
                        "table's 13 comparisons): more error (both tests): bn with PreciseBN (+0.30), bn with test "
                        "batch statistics (+5.40), brn with test batch statistics (+5.00); inconclusive: brn (+0.00), "
                        "brn with PreciseBN (+0.00)."]  # gn's runs at 2 are its runs at 128: asked in that ranking
    assert small_table(results(runs[:3])) is None  # one size: no such table
    noisy = [with_eval("bn", s, a, 2, 0.0) for s, a in enumerate((99.40, 99.10, 99.45))]  # a loss within noise
    r = {**results(runs[:3] + noisy + runs[9:], batch_sizes=(2, 128), ghost=True), "variants": ["bn", "gn"]}
    text, (header, table) = small_table(r)
    assert header[-1] == "extra error vs gn at 2 images per BN group" and all(len(row) == 4 for row in table)
    assert "bn's own loss from 128 to 2 is not shown by both tests over these seeds, so no row's share" in text


def test_a_tie_on_validation_and_a_choice_at_the_edge_of_the_grid_are_said():
    r = lr_study({("gn", 0.1): (99.40, 99.5), ("gn", 0.2): (99.40, 99.6), ("ln", 0.1): (99.3, 99.5),
                  ("ln", 0.2): (99.4, 99.4)})
    chosen = findings(summarize(r), r)[0]
    assert "gn 0.1 (99.40%; the grid's smallest rate, so a better one may lie below it; a tie with 0.2, to the " \
           "smaller rate)" in chosen
    assert "ln 0.2 (99.40%; the grid's largest rate, so a better one may lie above it; 30 validation images " \
           "ahead of 0.1 over seeds 0, 1, 2)" in chosen


def test_a_run_with_batch_statistics_never_lends_its_moving_answers_to_another_way():
    from normlab.report.results import answers

    bn = run("bn", 0, 99.0, evaluation={"moving": 99.0, "precise": 99.1, "batch": 94.0})
    gn = run("gn", 0, 99.2)
    r = results([bn, gn])
    assert answers(r, bn, "precise").mean() * 100 == 99.1 and answers(r, gn, "precise").mean() * 100 == 99.2
    del bn["per_image"]["precise"]
    assert answers(r, bn, "precise") is None and answers(r, bn).mean() * 100 == 99.0


def test_each_variant_is_paired_with_its_normfirst_twin_judged_over_the_twins():
    # gn+normfirst 0.3 points above gn on every seed; ln+normfirst the same as ln; bn has no twin.
    r = results([run("gn", s, 99.40 + d) for s, d in enumerate((0.0, 0.02, -0.02))]
                + [run("gn+normfirst", s, 99.70 + d) for s, d in enumerate((0.01, 0.02, -0.02))]
                + [run("ln", s, 99.50 + d) for s, d in enumerate((0.0, 0.02, -0.02))]
                + [run("ln+normfirst", s, 99.50 + d) for s, d in enumerate((0.0, 0.02, -0.02))]
                + [run("bn", s, 99.45) for s in range(3)])
    order = [line for line in findings(summarize(r), r) if line.startswith("Block order")]
    assert len(order) == 2
    gn = next(line for line in order if "gn+normfirst (conv → norm → ReLU) 99.70%" in line)
    assert "gn (conv → ReLU → norm) 99.40%; gn+normfirst − gn: +0.30 points" in gn
    assert gn.endswith("the papers' order is better: both tests, Holm over 2.")
    ln = next(line for line in order if line.startswith("Block order: ln+normfirst"))
    assert "the same on all 3 seeds" in ln  # no image differs: no spread at all, and no claim from that alone
    assert ln.endswith("inconclusive (neither a difference nor equivalence within ±0.2 points, Holm over 2).")


def test_one_pair_gets_one_verdict_in_the_findings_and_the_table():
    """bn's own loss from 128 to 2 is asked once: alone it is supported (one comparison), and the table of the
    smallest size shows that verdict instead of judging the same pair again among its others, where Holm's
    correction could call it inconclusive and the report would say both. So for every pair the findings ask first:
    the rankings', and under ghost BN those of gn and ln, whose runs at 2 are their runs at 128."""
    runs = [run("bn", s, a, batch=128) for s, a in enumerate((99.40, 99.42, 99.38))]
    runs += [run("bn", s, a, batch=2) for s, a in enumerate((99.28, 99.26, 99.18))]  # 0.12-0.20 more error
    runs += [run(v, s, a, batch=b, batch_stats=False, folder=f"{v}/b128/seed{s}") for v in ("gn", "ln")
             for s, a in enumerate((99.41, 99.45, 99.37)) for b in (2, 128)]
    r = {**results(runs, batch_sizes=(2, 128), ghost=True), "variants": ["bn", "gn", "ln"]}
    text, (_, table) = small_table(r)
    found = findings(summarize(r), r)
    assert any(t.startswith("bn: test error") and t.endswith("the batch size matters: both tests, one comparison.")
               for t in found)
    assert table[0][0] == "bn" and table[0][2].endswith("] more error †")
    assert not any("(extra error, Holm" in t for t in found)  # the table judges nothing of its own here
    ranking = [t for t in found if t.startswith("bn ends 0.17 points lower")]  # gn ends best at 2, bn last
    assert ranking and ranking[0].endswith("a difference: both tests, Holm over 3.")
    assert table[0][3].startswith("+0.17 (") and table[0][3].endswith("] more error †")  # the same pair, one word
    at_128 = next(t for t in found if t.startswith("bn ends 0.01 points lower"))  # gn − bn at 128: gn at 2 vs bn
    assert at_128.endswith("equivalent within ±0.2 points: TOST over seeds and images, Holm over 3.")
    again = next(t for t in found if t.startswith("ln ends") and "as asked" in t)  # gn − ln at 128: their runs at 2
    assert again.endswith("(neither a difference nor equivalence within ±0.2 points, Holm over 3, as asked in the "
                          "ranking at 2 images per BN group).")
    assert table[1][2].endswith(" ≈ †") and table[2][3].endswith(" ? †")
    assert "Holm's correction over the table's 5 comparisons" in text and "† a pair of the same runs asked first, " \
        "in the batch-size question (Holm over 1); the ranking at 2 images per BN group (Holm over 3); the ranking " \
        "at 128 images per BN group (Holm over 3)" in text
