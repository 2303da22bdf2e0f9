"""Benchmark set-up: the software and accelerator versions go into every result file."""

from __future__ import annotations

import torch


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Adds torch/triton/transformers versions and the GPU to the JSON's `machine_info`."""
    machine_info["torch"] = torch.__version__
    for name in ("triton", "transformers"):
        try:
            machine_info[name] = __import__(name).__version__
        except ImportError:
            machine_info[name] = None
    machine_info["cuda"] = torch.version.cuda
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["torch_threads"] = torch.get_num_threads()
