import pytest
import torch

from normlab.errors import UserError
from normlab.machine import check_threads, command_line, cpu_cores, environment, resolve_device


def test_auto_takes_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="this torch build sees no CUDA GPU"):
        resolve_device("cuda:0")


def test_more_torch_threads_than_cores_are_refused_naming_the_limit():
    check_threads(cpu_cores())
    check_threads(None)
    with pytest.raises(UserError, match=f"more than the {cpu_cores()} CPU core"):
        check_threads(cpu_cores() + 1)


def test_a_run_records_its_own_command_or_the_one_its_driver_passes():
    cpu = torch.device("cpu")
    local = environment(cpu, "cache:x", {"a": "b"}, {"backend": "local", "runs_at_once": 3})
    assert local["command"] == command_line() and local["sharing"] == {"backend": "local", "runs_at_once": 3}
    ray = environment(cpu, "cache:x", {}, {"backend": "ray", "runs_at_once": 2, "command": "normlab study -x"})
    assert ray["command"] == "normlab study -x" and "command" not in ray["sharing"]
