"""Shared helpers of the benchmark suite (plain Python, no test framework).

Every benchmark script writes ``<name>.tsv`` (one row per measurement), ``<name>.json`` (machine, load, settings,
rows) and ``<name>_targets.json`` (the performance targets with the measured value and whether each is met) into
its ``--out`` folder; ``run.py`` gathers the targets into ``targets.tsv``.

Peak memory: Linux keeps a process's peak RSS across ``exec`` (``ru_maxrss`` of a child started from a big parent
starts at the parent's size), so a child reports its own peak from ``/proc/self/status`` ``VmHWM`` (per address
space, reset by ``exec``). Python console scripts (``fedglioma``, ``snakemake``) are run through this module::

    python benchmarks/common.py --peak-json OUT.json -- .venv/bin/fedglioma federated aggregate ...

which runs the script in-process and writes its exit code, wall seconds and ``VmHWM`` to ``OUT.json``.
Commands that start their own children (a whole workflow) are watched with :class:`TreeMonitor` instead (sum of
the RSS of the process tree, sampled).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import runpy
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = REPO / "results" / "benchmarks"
PYTHON = sys.executable
BIN = Path(sys.executable).parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


# ----------------------------------------------------------------------------------------------- arguments


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script takes: ``--out``, ``--quick``, ``--reps``."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true", help="the short variant (part of `make bench-quick`)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (interleaved); default per script")
    return ap


# ----------------------------------------------------------------------------------------------- machine


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and under which load)."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "mem_gb": mem_total_gb(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": load_avg(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def thread_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child limited to ``threads`` threads (OpenMP, MKL, OpenBLAS, ITK)."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env.setdefault("PYTHONHASHSEED", "0")
    # the package may not be installed in the interpreter running this (editable installs are)
    pkg = str(REPO / "workflow" / "scripts")
    env["PYTHONPATH"] = pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ----------------------------------------------------------------------------------------------- memory


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size (``VmHWM``) of a process's current address space, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    # not Linux: ru_maxrss (KiB on Linux, bytes on macOS); may include a parent's peak
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class TreeMonitor:
    """Samples the summed RSS of a process and all its descendants (psutil) in a thread: ``peak_mb``."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                self.peak_mb = max(self.peak_mb, rss / 1024**2)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------------------------- children


def _stop(proc: subprocess.Popen[str]) -> str | None:
    """SIGTERM the child's process group, SIGKILL after 30 s; its remaining output."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """``preexec_fn``: the child gets SIGTERM when the benchmark process dies, even by SIGKILL (Linux
    ``PR_SET_PDEATHSIG``; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_child(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    log: str | Path | None = None,
    tree: bool = False,
) -> dict[str, Any]:
    """Run ``cmd``; return ``rc``, ``wall_s``, ``cpu_s`` (user + system of the child and its waited-for
    children), ``stdout`` (when no ``log``), ``timed_out`` and with ``tree`` ``tree_peak_mb`` (sampled)."""
    out_f = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=out_f,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so that a timeout or an interrupt stops all of it
        preexec_fn=_die_with_parent,
    )
    mon = TreeMonitor(proc.pid) if tree else None
    if mon:
        mon.__enter__()
    timed_out = False
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stdout = _stop(proc)
    except BaseException:  # Ctrl-C or SIGTERM of the benchmark: its children go with it
        _stop(proc)
        raise
    finally:
        if mon:
            mon.__exit__()
        if log:
            out_f.close()  # type: ignore[union-attr]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res: dict[str, Any] = {
        "rc": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
        "timed_out": timed_out,
    }
    if not log:
        res["stdout"] = stdout or ""
    if mon:
        res["tree_peak_mb"] = round(mon.peak_mb, 1)
    return res


def run_script_measured(
    script: str | Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    log: str | Path | None = None,
) -> dict[str, Any]:
    """Run a Python console script (``.venv/bin/fedglioma``, ``.venv/bin/snakemake``) in a child through
    this module's ``--peak-json`` wrapper: :func:`run_child` fields plus ``peak_rss_mb`` (``VmHWM`` of the child)
    and ``inner_s`` (wall seconds of the script itself, interpreter start-up excluded)."""
    with tempfile.TemporaryDirectory(prefix="fgbench-") as tmp:
        pj = Path(tmp) / "peak.json"
        res = run_child([PYTHON, __file__, "--peak-json", str(pj), "--", str(script), *args], env=env, cwd=cwd,
                        timeout=timeout, log=log)
        if pj.is_file():
            info = json.loads(pj.read_text())
            res["peak_rss_mb"] = info["peak_rss_mb"]
            res["inner_s"] = info["inner_s"]
    return res


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (children print their result last)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError(f"no JSON result in child output:\n{text[-3000:]}")


# ----------------------------------------------------------------------------------------------- output


def median(xs: Iterable[float | None]) -> float | None:
    v = [float(x) for x in xs if x is not None]
    return statistics.median(v) if v else None


def rnd(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


def write_tsv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts) as a TSV; the columns are the union of the keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else _cell(r.get(k))) for k in cols})
    return path


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def target(
    benchmark: str, name: str, measured: float | None, op: str, threshold: float, unit: str = "", note: str = ""
) -> dict[str, Any]:
    """One performance target: ``measured op threshold`` (op ``>=``, ``<=``, ``<``, ``>``); ``met`` is ``None``
    when nothing was measured."""
    ok: bool | None
    if measured is None:
        ok = None
    else:
        ok = {">=": measured >= threshold, "<=": measured <= threshold, "<": measured < threshold,
              ">": measured > threshold}[op]
    return {"benchmark": benchmark, "target": name, "measured": rnd(measured, 4), "op": op, "threshold": threshold,
            "unit": unit, "met": ok, "note": note}


def save(out: Path, name: str, rows: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
         settings: Mapping[str, Any], load_before: list[float], extra: Mapping[str, Any] | None = None) -> None:
    """Write ``<name>.tsv``, ``<name>.json`` and ``<name>_targets.json`` into ``out``; print the targets."""
    write_tsv(out / f"{name}.tsv", rows)
    write_json(out / f"{name}.json", {"benchmark": name, "machine": machine(), "load_before": load_before,
                                      "load_after": load_avg(), "settings": dict(settings), "rows": list(rows),
                                      "targets": list(targets), **dict(extra or {})})
    write_json(out / f"{name}_targets.json", list(targets))
    for t in targets:
        flag = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"[{name}] {t['target']}: {t['measured']} {t['unit']} ({t['op']} {t['threshold']}) {flag}", flush=True)


# ----------------------------------------------------------------------------------------------- wrapper


def _peak_main(argv: Sequence[str]) -> int:
    """``--peak-json OUT -- SCRIPT ARGS...``: run a Python script in this process, record ``VmHWM``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak-json", required=True, type=Path)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    sys.argv = list(cmd)
    code: Any = 0
    t0 = time.perf_counter()
    try:
        runpy.run_path(cmd[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    inner = time.perf_counter() - t0
    rc = code if isinstance(code, int) else (0 if code is None else 1)
    write_json(a.peak_json, {"rc": rc, "peak_rss_mb": vm_hwm_mb(), "inner_s": round(inner, 3)})
    return rc


if __name__ == "__main__":
    sys.exit(_peak_main(sys.argv[1:]))
