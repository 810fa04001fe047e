"""Provenance records: CPU model, package versions, the one-line system label the report prints."""

from __future__ import annotations

import torch

from hubrl.provenance import PACKAGES, cpu_model, package_versions, system_info, system_label


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                       "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nflags\t: sse\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    fallback = cpu_model(tmp_path / "missing")
    assert isinstance(fallback, str) and fallback


def test_package_versions():
    versions = package_versions(("torch", "surely-not-a-distribution-hubrl"))
    assert versions["surely-not-a-distribution-hubrl"] is None
    # the installed distribution's version: some CUDA builds' metadata lack the local label that
    # torch.__version__ carries (2.11.0 for 2.11.0+cu130, seen on the device machine)
    assert versions["torch"] and torch.__version__.startswith(versions["torch"])


def test_system_info_and_label():
    info = system_info()
    assert set(PACKAGES) == set(info["packages"]) and info["packages"]["stable-baselines3"]
    assert info["cpu_model"] and info["cpu_count"] and info["torch"] == torch.__version__
    label = system_label({
        "cpu_model": "AMD EPYC 7B13", "cpu_capability": "AVX2", "cuda": None,
        "packages": {"hubrl": "0.1.0", "torch": "2.13.0+cpu", "ale-py": "0.12.1", "numpy": None},
    })
    assert label == "AMD EPYC 7B13 (AVX2), torch 2.13.0+cpu, ale-py 0.12.1"
    assert system_label({}) == "unknown CPU"


def test_system_info_is_plain_yaml():
    """``config.yaml`` is written with ``yaml.safe_dump``: every value must be a plain type."""
    import yaml

    info = system_info()
    assert yaml.safe_load(yaml.safe_dump(info)) == info
