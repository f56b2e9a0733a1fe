"""`hf_lstm.machine`: the one description of the machine that every report records."""

import os
import platform

import torch

from hf_lstm import machine


def test_machine_facts_name_the_cpu_cores_os_and_software():
    facts = machine.machine_facts()
    assert set(facts) == {"cpu", "cores", "os", "gpu", "torch", "torch_threads", "python", "mkldnn"}
    assert facts["cpu"] and isinstance(facts["cpu"], str)
    assert facts["cores"] == os.cpu_count() and facts["os"] == platform.system()
    assert facts["torch"] == torch.__version__ and facts["torch_threads"] == torch.get_num_threads()
    assert facts["python"] == platform.python_version() and isinstance(facts["mkldnn"], bool)


def test_machine_summary_is_one_line_made_of_the_facts():
    facts = {**machine.machine_facts(), "cpu": "Some CPU", "cores": 3, "os": "Plan9"}
    assert machine.machine_summary({**facts, "gpu": None}) == "Some CPU, 3 logical cores, Plan9, no GPU"
    assert machine.machine_summary({**facts, "gpu": "NVIDIA H200"}).endswith("Plan9, GPU NVIDIA H200")
    line = machine.machine_summary()
    assert "\n" not in line and line.startswith(machine.cpu_name())
    assert f"{os.cpu_count()} logical cores" in line


def test_load_average_is_three_numbers_where_the_system_has_one():
    average = machine.load_average()
    if hasattr(os, "getloadavg"):
        assert len(average) == 3 and all(value >= 0 for value in average)
    else:
        assert average is None
