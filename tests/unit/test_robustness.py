"""Failed sites, refused updates, the quorum, the update-norm bound, trimmed means that trim, simulated attacks,
and training attempts in a child process."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedglioma.errors import InputError, UpdateRejected
from fedglioma.federated import (
    FedAvg,
    Median,
    MemoryUpdate,
    MultiKrum,
    ScaledUpdate,
    TrimmedMean,
    aggregate_files,
    direction_cosines,
    krum_byzantine,
    load_params,
    save_params,
    trim_count,
    update_norm,
)
from fedglioma.federated.attacks import attack_tensors, check_attack_site
from fedglioma.settings import AttackConfig
from fedglioma.train.isolate import run_isolated

PREV = {"w": torch.zeros(2, 3), "b": torch.zeros(4)}


@pytest.fixture
def prev(tmp_path: Path) -> Path:
    p = tmp_path / "round-0" / "global.safetensors"
    save_params(p, PREV, {"kind": "global", "round": 0})
    return p


def _sha(p: Path) -> str:
    return json.loads(p.with_suffix(".json").read_text())["sha256"]


def _update(root: Path, site: str, value: float, prev: Path, *, n: int = 2, rnd: int = 1, **side: object) -> Path:
    p = root / site / "update.safetensors"
    meta = {"kind": "update", "round": rnd, "site": site, "n_train": n, "global_sha256": _sha(prev), **side}
    save_params(p, {"w": torch.full((2, 3), value), "b": torch.full((4,), value)}, meta)
    return p


def _aggregate(paths: list[Path], prev: Path, out: Path, sites: list[str], **kw: object) -> dict:
    return aggregate_files(kw.pop("strategy", FedAvg()), paths, prev, out, 1, sites=sites, **kw)  # type: ignore[arg-type]


def test_failed_site_left_out_with_its_reason(tmp_path: Path, prev: Path) -> None:
    ups = [_update(tmp_path, s, v, prev) for s, v in (("A", 1.0), ("B", 3.0))]
    failed = tmp_path / "C" / "update.safetensors"
    save_params(failed, {}, {"kind": "update", "status": "failed", "round": 1, "site": "C", "attempts": 2,
                             "reason": "InjectedFault: disk full"})
    side = _aggregate([*ups, failed], prev, tmp_path / "g.safetensors", ["A", "B", "C"], min_sites=2)
    assert [s["site"] for s in side["sites"]] == ["A", "B"]
    assert side["excluded"] == [{"site": "C", "stage": "failed",
                                 "reason": "failed at the site after 2 attempt(s): InjectedFault: disk full"}]
    assert load_params(tmp_path / "g.safetensors")[0]["b"].tolist() == [2.0] * 4


def test_below_quorum_names_every_site_and_writes_nothing(tmp_path: Path, prev: Path) -> None:
    a = _update(tmp_path, "A", 1.0, prev)
    b = _update(tmp_path, "B", 1.0, prev, rnd=2)
    c = tmp_path / "C" / "update.safetensors"
    save_params(c, {}, {"kind": "update", "status": "failed", "round": 1, "site": "C", "attempts": 1, "reason": "x"})
    out = tmp_path / "g.safetensors"
    with pytest.raises(UpdateRejected) as exc:
        _aggregate([a, b, c], prev, out, ["A", "B", "C"], min_sites=2)
    msg = str(exc.value)
    assert "1 of 3 sites" in msg and "quorum of 2" in msg and "site B (refused)" in msg and "site C (failed)" in msg
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_quorum_capped_at_the_number_of_sites(tmp_path: Path, prev: Path) -> None:
    side = _aggregate([_update(tmp_path, "A", 1.0, prev)], prev, tmp_path / "g.safetensors", ["A"], min_sites=5)
    assert side["quorum"] == 1


def _tamper_cases(root: Path, prev: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    cases["unknown site"] = (_update(root / "1", "Mallory", 1.0, prev), "not the site this update came from")
    cases["stale global"] = (_update(root / "2", "A", 1.0, prev, global_sha256="0" * 64), "replayed or stale")
    p = _update(root / "3", "A", 1.0, prev)
    side = json.loads(p.with_suffix(".json").read_text())
    save_file({"w": torch.ones(2, 3), "b": torch.ones(4)}, str(p),
              metadata={"fedglioma": json.dumps({"kind": "update", "round": 0, "site": "A"})})
    side["sha256"] = __import__("hashlib").sha256(p.read_bytes()).hexdigest()
    p.with_suffix(".json").write_text(json.dumps(side))
    cases["header from another round"] = (p, "own header")
    p = _update(root / "4", "A", 1.0, prev)
    with p.open("r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    cases["tampered bytes"] = (p, "sha256 differs")
    return cases


def test_tampered_updates_refused_with_the_reason(tmp_path: Path, prev: Path) -> None:
    good = [_update(tmp_path / "ok", s, 1.0, prev) for s in ("B", "C")]
    for name, (bad, why) in _tamper_cases(tmp_path, prev).items():
        side = _aggregate([bad, *good], prev, tmp_path / "g.safetensors", ["A", "B", "C"], min_sites=2)
        (e,) = side["excluded"]
        assert e["site"] == "A" and e["stage"] == "refused" and why in e["reason"], (name, e)
        assert "round 1" in e["reason"]


def test_a_copy_of_another_sites_update_is_refused(tmp_path: Path, prev: Path) -> None:
    a = _update(tmp_path, "A", 1.0, prev)
    b = tmp_path / "B" / "update.safetensors"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    side = json.loads(a.with_suffix(".json").read_text()) | {"site": "B"}
    b.with_suffix(".json").write_text(json.dumps(side))
    c = _update(tmp_path, "C", 2.0, prev)
    out = aggregate_files(FedAvg(), [a, b, c], prev, tmp_path / "g.safetensors", 1, sites=["A", "B", "C"],
                          min_sites=1)
    (e,) = out["excluded"]
    assert e["site"] == "B" and "own header" in e["reason"]
    assert [s["site"] for s in out["sites"]] == ["A", "C"]


def test_norm_bound_clips_or_refuses(tmp_path: Path, prev: Path) -> None:
    ups = [_update(tmp_path, s, v, prev) for s, v in (("A", 1.0), ("B", 1.1), ("C", 0.9), ("D", 50.0))]
    sites = ["A", "B", "C", "D"]
    side = _aggregate(ups, prev, tmp_path / "g.safetensors", sites, update_norm_bound=2.0, min_sites=3)
    norms = {s["site"]: s["norm"] for s in side["sites"]}
    assert norms["D"] == pytest.approx(50 * math.sqrt(10))
    bound = side["update_norm_bound"]["bound"]
    assert bound == pytest.approx(2 * (1.0 + 1.1) / 2 * math.sqrt(10))
    (d,) = [s for s in side["sites"] if s["site"] == "D"]
    assert d["clip_scale"] == pytest.approx(bound / norms["D"])
    b = load_params(tmp_path / "g.safetensors")[0]["b"][0].item()
    assert b == pytest.approx((1.0 + 1.1 + 0.9 + 50.0 * d["clip_scale"]) / 4, rel=1e-6)
    side = _aggregate(ups, prev, tmp_path / "g.safetensors", sites, update_norm_bound=2.0,
                      update_norm_action="refuse", min_sites=3)
    assert [e["site"] for e in side["excluded"]] == ["D"] and side["excluded"][0]["stage"] == "norm"


def test_direction_cosine_against_the_median_of_the_others() -> None:
    prev = {"w": torch.zeros(3)}
    vals = {"A": [1.0, 0.0, 0.0], "B": [1.0, 1.0, 0.0], "C": [1.0, 0.0, 1.0], "D": [-1.0, 0.0, 0.0]}
    ups = {s: MemoryUpdate(site=s, round=1, n_train=1, tensors={"w": torch.tensor(v)}) for s, v in vals.items()}
    cos = direction_cosines(ups, prev)
    # A: others B, C, D -> median [1, 0, 0], cosine 1; D: median of A, B, C = [1, 0, 0], cosine -1
    assert cos["A"] == pytest.approx(1.0) and cos["D"] == pytest.approx(-1.0)
    # B: others A, C, D -> median [1, 0, 0]; cos(B, ref) = 1/sqrt(2)
    assert cos["B"] == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match="at least 3"):
        direction_cosines({s: ups[s] for s in "AB"}, prev)


def test_direction_check_refuses_the_flipped_update(tmp_path: Path, prev: Path) -> None:
    ups = [_update(tmp_path, s, v, prev) for s, v in (("A", -1.0), ("B", 1.0), ("C", 1.1), ("D", 0.9))]
    side = _aggregate(ups, prev, tmp_path / "g.safetensors", list("ABCD"), update_min_cosine=0.0, min_sites=3)
    (e,) = side["excluded"]
    assert e["site"] == "A" and e["stage"] == "direction" and "cosine -1" in e["reason"]
    assert {s["site"]: s["cosine"] for s in side["sites"]} == pytest.approx({"B": 1.0, "C": 1.0, "D": 1.0})
    assert side["update_min_cosine"] == {"threshold": 0.0, "checked": True}
    assert load_params(tmp_path / "g.safetensors")[0]["b"][0].item() == pytest.approx(1.0)
    # two updates: no reference to judge by, the check is skipped (and says so)
    side = _aggregate(ups[:2], prev, tmp_path / "g2.safetensors", list("AB"), update_min_cosine=0.0, min_sites=1)
    assert side["excluded"] == [] and side["update_min_cosine"]["checked"] is False


def test_scaled_update_and_norm() -> None:
    u = MemoryUpdate(site="A", round=1, n_train=1, tensors={"w": torch.full((2, 3), 3.0), "b": torch.full((4,), 3.0)})
    prev = {"w": torch.ones(2, 3), "b": torch.ones(4)}
    assert update_norm(u, prev) == pytest.approx(2 * math.sqrt(10))
    s = ScaledUpdate(u, prev, 0.25)
    assert s.get("w").tolist() == [[1.5] * 3] * 2 and s.site == "A" and s.n_train == 1


@pytest.mark.parametrize(("beta", "n", "k"), [(0.1, 5, 1), (0.1, 3, 1), (0.1, 2, 0), (0.0, 5, 0), (0.2, 10, 2),
                                              (0.3, 10, 3), (0.45, 5, 2), (0.1, 1, 0)])
def test_trim_count_trims_at_federation_sizes(beta: float, n: int, k: int) -> None:
    assert trim_count(beta, n) == k


def test_trimmed_mean_at_five_sites_drops_the_attacker() -> None:
    vals = [1.0, 1.2, 0.8, 1.1, 1000.0]
    ups = [MemoryUpdate(site=f"S{i}", round=1, n_train=1, tensors={"w": torch.tensor([v])}) for i, v in enumerate(vals)]
    new, _ = TrimmedMean(0.1).aggregate({"w": torch.zeros(1)}, ups, {})
    assert new["w"].item() == pytest.approx((1.0 + 1.2 + 1.1) / 3)
    new, _ = Median().aggregate({"w": torch.zeros(1)}, ups, {})
    assert new["w"].item() == pytest.approx(1.1)


def _mem(values: list[list[float]]) -> list[MemoryUpdate]:
    return [MemoryUpdate(site=f"S{i}", round=1, n_train=1 + i, tensors={"w": torch.tensor(v)})
            for i, v in enumerate(values)]


def test_multi_krum_leaves_out_the_sign_flipped_update() -> None:
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.2]]
    ups = _mem([[-1.0, -1.0], *honest])  # S0 sends the honest direction flipped
    krum = MultiKrum(1)
    new, state = krum.aggregate({"w": torch.zeros(2)}, ups, {})
    assert state == {}
    torch.testing.assert_close(new["w"], torch.tensor(honest).mean(0))  # unweighted: n_train is not trusted
    rec = krum.round_record()["krum"]
    assert rec["byzantine"] == 1 and rec["neighbours"] == 2
    assert rec["not_kept"] == ["S0"] and rec["kept"] == ["S1", "S2", "S3", "S4"]
    # score of S1 = [1, 1]: squared distances to its 2 nearest others (S2: 0.02, S3: 0.02; S4: 0.04, S0: 8)
    assert rec["scores"]["S1"] == pytest.approx(0.02 + 0.02)
    assert rec["scores"]["S0"] == pytest.approx(8.0 + (2.1**2 + 1.9**2))


def test_multi_krum_without_attackers_is_the_unweighted_mean() -> None:
    ups = _mem([[1.0], [2.0], [4.0]])  # 3 sites < 2f + 3: f lowered to 0, every update kept
    krum = MultiKrum(1)
    new, _ = krum.aggregate({"w": torch.zeros(1)}, ups, {})
    assert new["w"].item() == pytest.approx(7 / 3)
    assert krum.round_record()["krum"]["byzantine"] == 0 and krum.round_record()["krum"]["not_kept"] == []
    with pytest.raises(Exception, match=">= 0"):
        MultiKrum(-1)


@pytest.mark.parametrize(("f", "n", "used"), [(1, 5, 1), (1, 4, 0), (2, 7, 2), (2, 6, 1), (3, 2, 0)])
def test_krum_byzantine_is_lowered_below_2f_plus_3(f: int, n: int, used: int) -> None:
    assert krum_byzantine(f, n) == used


def test_multi_krum_selection_in_the_rounds_sidecar(tmp_path: Path, prev: Path) -> None:
    ups = [_update(tmp_path, s, v, prev) for s, v in (("A", -1.0), ("B", 1.0), ("C", 1.1), ("D", 0.9), ("E", 1.05))]
    side = _aggregate(ups, prev, tmp_path / "g.safetensors", list("ABCDE"), strategy=MultiKrum(1))
    assert side["krum"]["not_kept"] == ["A"] and side["strategy"] == "multi_krum"
    assert [s["site"] for s in side["sites"]] == list("ABCDE")  # accepted by the checks, then not kept
    assert load_params(tmp_path / "g.safetensors")[0]["b"][0].item() == pytest.approx((1.0 + 1.1 + 0.9 + 1.05) / 4)


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "noise"])
def test_attacks(kind: str) -> None:
    prev = {"w": torch.ones(1000)}
    honest = {"w": torch.ones(1000) + 0.01 * torch.randn(1000, generator=torch.Generator().manual_seed(0))}
    bad = attack_tensors(honest, prev, AttackConfig(site="A", kind=kind, factor=10.0), torch.Generator().manual_seed(1))
    d, d2 = honest["w"] - 1, bad["w"] - 1
    assert bad["w"].dtype == torch.float32 and bad["w"].shape == (1000,)
    if kind == "sign_flip":
        torch.testing.assert_close(d2, -d)
    elif kind == "scale":
        torch.testing.assert_close(d2, 10 * d)
    else:
        assert d2.square().mean().sqrt().item() == pytest.approx(10 * d.square().mean().sqrt().item(), rel=0.1)
        assert abs(torch.corrcoef(torch.stack([d, d2]))[0, 1].item()) < 0.15


def test_attack_site_must_train() -> None:
    check_attack_site(AttackConfig(), ["A"])
    with pytest.raises(Exception, match="attack.site is 'Z'"):
        check_attack_site(AttackConfig(site="Z"), ["A", "B"])


def _ok(path: str) -> None:
    Path(path).write_text("done")


def _fails(path: str) -> None:
    raise InputError("no training subjects", site="A", file=path, fix="check it")


def _dies(path: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_run_isolated(tmp_path: Path) -> None:
    f = tmp_path / "x"
    assert run_isolated(_ok, path=str(f)) is None and f.read_text() == "done"
    why = run_isolated(_fails, path=str(f))
    assert why is not None and why.startswith("InputError: site A, file") and "Fix: check it" in why
    assert run_isolated(_dies, path=str(f)) == "the training process was killed by SIGKILL (out of memory?)"
