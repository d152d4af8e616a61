import pytest

from normlab.engine.config import TrainConfig
from normlab.errors import UserError
from normlab.study.plan import L1_LAMBDA, parse_variant, plan_grid, run_folder


@pytest.mark.parametrize("text, norm, groups, l1, ws", [
    ("bn+l1", "batch", None, L1_LAMBDA, False), ("gn:2", "group", 2, 0.0, False), ("LN", "layer", None, 0.0, False),
    ("instance", "instance", None, 0.0, False), ("none", "none", None, 0.0, False),
    ("gn+ws", "group", None, 0.0, True), ("bn+ws+l1", "batch", None, L1_LAMBDA, True),
    ("bn+l1+ws", "batch", None, L1_LAMBDA, True), ("evonorm-s0:2", "evonorm-s0", 2, 0.0, False),
    ("brn", "brn", None, 0.0, False), ("frn+ws", "frn", None, 0.0, True),
])
def test_parse_variant(text, norm, groups, l1, ws):
    v = parse_variant(text)
    assert (v.norm, v.groups, v.l1, v.weight_std) == (norm, groups, l1, ws)
    config = v.config(TrainConfig(), seed=4)
    assert (config.norm, config.l1, config.weight_std, config.seed) == (norm, l1, ws, 4)


@pytest.mark.parametrize("text, frozen", [("bn+frozen2", 2), ("brn+ws+frozen1", 1), ("evonorm-b0+frozen5+l1", 5)])
def test_frozen_bn_is_a_variant_of_a_norm_with_batch_statistics(text, frozen):
    config = parse_variant(text).config(TrainConfig(), seed=0)
    assert config.freeze_bn_epochs == frozen and parse_variant(text).folder == text
    assert config != parse_variant(text.split("+")[0]).config(TrainConfig(), seed=0)  # not the plain norm


@pytest.mark.parametrize("text, message", [
    ("bogus", "unknown variant 'bogus'"), ("ln:2", r"only a grouped norm \(group, evonorm-s0\) takes a group"),
    ("gn:²", "takes a group count, a number"),
    ("gn:-1", "only a grouped norm"), ("gn+l2", "unknown variant 'gn\\+l2'"), ("gn+ws+ws", "unknown variant"),
    ("gn+frozen2", "FrozenBN freezes batch statistics, which only batch, brn, evonorm-b0 have"),
    ("bn+frozen0", "unknown variant"), ("bn+frozen1+frozen2", "unknown variant"),
])
def test_bad_variants(text, message):
    with pytest.raises(UserError, match=message):
        parse_variant(text)


def test_a_ghost_grid_trains_a_batch_free_norm_once_and_later_seeds_at_one_rate(tmp_path):
    grid = plan_grid(["bn", "gn"], [0, 1, 2], TrainConfig(val_size=1000), [2, 128], [0.1, 0.2], [0, 1], True, True)
    bn, gn = grid.variants
    assert grid.configs[(bn, 2, 0.1, 0)].bn_batch == 2 and grid.configs[(bn, 2, 0.1, 0)].batch_size == 128
    assert grid.configs[(bn, 128, 0.2, 0)].bn_batch is None and grid.configs[(gn, 2, 0.2, 1)].bn_batch is None
    folders = {run_folder(tmp_path, v, c, grid.lr_axis) for c, (v, *_) in
               zip(grid.configs.values(), grid.configs, strict=True)}
    assert len(folders) == 2 * 2 * 3 + 2 * 3  # gn's folder is the same at every group size
    assert grid.runs(tmp_path) == (8 + 2) + (4 + 1)  # tuning seeds 0, 1 at both rates; seed 2 at one
    assert grid.settings()["lr_scaling"] is False and grid.settings()["tune_seeds"] == [0, 1]


def test_without_ghost_the_rate_scales_with_the_batch_size_unless_told_not_to():
    scaled = plan_grid(["ln"], [0], TrainConfig(), [32, 128], None, None, True, False)
    fixed = plan_grid(["ln"], [0], TrainConfig(), [32, 128], None, None, False, False)
    ln = scaled.variants[0]
    assert scaled.configs[(ln, 32, 0.1, 0)].lr == pytest.approx(0.025) and not scaled.lr_axis
    assert fixed.configs[(fixed.variants[0], 32, 0.1, 0)].lr == 0.1


@pytest.mark.parametrize("args, message", [
    ((["bn", "batch"], [0], None, None, None, True, False), "bn and batch name the same model"),
    ((["bn"], [0, 0], None, None, None, True, False), "give one or more different seeds"),
    ((["bn"], [0], None, [0.1, 0.2], None, True, False), "needs validation images"),
    ((["bn"], [0], [2, 256], None, None, True, True), "give sizes up to it"),
    ((["bn"], [0], None, None, None, True, True), "batch norm's images per group: give"),
])
def test_a_bad_grid_is_one_error_before_anything_is_made(args, message):
    variants, seeds, sizes, lrs, tune, scaling, ghost = args
    with pytest.raises(UserError, match=message):
        plan_grid(variants, seeds, TrainConfig(), sizes, lrs, tune, scaling, ghost)


def test_normfirst_is_a_variant_of_its_own_and_a_setting_of_the_run():
    variant = parse_variant("gn+normfirst")
    assert variant.norm_first and variant.config(TrainConfig(), 0).norm_first
    assert not parse_variant("gn").config(TrainConfig(), 0).norm_first
    grid = plan_grid(["gn", "gn+normfirst"], [0], TrainConfig(), None, None, None, True, False)
    assert len({c.norm_first for c in grid.configs.values()}) == 2


def test_a_variants_group_count_is_checked_against_its_studys_model():
    plan_grid(["gn:8"], [0], TrainConfig(model="resnet"), None, None, None, True, False)  # 8, 16, 32 channels
    with pytest.raises(UserError, match="variant 'gn:8': 8 groups does not divide the channel counts"):
        plan_grid(["gn:8"], [0], TrainConfig(), None, None, None, True, False)  # normlab's 8, 12, 16


def test_normfirst_for_a_model_that_keeps_its_order_names_the_variant():
    with pytest.raises(UserError, match=r"variant 'gn\+normfirst': \+normfirst orders normlab's Net's blocks"):
        plan_grid(["gn", "gn+normfirst"], [0], TrainConfig(model="resnet"), None, None, None, True, False)


def test_by_default_three_seeds_choose_the_rate_and_the_others_report_it():
    """Where a study has more seeds than 3, the first 3 choose each variant's rate and the rest report it (their
    test accuracy carries no luck of the choice); with 3 or fewer, or one rate, every seed does both."""
    base = TrainConfig(val_size=1000)
    assert plan_grid(["gn"], [0, 1, 2, 3, 4], base, None, [0.1, 0.2], None, True, False).tuning == [0, 1, 2]
    assert plan_grid(["gn"], [0, 1, 2], base, None, [0.1, 0.2], None, True, False).tuning == [0, 1, 2]
    assert plan_grid(["gn"], [5, 6, 7, 8], base, None, None, None, True, False).tuning == [5, 6, 7, 8]
    assert plan_grid(["gn"], [0, 1, 2, 3], base, None, [0.1, 0.2], [3], True, False).tuning == [3]
