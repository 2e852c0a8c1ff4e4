"""Device choice and the precision each device trains in."""

from __future__ import annotations

import pytest
import torch

from tasks.config import ConfigError
from tasks.device import cuda_dtype, precision_for, select_device
from tasks.errors import UserError
from tasks.run_config import load_run_config


def test_a_cuda_card_trains_in_bfloat16_where_it_can_else_float16_scaled_but_not_under_dp():
    assert cuda_dtype(bf16=True, private=False) is torch.bfloat16
    assert cuda_dtype(bf16=True, private=True) is torch.bfloat16
    assert cuda_dtype(bf16=False, private=False) is torch.float16
    assert cuda_dtype(bf16=False, private=True) is None  # a scaled loss scales the clipping
    cpu = precision_for(torch.device("cpu"))
    assert cpu.dtype is None and not cpu.scaled and not cpu.scaler().is_enabled()


def test_devices_are_taken_as_asked_and_an_absent_one_is_a_clear_error():
    assert select_device("auto") == torch.device(
        "cuda" if torch.cuda.is_available()
        else "mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("cpu") == torch.device("cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match="'mps' was asked for"):
            select_device("mps")
    with pytest.raises(UserError, match="must be auto, cpu, cuda, cuda:N or mps"):
        select_device("tpu")


def test_a_config_naming_no_device_is_refused_on_load(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[task]\nname = "segmentation"\n[data]\nmanifest = "m.csv"\n'
                    '[train]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError, match=r"train\.device.*must be auto, cpu, cuda"):
        load_run_config(path)
