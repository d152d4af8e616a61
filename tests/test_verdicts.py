import numpy as np

from normlab.report.stats import pair
from normlab.report.verdicts import Verdicts, arm


def answers(seed, wrong):
    correct = np.ones(2000, bool)
    correct[np.random.default_rng(seed).permutation(2000)[:wrong]] = False
    return correct


def point(name, wrong):
    """Three seeds' accuracies and per-image answers of a point that misses ``wrong`` of 2,000 images."""
    return ({s: 100 * (1 - (wrong + s) / 2000) for s in range(3)}, {s: answers(s, wrong + s) for s in range(3)},
            arm([{"folder": f"{name}/seed{s}"} for s in range(3)], "moving"))


def between(a, b):
    return a[2], b[2], pair(a[0], b[0], a[1], b[1])


def test_a_pair_asked_again_keeps_the_verdict_and_family_of_the_question_that_asked_it_first():
    good, bad, other = point("good", 20), point("bad", 80), point("other", 21)
    verdicts = Verdicts(margin=0.2)
    first = verdicts.ask("the batch-size question", [between(good, bad)])
    assert first[0].words == "higher" and first[0].family == 1 and first[0].where == "the batch-size question"
    again = verdicts.ask("the table", [between(bad, good), between(good, other), between(bad, other)])
    assert again[0].where == "the batch-size question" and again[0].family == 1  # not judged again
    assert again[0].words == "lower" and again[0].seeds.mean == -first[0].seeds.mean  # b − a of a − b
    assert [j.where for j in again[1:]] == ["the table", "the table"] and again[1].family == 3  # Holm over all 3
    assert verdicts.ask("later", [between(other, good)])[0].family == 3  # asked before: kept
    twice = Verdicts(margin=0.2).ask("one question", [between(good, bad), between(bad, good)])
    assert twice[0].family == 1 and twice[1].words == "lower"  # one pair, both ways round: one comparison


def test_a_point_is_its_runs_under_its_statistics():
    runs = [{"folder": "bn/b128/seed0", "batch_stats": True, "evaluation": {"moving": 99.0}}]
    assert arm(runs, "precise") != arm(runs, "moving")  # BN's answers differ by the statistics it evaluates with
    plain = [{"folder": "gn/b128/seed0", "batch_stats": False}]
    assert arm(plain, "precise") == arm(plain, "moving")  # one set of answers, whichever is asked
    as_if_at_2 = [{"folder": "gn/b128/seed0", "batch_stats": False, "batch_size": 2}]  # ghost BN: the same runs
    assert arm(as_if_at_2, "moving") == arm(plain, "moving")
