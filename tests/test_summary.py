from normlab.engine.config import TrainConfig
from normlab.nn.net import count_parameters
from normlab.report.summary import format_summary, layer_table


def test_summary_table():
    model = TrainConfig(norm="group").build_model()
    rows = layer_table(model)
    assert sum(r["params"] for r in rows) == count_parameters(model)
    by_name = {r["layer"]: r for r in rows}
    assert by_name["pool"]["output"] == (8, 13, 13) and by_name["pool"]["rf"] == 4
    assert by_name["conv2"]["output"] == (12, 11, 11) and by_name["conv2"]["rf"] == 8
    assert by_name["conv5"]["output"] == (16, 5, 5) and by_name["conv5"]["rf"] == 20
    assert by_name["head"]["output"] == (10, 1, 1)
    text = format_summary(model)
    assert "Net(norm='group', groups=4)" in text and f"{count_parameters(model):,}" in text.splitlines()[-1]
