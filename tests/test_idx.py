import io
import os
import pickle

import numpy as np
import pytest

from normlab.data.idx import decode_idx, encode_idx
from normlab.data.safepickle import ArrayOnlyUnpickler
from normlab.errors import UserError


def test_idx_round_trip():
    a = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    assert np.array_equal(decode_idx(encode_idx(a), "a"), a)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not an IDX file"),
    (lambda raw: raw[:-7], "truncated or corrupt"),
    (lambda raw: raw[:6], "header is truncated"),
    (lambda raw: b"", "not an IDX file"),
])
def test_corrupt_idx_is_a_clear_error(damage, message):
    raw = encode_idx(np.zeros((4, 2, 2), dtype=np.uint8))
    with pytest.raises(UserError, match=message):
        decode_idx(damage(raw), "x-idx3-ubyte")


def test_unpickler_allows_arrays_and_nothing_else():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3))
    out = ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    assert np.array_equal(out[0], arrays[0]) and np.array_equal(out[1], arrays[1])

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*system: only numpy arrays"):
        ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(Boom()))).load()


def test_a_file_longer_than_its_format_promises_is_refused_before_it_is_read(tmp_path):
    import gzip

    from normlab.data.idx import idx_size, read_maybe_gzip

    name = "t10k-labels-idx1-ubyte"
    sparse = tmp_path / name
    with sparse.open("wb") as f:
        f.truncate(3 * 2**30)  # 3 GB that occupy no disk: reading them would take seconds and 3 GB of memory
    with pytest.raises(UserError, match=r"3,221,225,472 bytes, more than the 10,008 of the original file"):
        read_maybe_gzip(sparse, idx_size(name))
    bomb = tmp_path / f"{name}.gz"
    bomb.write_bytes(gzip.compress(bytes(50 * 2**20), compresslevel=1))  # 50 MB of zeros in about 50 kB
    with pytest.raises(UserError, match=r"inflates past the 10,008 bytes of the original file"):
        read_maybe_gzip(bomb, idx_size(name))
