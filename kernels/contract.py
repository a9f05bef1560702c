"""The on-disk contract between the quantizer, the kernels and the vLLM plugin (docs/format.md).

The one owner of: the checkpoint's `quantization_config` schema (`BabaiCheckpointConfig`, and `GPTQCheckpointConfig`
for the standard GPTQ layout the quantizer also writes), format versions, the skip-list rule
(`matches_skip`), the tensor names of a quantized linear per format, the file names of a checkpoint
folder, and the layout constants. Writers build a config object and call `to_dict()`; readers call
`read_quantization_config(path)` / `config_from_dict(d, source)`. Errors are ValueErrors naming the
file (or argument) and the offending key and value. Depends on nothing but the standard library.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_VERSION = 2                      # what writers write (2 = 1 + HPTQ's optional per-column steps)
READABLE_VERSIONS = (1, 2)              # what readers accept
BABAI_FORMATS = ("ssqr", "hptq")

# --- layout constants -------------------------------------------------------------------------
BLOCK = 32                              # codes are packed along K in blocks of 32 columns
MAX_K = 32767                           # SSQR outlier columns are int16
SSQR_BITS = (2, 3, 4)
GPTQ_BITS = (2, 3, 4, 8)
HPTQ_MAX_CODE_LEN = 12
HPTQ_ESCAPE_BITS = 16

# --- tensor names of one quantized linear (`<module>.<name>` in the safetensors) ---------------
TENSOR_NAMES = {
    "ssqr": ("qweight", "scales", "perm", "outlier_cols", "outlier_vals"),
    "hptq": ("hptq_scale", "code_values", "code_lengths", "chunk_bits", "stream"),
    "gptq": ("qweight", "qzeros", "scales"),
}
TENSOR_DTYPES = {                       # dtype of each tensor as stored (docs/format.md §2, §3, §5)
    "ssqr": {"qweight": "int32", "scales": "float16", "perm": "int32", "outlier_cols": "int16",
             "outlier_vals": "float16"},
    "hptq": {"hptq_scale": "float32", "code_values": "int32", "code_lengths": "uint8", "chunk_bits": "int16",
             "stream": "int32"},
    "gptq": {"qweight": "int32", "qzeros": "int32", "scales": "float16"},
}
OPTIONAL_TENSOR_NAMES = ("bias",)       # a quantized linear's bias, in the model dtype
# Tensors a format may carry from a version on (docs/format.md §3): HPTQ's per-column steps α, (K,) float16.
OPTIONAL_FORMAT_TENSORS = {"ssqr": (), "hptq": ("col_steps",), "gptq": ()}
OPTIONAL_FORMAT_DTYPES = {"hptq": {"col_steps": "float16"}}
OPTIONAL_SINCE_VERSION = 2

# --- the checkpoint folder --------------------------------------------------------------------
CONFIG_NAME = "config.json"
SINGLE_SHARD_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
REPORT_NAME = "quant_report.json"
ALWAYS_SKIPPED = ("lm_head",)           # written into every modules_to_not_convert

# Modules vLLM fuses into one layer (they share an input, hence a Hessian and a permutation):
# a skip list must keep all of a group or none.
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
ROW_PARALLEL = ("o_proj", "down_proj")   # split by input columns under tensor parallelism


def matches_skip(name: str, patterns) -> bool:
    """Whether module `name` stays in 16 bit under `modules_to_not_convert` / `--skip` patterns.

    An entry matches the module itself, any module below it (prefix: `model.layers.1.mlp`), a
    trailing part of the dotted name (suffix: `o_proj`, `mlp.down_proj`), or an fnmatch pattern
    (`model.layers.*.self_attn.*`), case-sensitively.
    """
    return any(name == m or name.startswith(m + ".") or name.endswith("." + m)
               or fnmatch.fnmatchcase(name, m) for m in patterns)


def fused_layer(module: str) -> str:
    """The vLLM layer a checkpoint module loads into, named by its first fused sibling
    (`...self_attn.k_proj` → `...self_attn.q_proj`); other modules are their own layer."""
    parent, _, last = module.rpartition(".")
    return f"{parent}.{next((g for g in FUSED_SIBLINGS if last in g), (last,))[0]}"


def check_skip_consistent(module_names, patterns) -> None:
    """ValueError unless every fused-sibling group among `module_names` is skipped whole or not at
    all (vLLM loads q/k/v and gate/up as one layer)."""
    groups: dict[str, list[str]] = {}
    for name in module_names:
        groups.setdefault(fused_layer(name), []).append(name)
    for members in groups.values():
        flags = {m: matches_skip(m, patterns) for m in members}
        if len(set(flags.values())) > 1:
            raise ValueError(f"skip patterns {list(patterns)} keep only some of the modules that vLLM "
                             f"fuses into one layer: {flags}; skip all of them or none")


def quantized_modules(tensor_names, config: "BabaiCheckpointConfig | GPTQCheckpointConfig",
                      source: str) -> list[str]:
    """The quantized linears among a checkpoint's tensor names (sorted), after checking each one
    against the format: it has every tensor of `config.tensor_names`, nothing else but a bias, and
    is not listed in modules_to_not_convert. ValueError naming `source`, the module and the tensor."""
    names = config.tensor_names
    fmt = getattr(config, "format", "gptq")
    optional = OPTIONAL_FORMAT_TENSORS[fmt] if getattr(config, "version", 1) >= OPTIONAL_SINCE_VERSION else ()
    by_module: dict[str, set[str]] = {}
    for full in tensor_names:
        module, _, leaf = full.rpartition(".")
        by_module.setdefault(module, set()).add(leaf)
    quantized = sorted(m for m, leaves in by_module.items() if leaves & set(names))
    for module in quantized:
        leaves = by_module[module]
        problems = [f"has no tensor {module}.{n}" for n in names if n not in leaves]
        problems += [f"has an unexpected tensor {module}.{n}"
                     for n in sorted(leaves - set(names) - set(OPTIONAL_TENSOR_NAMES) - set(optional))]
        if config.is_skipped(module):
            problems.append("is stored quantized but listed in modules_to_not_convert")
        if problems:
            raise ValueError(f"{source}: quantized layer {module} {'; '.join(problems)} "
                             f"(format {fmt} stores {list(names)})")
    return quantized


def splits_into(cols: int, group_size: int, parts: int) -> bool:
    """Whether K input columns split into `parts` equal row-parallel parts, each a whole number of
    scale groups and of 32-column packing blocks (docs/format.md §2)."""
    return isinstance(parts, int) and parts >= 1 and cols % parts == 0 \
        and (cols // parts) % group_size == 0 and (cols // parts) % BLOCK == 0


def row_parallel_parts(cols: int, group_size: int, requested: int) -> int:
    """Largest P ≤ requested that K splits into (`splits_into`); 1 if none."""
    return next((p for p in range(requested, 0, -1) if splits_into(cols, group_size, p)), 1)


# --- quantization_config ----------------------------------------------------------------------

def _fail(source: str, key: str, value, why: str):
    raise ValueError(f"{source}: quantization_config {key}={value!r}: {why}")


def _skip_list(value, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        _fail(source, "modules_to_not_convert", value, "must be a list of strings")
    return tuple(value)


def present_optional_tensors(tensor_names, modules, config) -> tuple[str, ...]:
    """The format's optional tensors (OPTIONAL_FORMAT_TENSORS) that the quantized `modules` carry, in
    the checkpoint's `tensor_names`; ValueError unless every module carries each of them or none does
    (a loader registers one placeholder per name for every layer)."""
    fmt = getattr(config, "format", "gptq")
    present = []
    names = set(tensor_names)
    for opt in OPTIONAL_FORMAT_TENSORS[fmt]:
        have = [f"{m}.{opt}" in names for m in modules]
        if any(have) and not all(have):
            missing = next(m for m, h in zip(modules, have) if not h)
            raise ValueError(f"quantized layer {missing} has no tensor {missing}.{opt}, which other layers carry "
                             f"(a checkpoint has it in every layer or in none)")
        if modules and all(have):
            present.append(opt)
    return tuple(present)


def tensor_dtype(fmt: str, name: str) -> str:
    """The stored dtype of tensor `name` of format `fmt`, required or optional."""
    return {**TENSOR_DTYPES[fmt], **OPTIONAL_FORMAT_DTYPES.get(fmt, {})}[name]


def _check_babai(c: dict, source: str) -> None:
    """ValueError naming `source`, the key and the value of the first rule of §1 that `c` breaks."""
    if c["version"] not in READABLE_VERSIONS:
        _fail(source, "version", c["version"], f"unsupported babai format version (this reader knows "
                                               f"{list(READABLE_VERSIONS)})")
    if c["format"] not in BABAI_FORMATS:
        _fail(source, "format", c["format"], f"unknown babai format (expected one of {list(BABAI_FORMATS)})")
    if c["format"] == "ssqr":
        if c["bits"] not in SSQR_BITS or isinstance(c["bits"], bool):
            _fail(source, "bits", c["bits"], f"ssqr bits must be one of {list(SSQR_BITS)}")
        g = c["group_size"]
        if not isinstance(g, int) or isinstance(g, bool) or g <= 0 or g % BLOCK:
            _fail(source, "group_size", g, f"ssqr group_size must be a positive multiple of {BLOCK}")
        r = c["outlier_rate"]
        if r is not None and not (isinstance(r, (int, float)) and 0 <= r < 1):
            _fail(source, "outlier_rate", r, "must be a number in [0, 1)")
        return
    t = c["target_bits"]
    if t is not None and not (isinstance(t, (int, float)) and t > 0):
        _fail(source, "target_bits", t, "must be a positive number")
    for key, fixed in (("max_code_len", HPTQ_MAX_CODE_LEN), ("escape_bits", HPTQ_ESCAPE_BITS)):
        if c[key] != fixed:
            _fail(source, key, c[key], f"version {c['version']} fixes it to {fixed}")


@dataclass(frozen=True)
class BabaiCheckpointConfig:
    """`quantization_config` of a babai checkpoint (docs/format.md §1).

    format "ssqr": bits (2|3|4), group_size (multiple of 32), outlier_rate; "hptq": target_bits,
    max_code_len and escape_bits (fixed in version 1). ordering/damping/float_target are
    informational. Fields that do not apply to the format are None.
    """

    format: str
    bits: int | None = None
    group_size: int | None = None
    outlier_rate: float | None = None
    target_bits: float | None = None
    max_code_len: int | None = None
    escape_bits: int | None = None
    ordering: str = "act"
    damping: float = 0.01
    float_target: bool = False
    modules_to_not_convert: tuple[str, ...] = ALWAYS_SKIPPED
    version: int = FORMAT_VERSION

    quant_method = "babai"

    def __post_init__(self):
        _check_babai(asdict(self), "quantization_config")

    @classmethod
    def hptq(cls, target_bits: float | None, **informational) -> "BabaiCheckpointConfig":
        return cls("hptq", target_bits=target_bits, max_code_len=HPTQ_MAX_CODE_LEN,
                   escape_bits=HPTQ_ESCAPE_BITS, **informational)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return TENSOR_NAMES[self.format]

    def is_skipped(self, module: str) -> bool:
        return matches_skip(module, self.modules_to_not_convert)

    def to_dict(self) -> dict:
        return {"quant_method": self.quant_method, **asdict(self),
                "modules_to_not_convert": list(self.modules_to_not_convert)}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "BabaiCheckpointConfig":
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(known) - {"quant_method"})
        if unknown:
            _fail(source, unknown[0], d[unknown[0]], f"unknown key (known: {known})")
        for key in ("format", "version"):
            if key not in d:
                _fail(source, key, None, "missing")
        fields = {k: d[k] for k in known if k in d}
        fields["modules_to_not_convert"] = _skip_list(d.get("modules_to_not_convert", []), source)
        _check_babai({**{k: f.default for k, f in cls.__dataclass_fields__.items()}, **fields}, source)
        return cls(**fields)


@dataclass(frozen=True)
class GPTQCheckpointConfig:
    """`quantization_config` of the standard GPTQ layout (AutoGPTQ "gptq" v1; symmetric, static
    groups, desc_act false), read by vLLM's gptq / gptq_marlin and by babai-eval."""

    bits: int
    group_size: int
    modules_to_not_convert: tuple[str, ...] = ALWAYS_SKIPPED

    quant_method = "gptq"

    def __post_init__(self):
        _check_gptq(self.bits, self.group_size, "quantization_config")

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return TENSOR_NAMES["gptq"]

    def is_skipped(self, module: str) -> bool:
        return matches_skip(module, self.modules_to_not_convert)

    def to_dict(self) -> dict:
        return {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": self.bits,
                "group_size": self.group_size, "sym": True, "desc_act": False, "static_groups": True,
                "true_sequential": True, "damp_percent": 0.01, "lm_head": False,
                "modules_to_not_convert": list(self.modules_to_not_convert)}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "GPTQCheckpointConfig":
        if d.get("desc_act") or not d.get("sym", False):
            _fail(source, "desc_act/sym", (d.get("desc_act"), d.get("sym")),
                  "only symmetric GPTQ with desc_act false is supported")
        _check_gptq(d.get("bits"), d.get("group_size"), source)
        return cls(d["bits"], d["group_size"], _skip_list(d.get("modules_to_not_convert") or [], source))


def _check_gptq(bits, group_size, source: str) -> None:
    if bits not in GPTQ_BITS or isinstance(bits, bool):
        _fail(source, "bits", bits, f"gptq bits must be one of {list(GPTQ_BITS)}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
        _fail(source, "group_size", group_size, "must be a positive integer (-1, one group per row, is not supported)")


def config_from_dict(d, source: str) -> BabaiCheckpointConfig | GPTQCheckpointConfig:
    """The config object of a `quantization_config` dict; ValueError naming `source`, key and value."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: quantization_config must be a JSON object, got {type(d).__name__}")
    method = d.get("quant_method")
    if method == "babai":
        return BabaiCheckpointConfig.from_dict(d, source)
    if method == "gptq":
        return GPTQCheckpointConfig.from_dict(d, source)
    _fail(source, "quant_method", method, "expected 'babai' (or 'gptq' for the GPTQ layout)")


def read_checkpoint_config(path: str | Path) -> tuple[dict, BabaiCheckpointConfig | GPTQCheckpointConfig]:
    """(config.json without quantization_config, its config object) of a checkpoint folder (or of
    its config.json file); ValueError naming the file for a missing file, bad JSON or bad config."""
    path = Path(path)
    config_file = path / CONFIG_NAME if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{config_file}: no such file (not a checkpoint folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from None
    if not isinstance(config, dict) or "quantization_config" not in config:
        raise ValueError(f"{config_file}: has no quantization_config (not a quantized checkpoint)")
    qc = config.pop("quantization_config")
    return config, config_from_dict(qc, str(config_file))


def read_quantization_config(path: str | Path) -> BabaiCheckpointConfig | GPTQCheckpointConfig:
    """The validated quantization config of a checkpoint folder (or of its config.json file)."""
    return read_checkpoint_config(path)[1]
