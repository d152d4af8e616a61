import signal

import pytest

from normlab.errors import Interrupted, UserError, shown, signals_raise_interrupted


def test_a_user_error_names_its_setting_as_the_caller_calls_it():
    e = UserError("must be at least 1; or set {train_limit}", "batch_size", 0)
    assert str(e) == "batch_size 0: must be at least 1; or set train_limit"
    assert e.render(lambda s: "--" + s.replace("_", "-")) == "--batch-size 0: must be at least 1; or set --train-limit"
    assert UserError("plain", "seeds", [1, 1]).render() == "seeds 1 1: plain"
    assert str(UserError("no setting")) == "no setting"


def test_signals_become_interrupted_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as e, signals_raise_interrupted():
        signal.raise_signal(signal.SIGTERM)
    assert e.value.code == 143 and str(e.value) == "stopped by SIGTERM" and e.value.saved == ""
    assert signal.getsignal(signal.SIGTERM) is before


def test_control_characters_in_a_value_or_path_are_shown_escaped_never_a_second_line():
    error = UserError("is a file, not a folder; choose another {out}", "out", "/tmp/a\nnormlab: error: forged\x1b[2J")
    assert error.render(lambda s: "--" + s) == \
        "--out /tmp/a\\x0anormlab: error: forged\\x1b[2J: is a file, not a folder; choose another --out"


def test_a_c1_code_or_a_paths_c1_byte_is_escaped_a_paths_other_bytes_are_kept():
    """U+009B (CSI on 8-bit terminals), and the byte 0x9b of a path that is not UTF-8 (decoded as U+DC9B), would
    start a terminal sequence; a path's byte 0xff (U+DCFF) prints as itself."""
    assert shown("a\x9bb\udc9bc\udcffd\x1b") == "a\\x9bb\\x9bc\udcffd\\x1b"
