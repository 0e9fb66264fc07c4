"""A MONAI bundle's configuration read as data: what medseg needs, nothing evaluated.

MONAI bundle configs mix data with Python (``$`` expressions, ``_target_`` class paths that
MONAI imports). medseg reads them as JSON/YAML data only:

- ``@id`` references and ``%file#id`` macros are resolved within the bundle's own files
  (``#`` or ``::`` separates the parts of an id; a macro's file lies inside the bundle);
- a string starting with ``$`` anywhere medseg needs a value is refused (one line naming the file
  and the key path); ``$`` strings in keys medseg does not read are left alone;
- each ``_target_`` must be on an allow-list (:data:`NETWORKS`, :data:`PREPROCESSING`,
  :data:`POSTPROCESSING`, :data:`INFERERS`), matched by name, never imported from its text.

Keys read from ``configs/inference.json`` (or ``.yaml``): ``network_def`` (or ``network`` when
it is a ``{"_target_": ...}`` dict), ``preprocessing`` (its ``transforms``), ``inferer`` and
``postprocessing`` (its ``transforms``). Never read: ``imports``, ``bundle_root``,
``output_dir``, ``dataset_dir``, ``datalist``, ``device``, ``network`` (as an expression),
``dataset``, ``dataloader``, ``handlers``, ``evaluator``, ``initialize``, ``run`` and anything
else. From ``configs/metadata.json``: ``network_data_format.inputs`` (the first input: its
``num_channels``, ``channel_def``, ``modality``), ``network_data_format.outputs`` (the first
output's ``channel_def``: the labels) and the top-level ``name``, ``version``, ``modality``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError

__all__ = ["NETWORKS", "PREPROCESSING", "POSTPROCESSING", "INFERERS", "BundleConfig", "BundleSpec", "Orientation",
           "Spacing", "ScaleIntensityRange", "ScaleIntensity", "NormalizeIntensity", "CropForeground",
           "SlidingWindow", "read_bundle", "WEIGHT_FILES", "CONFIG_NAMES"]

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_FILES = ("model.pt", "model.ts")

# allow-lists: the only _target_ names medseg accepts (bare, or under monai's own module path)
NETWORKS = ("UNet", "BasicUNet", "SegResNet", "UNETR", "SwinUNETR", "DynUNet", "AttentionUnet", "VNet")
PREPROCESSING = ("LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged",
                 "NormalizeIntensityd", "CropForegroundd", "EnsureTyped", "ScaleIntensityd")
POSTPROCESSING = ("Activationsd", "AsDiscreted", "Invertd", "SaveImaged", "EnsureTyped")
INFERERS = ("SlidingWindowInferer",)
_MODULES = {"network": "monai.networks.nets", "transform": "monai.transforms", "inferer": "monai.inferers"}


# ---- the translated steps -------------------------------------------------------------------

@dataclass(frozen=True)
class Orientation:
    """``Orientationd``: reorient to ``axcodes`` (e.g. ``"RAS"``)."""

    axcodes: str


@dataclass(frozen=True)
class Spacing:
    """``Spacingd``: resample to ``pixdim`` (mm per array axis; ``<= 0`` keeps the input's) the
    way MONAI does (its output grid keeps the input's first voxel centre and direction)."""

    pixdim: tuple[float, float, float]
    mode: str = "bilinear"  # or "nearest"
    padding: str = "border"  # or "zeros"


@dataclass(frozen=True)
class ScaleIntensityRange:
    """``ScaleIntensityRanged``: ``(x - a_min) / (a_max - a_min) · (b_max - b_min) + b_min``,
    then clipped to ``[b_min, b_max]`` when ``clip``."""

    a_min: float
    a_max: float
    b_min: float | None = None
    b_max: float | None = None
    clip: bool = False


@dataclass(frozen=True)
class ScaleIntensity:
    """``ScaleIntensityd``: min–max rescaling to ``[minv, maxv]`` (each channel alone when ``channel_wise``)."""

    minv: float | None = 0.0
    maxv: float | None = 1.0
    channel_wise: bool = False


@dataclass(frozen=True)
class NormalizeIntensity:
    """``NormalizeIntensityd``: ``(x - mean) / std`` (population std; 1 where it is 0), over the
    non-zero voxels only when ``nonzero`` (zeros stay 0), each channel alone when ``channel_wise``;
    fixed ``subtrahend``/``divisor`` when given."""

    subtrahend: tuple[float, ...] | None = None
    divisor: tuple[float, ...] | None = None
    nonzero: bool = False
    channel_wise: bool = False


@dataclass(frozen=True)
class CropForeground:
    """``CropForegroundd``: crop to the box of voxels ``> 0`` (any channel of the image as it is at
    this step), widened by ``margin`` voxels per axis and to a multiple of ``k_divisible``;
    the box may pass the grid's border (zeros padded) unless ``allow_smaller``."""

    margin: tuple[int, int, int] = (0, 0, 0)
    allow_smaller: bool = False
    k_divisible: tuple[int, int, int] = (1, 1, 1)


@dataclass(frozen=True)
class SlidingWindow:
    """``SlidingWindowInferer``: window ``roi_size`` voxels, ``overlap`` fraction, blending
    ``mode`` (``"gaussian"`` with ``sigma_scale``, or ``"constant"``), ``sw_batch_size``."""

    roi_size: tuple[int, int, int]
    overlap: float = 0.25
    mode: str = "constant"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1


@dataclass(frozen=True)
class BundleSpec:
    """Everything medseg takes from a bundle folder (no weights loaded).

    Attributes:
        root: the bundle folder.
        config_file, meta_file: ``configs/inference.json`` (or ``.yaml``) and ``configs/metadata.json``.
        weights: ``models/model.pt`` (a state_dict), else ``models/model.ts`` (TorchScript).
        input_key: the data key of the image (``"image"``).
        channels: input channel names.
        labels: ``{class id: name}``, background (0) excluded.
        n_classes: output channels (background included).
        modality: ``"CT"`` or ``"MR"``.
        network: ``(name, keyword arguments)`` of the allow-listed network, or ``None`` (TorchScript
            weights and no ``network_def``).
        preprocessing: the steps, in the bundle's order (no-op steps left out).
        window: the sliding window.
        invert_mode: how ``Invertd`` resamples the softmax back (``"bilinear"`` or ``"nearest"``).
        details: facts for ``medseg models --describe``.
    """

    root: Path
    config_file: Path
    meta_file: Path
    weights: Path | None
    input_key: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    n_classes: int
    modality: str
    network: tuple[str, dict[str, Any]] | None
    preprocessing: tuple[Any, ...]
    window: SlidingWindow
    invert_mode: str = "bilinear"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> tuple[float, float, float] | None:
        for step in self.preprocessing:
            if isinstance(step, Spacing):
                return step.pixdim
        return None

    @property
    def orientation(self) -> str | None:
        for step in self.preprocessing:
            if isinstance(step, Orientation):
                return step.axcodes
        return None


# ---- reading the files as data --------------------------------------------------------------

def _split_id(ref: str) -> list[str]:
    ref = ref.replace("::", "#")
    return [p for p in ref.split("#") if p != ""]


def _keypath(parts) -> str:
    return "#".join(str(p) for p in parts)


class BundleConfig:
    """The bundle's config files as data, with ``@`` references and ``%`` macros resolved lazily.

    Args:
        root: the bundle folder (``configs/`` in it).

    Raises:
        InputError: no ``configs/inference.json``/``.yaml``, no ``configs/metadata.json``, or
            either unreadable.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        configs = self.root / "configs"
        found = [configs / n for n in CONFIG_NAMES if (configs / n).is_file()]
        if not found:
            raise InputError(configs, "not a MONAI bundle: no inference.json (or inference.yaml) in configs/")
        self.config_file = found[0]
        self.meta_file = configs / "metadata.json"
        if not self.meta_file.is_file():
            raise InputError(configs, "not a MONAI bundle: no metadata.json in configs/")
        self._files: dict[Path, Any] = {}
        self.config = self._load(self.config_file)
        self.metadata = self._load(self.meta_file)
        if not isinstance(self.config, dict):
            raise InputError(self.config_file, "expected a mapping of config ids at the top level")
        if not isinstance(self.metadata, dict):
            raise InputError(self.meta_file, "expected a JSON object at the top level")

    def rel(self, path: Path) -> str:
        """How messages name a file of the bundle (its path as given)."""
        return str(path)

    def _load(self, path: Path) -> Any:
        if path in self._files:
            return self._files[path]
        from medseg.errors import read_text_input

        text = read_text_input(path, "bundle config")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
            raise InputError(path, f"not valid {'YAML' if path.suffix != '.json' else 'JSON'} "
                             f"({str(exc).splitlines()[0][:200]})") from None
        self._files[path] = data
        return data

    def error(self, file: Path, parts, problem: str) -> InputError:
        return InputError(self.rel(file), f'"{_keypath(parts)}": {problem}')

    def get(self, ref: str, *, file: Path | None = None, default: Any = KeyError) -> tuple[Any, Path, list]:
        """The value of config id ``ref`` (``"a#b#0"``) with references and macros resolved,
        with the file and key path it came from (for messages). ``default`` when it is absent."""
        file = self.config_file if file is None else file
        return self._lookup(file, _split_id(ref), default, ())

    def _lookup(self, file: Path, parts: list, default: Any, stack: tuple) -> tuple[Any, Path, list]:
        node = self._load(file)
        done: list = []
        for part in parts:
            node, file, done = self._deref(node, file, done, stack)
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and str(part).isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                if default is KeyError:
                    raise self.error(file, done + [part], "missing (medseg needs it)")
                return default, file, done + [part]
            done = done + [part]
        node, file, done = self._deref(node, file, done, stack)
        return node, file, done

    def _deref(self, node: Any, file: Path, parts: list, stack: tuple) -> tuple[Any, Path, list]:
        """Follow ``@id``/``%file#id`` strings until a plain value; refuse ``$`` expressions."""
        while isinstance(node, str) and node[:1] in ("@", "%", "$"):
            if node.startswith("$"):
                raise self.error(file, parts, "$ expressions are code; medseg does not evaluate them")
            key = (file, node)
            if key in stack or len(stack) > 64:
                raise self.error(file, parts, f"reference cycle through {node!r}")
            stack = stack + (key,)
            if node.startswith("@"):
                node, file, parts = self._lookup(file, _split_id(node[1:]), KeyError, stack)
            else:
                target, _, ref = node[1:].partition("#")
                if "::" in node[1:] and not ref:
                    target, _, ref = node[1:].partition("::")
                other = file if target == "" else self._confined(file, parts, target)
                node, file, parts = self._lookup(other, _split_id(ref), KeyError, stack)
        return node, file, parts

    def _confined(self, file: Path, parts: list, target: str) -> Path:
        root = self.root.resolve()
        for base in (file.parent, self.root):
            cand = (base / target).resolve()
            if root not in cand.parents:
                raise self.error(file, parts, f"macro file {target!r} lies outside the bundle")
            if cand.is_file():
                return cand
        raise self.error(file, parts, f"macro file {target!r} not found in the bundle")

    def value(self, node: Any, file: Path, parts: list) -> Any:
        """``node`` with every reference inside it resolved (a plain JSON value); ``$`` refused."""
        node, file, parts = self._deref(node, file, parts, ())
        if isinstance(node, dict):
            return {k: self.value(v, file, parts + [k]) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v, file, parts + [i]) for i, v in enumerate(node)]
        return node


# ---- from data to a spec --------------------------------------------------------------------

def _target_name(cfg: BundleConfig, node: dict, file: Path, parts: list, allowed: tuple[str, ...], kind: str) -> str:
    raw, tfile, tparts = cfg._deref(node.get("_target_"), file, parts + ["_target_"], ())
    if not isinstance(raw, str):
        raise cfg.error(tfile, tparts, f"expected a {kind} name, not {raw!r}")
    name = raw
    prefix = _MODULES[kind] + "."
    if name.startswith(prefix):
        name = name[len(prefix):]
        if "." in name:  # monai.transforms.spatial.dictionary.Spacingd and the like
            name = name.rsplit(".", 1)[1]
    if name not in allowed:
        raise InputError(cfg.rel(tfile), f'"{_keypath(tparts)}": _target_ {raw!r} is not allowed (medseg reads only '
                         f"the {kind}s {', '.join(allowed)}; it never imports a class named in a file)")
    return name


class _Args:
    """The arguments of one ``_target_`` dict, each resolved only when medseg asks for it."""

    def __init__(self, cfg: BundleConfig, node: dict, file: Path, parts: list, name: str):
        self.cfg, self.node, self.file, self.parts, self.name = cfg, node, file, parts, name

    def __contains__(self, key: str) -> bool:
        return key in self.node

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self.node:
            return default
        return self.cfg.value(self.node[key], self.file, self.parts + [key])

    def error(self, key: str, problem: str) -> InputError:
        return self.cfg.error(self.file, self.parts + [key], f"{self.name}: {problem}")

    def refuse(self, *keys: str, why: str = "is not supported by medseg") -> None:
        for key in keys:
            if key in self.node:
                raise self.error(key, f"{key} {why}")

    def number(self, key: str, default: Any = None) -> float | None:
        v = self.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"expected a number, not {v!r}")
        return float(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, not {v!r}")
        return v

    def triple(self, key: str, default: Any, kind=float) -> tuple:
        v = self.get(key, default)
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if not vals or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vals):
            raise self.error(key, f"expected a number or a list of numbers, not {v!r}")
        if len(vals) < 3:
            vals = vals + [vals[-1]] * (3 - len(vals))
        return tuple(kind(x) for x in vals[:3])

    def keys(self) -> list[str]:
        v = self.get("keys", [])
        return [v] if isinstance(v, str) else [str(k) for k in v]


def _transforms(cfg: BundleConfig, key: str) -> tuple[list, Path, list]:
    node, file, parts = cfg.get(key)
    if isinstance(node, dict) and "transforms" in node:
        _target_name(cfg, node, file, parts, ("Compose",), "transform")
        node, file, parts = cfg._deref(node["transforms"], file, parts + ["transforms"], ())
    if not isinstance(node, list):
        raise cfg.error(file, parts, "expected a Compose of transforms or a list of transforms")
    return node, file, parts


def _preprocessing(cfg: BundleConfig, input_key: str) -> tuple[Any, ...]:
    items, file, parts = _transforms(cfg, "preprocessing")
    steps: list = []
    seen: list[str] = []
    for i, raw in enumerate(items):
        node, nfile, nparts = cfg._deref(raw, file, parts + [i], ())
        if not isinstance(node, dict) or "_target_" not in node:
            raise cfg.error(nfile, nparts, "expected a {\"_target_\": ...} transform")
        name = _target_name(cfg, node, nfile, nparts, PREPROCESSING, "transform")
        args = _Args(cfg, node, nfile, nparts, name)
        if input_key not in args.keys():
            continue  # a transform of other data (labels): not part of the image's path
        step = _step(name, args, input_key)
        if step is None:
            continue
        order = ("Orientationd", "Spacingd", "CropForegroundd")
        if name in order:
            later = [s for s in seen if s in order and order.index(s) >= order.index(name)]
            if later:
                raise args.error("_target_", f"comes after {later[0]}: medseg supports Orientationd, Spacingd and "
                                 "CropForegroundd once each and in this order")
            seen.append(name)
        steps.append(step)
    return tuple(steps)


def _step(name: str, a: _Args, input_key: str):
    a.refuse("lazy", why="(lazy resampling) is not supported by medseg")
    if name in ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped"):
        return None  # medseg reads the files itself; channels first; tensors
    if name == "Orientationd":
        if a.flag("as_closest_canonical", False):
            return Orientation("RAS")
        axcodes = a.get("axcodes")
        if not isinstance(axcodes, str) or len(axcodes) != 3 or sorted(
                {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c, 9) for c in axcodes.upper()) != [0, 1, 2]:
            raise a.error("axcodes", f"expected three axis codes like 'RAS', not {axcodes!r}")
        return Orientation(axcodes.upper())
    if name == "Spacingd":
        a.refuse("min_pixdim", "max_pixdim", "scale_extent", "recompute_affine")
        if a.flag("diagonal", False):
            raise a.error("diagonal", "diagonal=true (resampling to world axes) is not supported by medseg")
        mode = a.get("mode", "bilinear")
        mode = mode[0] if isinstance(mode, list) and mode else mode
        if mode not in ("bilinear", "nearest"):
            raise a.error("mode", f"mode {mode!r} is not supported (bilinear or nearest)")
        pad = a.get("padding_mode", "border")
        pad = pad[0] if isinstance(pad, list) and pad else pad
        if pad not in ("border", "zeros"):
            raise a.error("padding_mode", f"padding_mode {pad!r} is not supported (border or zeros)")
        return Spacing(a.triple("pixdim", None), mode=mode, padding=pad)
    if name == "ScaleIntensityRanged":
        lo, hi = a.number("a_min"), a.number("a_max")
        if lo is None or hi is None:
            raise a.error("a_min", "needs a_min and a_max")
        return ScaleIntensityRange(lo, hi, a.number("b_min"), a.number("b_max"), a.flag("clip", False))
    if name == "ScaleIntensityd":
        a.refuse("factor")
        return ScaleIntensity(a.number("minv", 0.0), a.number("maxv", 1.0), a.flag("channel_wise", False))
    if name == "NormalizeIntensityd":
        def vec(key):
            v = a.get(key)
            if v is None:
                return None
            vals = v if isinstance(v, list) else [v]
            if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vals):
                raise a.error(key, f"expected a number or a list of numbers, not {v!r}")
            return tuple(float(x) for x in vals)
        return NormalizeIntensity(vec("subtrahend"), vec("divisor"), a.flag("nonzero", False),
                                  a.flag("channel_wise", False))
    if name == "CropForegroundd":
        a.refuse("select_fn", "channel_indices", "start_coord_key", "end_coord_key")
        source = a.get("source_key")
        if source != input_key:
            raise a.error("source_key", f"source_key {source!r}: medseg crops on the image ({input_key!r}) only")
        mode = a.get("mode", "constant")
        if mode not in ("constant", ["constant"]):
            raise a.error("mode", f"padding mode {mode!r} is not supported (constant)")
        return CropForeground(tuple(int(m) for m in a.triple("margin", 0, int)), a.flag("allow_smaller", False),
                              tuple(int(k) for k in a.triple("k_divisible", 1, int)))
    raise AssertionError(name)


def _window(cfg: BundleConfig) -> SlidingWindow:
    node, file, parts = cfg.get("inferer")
    if not isinstance(node, dict):
        raise cfg.error(file, parts, "expected a {\"_target_\": \"SlidingWindowInferer\", ...} inferer")
    name = _target_name(cfg, node, file, parts, INFERERS, "inferer")
    a = _Args(cfg, node, file, parts, name)
    roi = a.triple("roi_size", None, int)
    if any(r < 1 for r in roi):
        raise a.error("roi_size", f"expected positive window sizes, not {list(roi)}")
    overlap = a.get("overlap", 0.25)
    vals = overlap if isinstance(overlap, list) else [overlap]
    if len(set(vals)) != 1 or not isinstance(vals[0], (int, float)) or not 0 <= vals[0] < 1:
        raise a.error("overlap", f"expected one overlap fraction in [0, 1), not {overlap!r}")
    mode = a.get("mode", "constant")
    if mode not in ("constant", "gaussian"):
        raise a.error("mode", f"blending mode {mode!r} is not supported (gaussian or constant)")
    sigma = a.get("sigma_scale", 0.125)
    sig = sigma if isinstance(sigma, list) else [sigma]
    if len(set(sig)) != 1 or not isinstance(sig[0], (int, float)) or sig[0] <= 0:
        raise a.error("sigma_scale", f"expected one positive sigma_scale, not {sigma!r}")
    if a.get("padding_mode", "constant") != "constant" or a.number("cval", 0.0) != 0.0:
        raise a.error("padding_mode", "only constant zero padding is supported")
    batch = a.get("sw_batch_size", 1)
    return SlidingWindow(roi, float(vals[0]), mode, float(sig[0]), int(batch) if isinstance(batch, int) else 1)


def _postprocessing(cfg: BundleConfig) -> str:
    """How the softmax goes back to the input grid: ``"bilinear"`` or ``"nearest"``."""
    items, file, parts = _transforms(cfg, "postprocessing")
    order: list[str] = []
    invert_mode = "bilinear"
    for i, raw in enumerate(items):
        node, nfile, nparts = cfg._deref(raw, file, parts + [i], ())
        if not isinstance(node, dict) or "_target_" not in node:
            raise cfg.error(nfile, nparts, "expected a {\"_target_\": ...} transform")
        name = _target_name(cfg, node, nfile, nparts, POSTPROCESSING, "transform")
        a = _Args(cfg, node, nfile, nparts, name)
        if name == "Activationsd":
            if not a.flag("softmax", False) or a.flag("sigmoid", False) or "other" in a:
                raise a.error("softmax", "medseg supports softmax=true only")
        elif name == "AsDiscreted":
            if not a.flag("argmax", False) or a.get("threshold") is not None:
                raise a.error("argmax", "medseg supports argmax=true only")
            a.refuse("rounding")
        elif name == "Invertd":
            invert_mode = "nearest" if a.flag("nearest_interp", True) else "bilinear"
        else:
            continue  # SaveImaged: medseg writes its own outputs; EnsureTyped: a no-op
        order.append(name)
    if "Activationsd" not in order or "AsDiscreted" not in order:
        raise cfg.error(file, parts, "medseg needs Activationsd (softmax=true) and AsDiscreted (argmax=true)")
    if order.index("Activationsd") > order.index("AsDiscreted"):
        raise cfg.error(file, parts, "Activationsd must come before AsDiscreted")
    if "Invertd" in order:
        inv = order.index("Invertd")
        if inv < order.index("Activationsd"):
            raise cfg.error(file, parts, "Invertd before Activationsd (logits resampled) is not supported")
        if inv > order.index("AsDiscreted") and invert_mode != "nearest":
            raise cfg.error(file, parts, "Invertd after AsDiscreted needs nearest_interp=true")
    return invert_mode


def _network(cfg: BundleConfig) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
    """The allow-listed network and its arguments, and the config id it came from."""
    for key in ("network_def", "network"):
        raw = cfg.config.get(key)
        if raw is None or (key == "network" and isinstance(raw, str) and raw.startswith("$")):
            continue  # "network": "$@network_def.to(@device)" builds what network_def describes
        node, file, parts = cfg.get(key)
        if not isinstance(node, dict):
            raise cfg.error(file, parts, "expected a {\"_target_\": ...} network")
        name = _target_name(cfg, node, file, parts, NETWORKS, "network")
        kwargs = {}
        for k in node:
            if k.startswith("_") and k.endswith("_"):
                continue  # _target_, _requires_, _disabled_, _desc_, _mode_
            v = cfg.value(node[k], file, parts + [k])
            if isinstance(v, dict) and "_target_" in v:
                raise cfg.error(file, parts + [k], "nested _target_ objects are not supported by medseg")
            kwargs[k] = v
        return (name, kwargs), key
    return None, None


def _metadata(cfg: BundleConfig) -> tuple[str, tuple[str, ...], dict[int, str], int, str]:
    meta = cfg.metadata
    fmt = meta.get("network_data_format")
    file = cfg.meta_file

    def bad(parts, problem):
        return InputError(cfg.rel(file), f'"{_keypath(parts)}": {problem}')

    if not isinstance(fmt, dict) or not isinstance(fmt.get("inputs"), dict) or not fmt["inputs"]:
        raise bad(["network_data_format", "inputs"], "missing (medseg needs the input's channels)")
    input_key, inp = next(iter(fmt["inputs"].items()))
    if not isinstance(fmt.get("outputs"), dict) or not fmt["outputs"]:
        raise bad(["network_data_format", "outputs"], "missing (medseg needs the labels)")
    out_key, out = next(iter(fmt["outputs"].items()))
    where_in = ["network_data_format", "inputs", input_key]
    where_out = ["network_data_format", "outputs", out_key]
    if not isinstance(inp, dict) or not isinstance(out, dict):
        raise bad(where_in, "expected objects describing the input and output")
    n_in = inp.get("num_channels", 1)
    if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in < 1:
        raise bad(where_in + ["num_channels"], f"expected a positive channel count, not {n_in!r}")
    cdef = inp.get("channel_def") or {}
    if isinstance(cdef, dict) and len(cdef) == n_in and n_in > 1:
        channels = tuple(str(cdef.get(str(i), cdef.get(i, f"channel_{i}"))) for i in range(n_in))
    else:
        channels = ("image",) if n_in == 1 else tuple(f"channel_{i}" for i in range(n_in))
    odef = out.get("channel_def")
    if not isinstance(odef, dict) or not odef:
        raise bad(where_out + ["channel_def"], "missing (medseg needs the label names, e.g. "
                  '{"0": "background", "1": "spleen"})')
    try:
        names = {int(k): str(v) for k, v in odef.items()}
    except (TypeError, ValueError):
        raise bad(where_out + ["channel_def"], "keys must be class ids (\"0\", \"1\", ...)") from None
    n_out = out.get("num_channels", max(names) + 1)
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 2 or max(names) >= n_out:
        raise bad(where_out + ["num_channels"], f"expected at least 2 classes covering channel_def, not {n_out!r}")
    labels = {k: v for k, v in sorted(names.items()) if k != 0}
    modality = str(inp.get("modality") or meta.get("modality") or "").upper()
    return input_key, channels, labels, int(n_out), "CT" if modality == "CT" else "MR"


def read_bundle(root: str | Path) -> BundleSpec:
    """Read a bundle folder's configs into a :class:`BundleSpec` (no weights loaded, nothing evaluated).

    Raises:
        InputError: a missing or invalid config file, a ``$`` expression where medseg needs a
            value, a ``_target_`` outside the allow-lists, or a step medseg does not support
            (one line naming the file and the key path).
    """
    cfg = BundleConfig(Path(root))
    input_key, channels, labels, n_classes, modality = _metadata(cfg)
    network, net_key = _network(cfg)
    models = cfg.root / "models"
    weights = next((models / n for n in WEIGHT_FILES if (models / n).is_file()), None)
    if network is None and (weights is None or weights.suffix != ".ts"):
        raise InputError(cfg.rel(cfg.config_file), "no network_def: medseg needs it to load models/model.pt")
    if network is not None:
        args = network[1]
        for key, want in (("in_channels", len(channels)), ("out_channels", n_classes)):
            if key in args and args[key] != want:
                raise cfg.error(cfg.config_file, [net_key, key], f"{args[key]} does not match the "
                                f"{'num_channels' if key == 'in_channels' else 'classes'} ({want}) in {cfg.rel(cfg.meta_file)}")
        if args.get("spatial_dims", 3) != 3:
            raise cfg.error(cfg.config_file, [net_key, "spatial_dims"], "medseg runs 3D bundles only")
    pre = _preprocessing(cfg, input_key)
    window = _window(cfg)
    invert_mode = _postprocessing(cfg)
    details = {"network": network[0] if network else "TorchScript", "weights": cfg.rel(weights) if weights else None,
               "preprocessing": [type(s).__name__ for s in pre], "window_mode": window.mode,
               "overlap": window.overlap, "invert": invert_mode,
               "name": cfg.metadata.get("name"), "version": cfg.metadata.get("version")}
    return BundleSpec(root=cfg.root, config_file=cfg.config_file, meta_file=cfg.meta_file, weights=weights,
                      input_key=input_key, channels=channels, labels=labels, n_classes=n_classes, modality=modality,
                      network=network, preprocessing=pre, window=window, invert_mode=invert_mode, details=details)
