"""The model bundle: one self-describing, checksummed file that carries a trained model to new patients.

``results/model/fedglioma-<name>.zip`` (rule ``export_bundle``, ``fedglioma predict export-bundle``) holds

- ``model.safetensors``: the selected model's parameters (no pickle);
- ``bundle.json``: the manifest. The model's architecture, the preprocessing **recipe** it was trained with
  (the config's ``preprocess`` section: template and resolution, co-registration, skull stripping, N4,
  normalisation, network grid; and the QC thresholds), the endpoint definitions, the decision thresholds fixed on
  the training sites' validation data, the training sites with their n, the strategy and rounds, the validation
  and external metrics with confidence intervals, and the package version;
- ``MODEL_CARD.md``: the same in words: what it was trained on, for what, its external results, its limits;
- ``SHA256SUMS``: the sha256 of every other member.

:func:`load_bundle` refuses a bundle whose checksums fail or that holds other members, and names any recipe field
the installed version cannot reproduce (an unknown key, or another :data:`RECIPE_VERSION`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedglioma import __version__
from fedglioma.atomic import atomic_path, dumps
from fedglioma.constants import MODALITIES
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.files import read_json

log = logging.getLogger(__name__)

FORMAT = "fedglioma-bundle"
#: Layout of the bundle file itself (members, manifest keys). A reader refuses a newer one.
FORMAT_VERSION = 1
#: What the preprocessing recipe means: bump it when the same recipe would give the network other inputs (a step
#: added, reordered or changed in meaning), so that a bundle is never run through a chain it was not trained on.
RECIPE_VERSION = 1

MANIFEST, WEIGHTS, CARD, CHECKSUMS = "bundle.json", "model.safetensors", "MODEL_CARD.md", "SHA256SUMS"
MEMBERS = (MANIFEST, WEIGHTS, CARD, CHECKSUMS)

#: The recipe's parts and the config models that read them (the same models the workflow validates with).
RECIPE_SECTIONS = ("preprocess", "qc_thresholds")


def bundle_path(results: str | Path, name: str) -> Path:
    """Where the workflow writes bundle ``name``."""
    return Path(results) / "model" / f"fedglioma-{name}.zip"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ export


def _external_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The external evaluation's headline numbers (AUCs with CI and n, segmentation distribution)."""
    markers = {}
    for name, m in (metrics.get("markers") or {}).items():
        keep = ("estimable", "n", "n_pos", "n_neg", "auc", "auc_ci_low", "auc_ci_high", "threshold",
                "sensitivity", "specificity", "label")
        markers[name] = {k: m.get(k) for k in keep if k in m}
    seg = metrics.get("segmentation") or {}
    segmentation = {k: seg.get(k) for k in ("estimable", "n", "dice", "hd95_mm", "abs_volume_diff_ml") if k in seg}
    return {"site": metrics.get("site"), "level": metrics.get("level"), "n_boot": metrics.get("n_boot"),
            "subjects": metrics.get("subjects"), "markers": markers, "segmentation": segmentation}


def export_bundle(final: str, candidates: Sequence[str], metrics: str, summaries: Sequence[str], bundle: str, *,
                  model: str, config: Mapping[str, Any]) -> None:
    """Rule ``export_bundle`` / ``fedglioma predict export-bundle``: the selected model as one bundle file.

    Args:
        final: the model selection (``final.json``: round, thresholds, model file) of the exported model.
        candidates: the model files ``final`` may select (one per round).
        metrics: that model's external evaluation (``metrics.json``, aggregated numbers only).
        summaries: the training sites' cohort summaries (``summary.json``, aggregated numbers only).
        bundle: the bundle file to write (``results/model/fedglioma-<name>.zip``).
        model: which model: ``federated``, ``centralized`` or ``local-<site>``.
        config: the whole configuration (recipe, model, endpoints, strategy).
    """
    import torch
    from safetensors.torch import save

    from fedglioma.evaluate.external import resolve_model
    from fedglioma.io.files import sha256_file
    from fedglioma.settings import Config
    from fedglioma.train.local import load_model

    cfg = Config.model_validate(dict(config))
    if model == "federated" and cfg.federated.site_local_patterns:
        raise ConfigError("the federated model keeps site-local parameters (federated.site_local_patterns, FedBN): "
                          "it has no parameters for a hospital that never trained. Fix: export the centralized or "
                          "a local-only model (predict.model) or train without site-local parameters")
    model_path, selection = resolve_model(final, candidates)
    # loaded as every stage loads a model: sha256 against its sidecar, architecture against the config, strictly
    state = load_model(model_path, cfg.model).state_dict()
    # one metadata entry: safetensors orders several at random, and the bytes (their sha256) must be reproducible
    weights = save({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()},
                   metadata={"fedglioma": dumps({"format": FORMAT, "model": cfg.model.model_dump(mode="json")},
                                                indent=None)})
    ext = read_json(metrics, what="external evaluation metrics")
    sites = [read_json(s, what="site cohort summary") for s in summaries]
    selected_round = selection.get("round")
    rounds = selection.get("rounds") or {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "recipe_version": RECIPE_VERSION,
        "fedglioma_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "name": Path(bundle).name.removeprefix("fedglioma-").removesuffix(".zip"),
        "synthetic": bool(cfg.demo.enabled),
        "model": {"arm": model, "config": cfg.model.model_dump(mode="json"), "round": selected_round,
                  "source_sha256": sha256_file(model_path), "weights_sha256": _sha256(weights)},
        "inputs": {"modalities": list(MODALITIES), "reference": "T1c"},
        "recipe": {"preprocess": cfg.preprocess.model_dump(mode="json"),
                   "qc_thresholds": cfg.qc.thresholds.model_dump(mode="json")},
        "endpoints": cfg.endpoints.model_dump(mode="json"),
        "thresholds": selection.get("thresholds") or {},
        "training": {
            "arm": model,
            "strategy": cfg.federated.strategy if model == "federated" else None,
            "rounds": cfg.federated.rounds,
            "epochs_per_round": cfg.train.epochs_per_round,
            "seed": cfg.train.seed,
            "sites": [{"site": s.get("site"), "n": s.get("n"), **{k: s[k] for k in sorted(s)
                       if k.endswith(("_n", "_positive")) or k.startswith("grade")}} for s in sites],
            "n_subjects": sum(int(s.get("n") or 0) for s in sites),
        },
        "validation": {"round": selected_round, "score": selection.get("score"),
                       "score_rule": selection.get("score_rule"),
                       **{k: v for k, v in (rounds.get(str(selected_round)) or {}).items()
                          if k in ("metrics", "n_val", "n_pos_neg", "sites")}},
        "external": _external_summary(ext),
    }
    card = model_card(manifest).encode()
    manifest_bytes = (dumps(manifest) + "\n").encode()
    sums = "".join(f"{_sha256(data)}  {name}\n" for name, data in
                   ((MANIFEST, manifest_bytes), (WEIGHTS, weights), (CARD, card))).encode()
    with atomic_path(bundle, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in ((MANIFEST, manifest_bytes), (WEIGHTS, weights), (CARD, card), (CHECKSUMS, sums)):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    log.info("bundle %s: %s model, round %s, %d training subjects", bundle, model, selected_round,
             manifest["training"]["n_subjects"])


def _fmt_auc(m: Mapping[str, Any]) -> str:
    if not m.get("estimable") or m.get("auc") is None:
        return "not estimable"
    return (f"{m['auc']:.2f} ({m.get('auc_ci_low', float('nan')):.2f}-{m.get('auc_ci_high', float('nan')):.2f}), "
            f"n={m.get('n')} ({m.get('n_pos')} positive)")


def model_card(manifest: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the manifest in words."""
    from fedglioma.evaluate.site import MARKER_LABEL, MARKER_NAME

    t = manifest["training"]
    ext = manifest["external"]
    pre = manifest["recipe"]["preprocess"]
    seg = ext.get("segmentation") or {}
    dice = seg.get("dice") or {}
    how = (f"federated ({t['strategy']}, {t['rounds']} rounds x {t['epochs_per_round']} local epoch(s))"
           if t["arm"] == "federated" else f"{t['arm']} baseline ({t['rounds']} rounds x {t['epochs_per_round']} "
           f"epoch(s))")
    lines = [
        f"# Model card: fedglioma-{manifest['name']}",
        "",
        f"fedglioma {manifest['fedglioma_version']}, bundle format {manifest['format_version']}, recipe "
        f"{manifest['recipe_version']}, created {manifest['created']}.",
        "",
    ]
    if manifest.get("synthetic"):
        lines += ["> **Synthetic demo model: not for clinical use.** It was trained and evaluated on the built-in "
                  "synthetic cohort; its numbers say that the pipeline works, not how it would do on patients.", ""]
    else:
        lines += ["> Research use only. Not a medical device; not for clinical decisions.", ""]
    lines += [
        "## What it does",
        "From one preoperative MRI exam (T1, T1c, T2, FLAIR) it segments the whole tumour (the T2w/FLAIR "
        "hyperintense region) and gives the probability of each marker:",
        "",
        *[f"- {MARKER_NAME[m]}: {MARKER_LABEL[m]}" for m in ("idh", "codeletion", "mgmt", "grade")],
        "",
        f"1p/19q is defined {('within IDH-mutant gliomas' if manifest['endpoints'].get('codeletion') == 'idh_mutant' else 'in all gliomas')}: "
        "its probability means little for an IDH-wild-type tumour.",
        "",
        "## How it was trained",
        f"- {how}, model selected at round {manifest['model']['round']} on the training sites' validation data "
        f"({manifest['validation'].get('score_rule') or 'see bundle.json'}).",
        f"- Training sites ({t['n_subjects']} subjects): "
        + ", ".join(f"{s['site']} (n={s['n']})" for s in t["sites"]) + ".",
        "- Decision thresholds: Youden's J on the training sites' pooled validation counts; the external site "
        "never chose one.",
        "",
        "## Preprocessing recipe (run again on every new patient)",
        f"- Template {pre['atlas']['template']} at {pre['atlas']['resolution_mm']} mm, "
        f"{pre['atlas']['type_of_transform']} registration of the T1c brain; sequences co-registered rigidly to T1c.",
        f"- Skull stripping: {pre['skullstrip']['method']} ({pre['skullstrip'].get('mode', '')}); N4 inside the "
        f"brain; intensity normalisation {pre['normalise'].get('method')}.",
        f"- Network grid {pre['grid']['grid_shape']} voxels at {pre['grid']['grid_spacing']} mm.",
        "",
        f"## External evaluation ({ext.get('site')}, never trained)",
        "| endpoint | AUC (95% CI), n |",
        "|---|---|",
        *[f"| {MARKER_NAME.get(m, m)} | {_fmt_auc(v)} |" for m, v in (ext.get("markers") or {}).items()],
        "",
        (f"Whole-tumour Dice on the native T1c grid: median {dice.get('median', float('nan')):.2f} "
         f"(n={seg.get('n')})." if dice else "No segmentation reference on the external site."),
        "",
        "## Limits",
        "- Valid only for exams like those it was trained on: preoperative adult glioma, four sequences, the "
        "recipe above. It has not been shown to work on other tumours, on postoperative exams or on other "
        "sequences.",
        "- The confidence intervals above come from one external site; a new hospital should check the model on "
        "its own labelled cases before relying on it.",
        "- Every prediction carries QC flags; a flagged exam's result should not be used.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    sha256: str
    manifest: dict[str, Any]
    weights: bytes

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """The preprocessing recipe, as the config's ``preprocess`` section (every key present)."""
        return dict(self.manifest["recipe"]["preprocess"])

    @property
    def qc_thresholds(self) -> dict[str, Any]:
        return dict(self.manifest["recipe"]["qc_thresholds"])

    @property
    def thresholds(self) -> dict[str, Any]:
        return dict(self.manifest.get("thresholds") or {})

    def model(self, device: Any = None) -> Any:
        """The network with the bundle's parameters, in eval mode."""
        from safetensors.torch import load

        from fedglioma.settings import ModelConfig
        from fedglioma.train.local import model_from_state

        cfg = ModelConfig.model_validate(self.manifest["model"]["config"])
        return model_from_state(load(self.weights), cfg, what=f"{self.path}:{WEIGHTS}", device=device)


def _refuse(path: Path, problem: str, fix: str) -> InputError:
    return InputError(problem, file=path, fix=fix)


def check_recipe(manifest: Mapping[str, Any], path: Path) -> None:
    """Refuse a manifest this version cannot reproduce, naming the field."""
    from fedglioma.settings import Endpoints, ModelConfig, PreprocessConfig, QcThresholds, parse

    reinstall = f"install fedglioma {manifest.get('fedglioma_version', '(the bundle version)')}, which made it"
    if manifest.get("format") != FORMAT:
        raise _refuse(path, f"not a fedglioma bundle (format {manifest.get('format')!r})", "give a bundle file "
                      "written by `fedglioma predict export-bundle` (results/model/fedglioma-<name>.zip)")
    if int(manifest.get("format_version") or 0) > FORMAT_VERSION:
        raise _refuse(path, f"bundle format {manifest.get('format_version')} is newer than this fedglioma "
                      f"{__version__} reads ({FORMAT_VERSION})", reinstall)
    if manifest.get("recipe_version") != RECIPE_VERSION:
        raise _refuse(path, f"recipe_version {manifest.get('recipe_version')}: this fedglioma {__version__} "
                      f"reproduces preprocessing recipe {RECIPE_VERSION} only", reinstall)
    recipe = manifest.get("recipe") or {}
    for key, model, data in (("recipe.preprocess", PreprocessConfig, recipe.get("preprocess")),
                             ("recipe.qc_thresholds", QcThresholds, recipe.get("qc_thresholds")),
                             ("model.config", ModelConfig, (manifest.get("model") or {}).get("config")),
                             ("endpoints", Endpoints, manifest.get("endpoints"))):
        if data is None:
            raise _refuse(path, f"the manifest has no {key}", "export the bundle again")
        try:
            parse(model, data, what=f"{path} {MANIFEST}", prefix=f"{key}.")
        except ConfigError as exc:
            raise _refuse(path, f"fedglioma {__version__} cannot reproduce this recipe field:\n{exc}", reinstall) \
                from None


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: every member's sha256, no member missing or added, a recipe this version runs."""
    path = Path(path)
    if not path.is_file():
        raise _refuse(path, "bundle not found", "give the bundle the workflow wrote (results/model/fedglioma-<name>.zip)")
    raw = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            if sorted(names) != sorted(MEMBERS):
                raise _refuse(path, f"bundle members {sorted(names)}; expected exactly {sorted(MEMBERS)}",
                              "use the bundle file as exported, unchanged")
            data = {n: zf.read(n) for n in names}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise _refuse(path, f"not a readable bundle ({exc})", "copy the bundle again") from None
    sums: dict[str, str] = {}
    for line in data[CHECKSUMS].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest.strip()
    for name in (MANIFEST, WEIGHTS, CARD):
        if sums.get(name) != _sha256(data[name]):
            raise _refuse(path, f"checksum of member {name} does not match {CHECKSUMS}: the bundle was changed "
                          "or damaged", "copy the bundle again from its source; never edit a bundle")
    try:
        manifest = json.loads(data[MANIFEST].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"{MANIFEST} is not valid JSON ({exc})", "export the bundle again") from None
    check_recipe(manifest, path)
    if manifest["model"].get("weights_sha256") != sums[WEIGHTS]:
        raise _refuse(path, "the manifest's weights_sha256 is not the weights' checksum", "export the bundle again")
    return Bundle(path=path, sha256=_sha256(raw), manifest=manifest, weights=data[WEIGHTS])
