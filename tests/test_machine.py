import pytest
import torch

from normlab.errors import UserError
from normlab.machine import cpu_cores, environment, resolve_device


def test_auto_takes_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="this torch build sees no CUDA GPU"):
        resolve_device("cuda:0")


def test_cores_and_environment():
    assert cpu_cores() >= 1
    env = environment(torch.device("cpu"), "cache:x", {"a": "b"}, {"backend": "local", "runs_at_once": 3})
    assert env["torch"] == torch.__version__ and env["data_md5"] == {"a": "b"} and env["device"] == "cpu"
    assert env["sharing"] == {"backend": "local", "runs_at_once": 3}
