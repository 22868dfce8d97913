"""Model configs: the shape and options of each model, checked field by field, and the models that plug in.

No torch here: the entry points check a config before any library loads, and a checkpoint's model is rebuilt
from plain values through ``ModelConfig.from_record``, which accepts only config classes defined in code (the
allow-list ``ModelConfig.classes``: those of this package, those of modules already imported, and those that
installed packages declare under the entry-point group ``gpt.models``) and values of each field's declared type.
A checkpoint's contents are never called or imported: a class it names is looked up, never imported because of it.
"""

import importlib
import math
from dataclasses import asdict, dataclass, fields
from importlib.metadata import entry_points
from typing import ClassVar, Literal, get_args, get_origin

from gpt import UserError

# where a package declares the model configs it adds, in its pyproject.toml:
#   [project.entry-points."gpt.models"]
#   mlp = "mypackage.models:MLPConfig"
PLUGIN_GROUP = "gpt.models"
# the names older checkpoints give the config classes of this package (gpt.model: main at e454eb4; gpt.configs: until
# the package had sub-packages)
RENAMED = {f"{module}.{name}": f"gpt.models.configs.{name}" for module in ("gpt.model", "gpt.configs")
           for name in ("GPTConfig", "BigramConfig")}


@dataclass
class ModelConfig:
    """What every model config has. A subclass is a dataclass whose fields are ``int``, ``float``, ``bool``, ``str``
    or a ``Literal`` of choices; whole numbers must be positive, and so must numbers other than those named in
    ``NON_NEGATIVE``. Defining a subclass adds it to the allow-list of ``from_record``. ``model`` names the
    ``gpt.models.interface.TokenModel`` class it builds (or a subclass overrides ``build``)."""

    vocab_size: int  # from the tokenizer when the model is built
    block_size: int = 256

    classes: ClassVar[dict[str, type["ModelConfig"]]] = {}
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset()
    model: ClassVar[str] = ""  # "package.module.ModelClass"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        ModelConfig.classes[cls.name()] = cls

    @classmethod
    def name(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    def __post_init__(self):
        for field in fields(self):
            check_field(self, field.name, field.type)

    def build(self):
        """The ``TokenModel`` of this shape: the class ``model`` names, imported when a model is built (torch loads
        then, not when a config is checked)."""
        module, _, name = self.model.rpartition(".")
        return getattr(importlib.import_module(module), name)(self)

    def to_record(self) -> dict:
        return {"class": self.name(), "fields": asdict(self)}

    @classmethod
    def from_record(cls, record: object, where: str) -> "ModelConfig":
        """The config a record of ``to_record`` describes, refused with a UserError naming ``where`` unless its
        class is in the allow-list and every value is of its field's type."""
        if not isinstance(record, dict) or not isinstance(record.get("fields"), dict):
            raise UserError(f"{where}: the model record is not a dict of fields")
        config_class = cls.named(record.get("class"))
        if config_class is None:
            raise UserError(f"{where}: unknown model class {record.get('class')!r}; known: {', '.join(cls.classes)}")
        known = {field.name for field in fields(config_class)}
        unknown = sorted(set(record["fields"]) - known)
        if unknown:
            raise UserError(f"{where}: model.{unknown[0]} is not a field of {config_class.__name__}")
        try:
            return config_class(**record["fields"])
        except UserError as e:
            raise UserError(f"{where}: {e}") from None

    @classmethod
    def named(cls, name: object) -> type["ModelConfig"] | None:
        """The config class of that name in the allow-list, where installed plug-ins are loaded first."""
        if not isinstance(name, str):
            return None
        name = RENAMED.get(name, name)
        if name not in cls.classes:
            load_plugins()
        return cls.classes.get(name)

    def differences(self, other: "ModelConfig") -> list[str]:
        """``model.KEY: checkpoint A, given B`` for every field in which ``other`` (the checkpoint's) differs."""
        if type(self) is not type(other):
            return [f"model: checkpoint {type(other).__name__}, given {type(self).__name__}"]
        ours, theirs = asdict(self), asdict(other)
        return [f"model.{key}: checkpoint {theirs[key]}, given {ours[key]}" for key in ours if ours[key] != theirs[key]]


def load_plugins() -> None:
    """Import the model configs that installed packages declare under the entry-point group ``gpt.models``."""
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            config_class = entry.load()
        except Exception as e:  # the package's own import failed
            raise UserError(f"the model plug-in {entry.name} ({entry.value}) cannot be loaded: {type(e).__name__}: "
                            f"{e}") from None
        if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
            raise UserError(f"the model plug-in {entry.name} ({entry.value}) is not a ModelConfig subclass")


def check_field(config: ModelConfig, name: str, kind) -> None:
    """Hydra passes values as written on the command line, and a checkpoint may carry anything: check each."""
    value = getattr(config, name)
    if get_origin(kind) is Literal:
        if value not in get_args(kind):
            raise UserError(f"model.{name}={value!r} is not a valid option; choose one of "
                            f"{', '.join(map(str, get_args(kind)))}")
        return
    numbers = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, numbers):
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
        raise UserError(f"model.{name} must be {what}, got {value!r}")
    if kind in (int, float):
        lowest_ok = value >= 0 if name in config.NON_NEGATIVE else value > 0
        if not math.isfinite(value) or not lowest_ok:
            sign = "non-negative" if name in config.NON_NEGATIVE else "positive"
            raise UserError(f"model.{name} must be a {sign} {'integer' if kind is int else 'number'}, got {value!r}")


@dataclass
class GPTConfig(ModelConfig):
    """Shape and options of a GPT (``gpt.models.transformer.GPT``)."""

    model: ClassVar[str] = "gpt.models.transformer.GPT"

    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    pad_vocab_multiple: int = 1  # GPT-2 pads 50257 to 50304 (a multiple of 64) for faster matmuls
    pos: Literal["learned", "rope"] = "learned"
    # gelu: exact (erf); gelu_tanh: GPT-2's tanh approximation
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope_base: float = 10000.0
    causal: bool = True  # False: bidirectional attention, for masked-LM training
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    # mup: the maximal update parametrization (Tensor Programs V), under which the best learning rate found at
    # base_width carries over to wider models; at n_embd == base_width it equals the standard one
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int = 128

    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset({"dropout"})

    def __post_init__(self):
        super().__post_init__()
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise UserError(f"model.pos=rope needs an even head dimension, got n_embd/n_head={self.head_dim}")
        if self.dropout >= 1:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def width_mult(self) -> float:
        """How many times wider than ``base_width`` the model is under μP; 1 in the standard parametrization."""
        return self.n_embd / self.base_width if self.parametrization == "mup" else 1.0

    @property
    def attention_scale(self) -> float:
        """1/sqrt(head_dim) in the standard parametrization; μP scales by 1/head_dim instead, with the factor
        that makes both agree at the base width (widen n_embd, not n_head)."""
        return 1 / math.sqrt(self.head_dim * self.width_mult)


@dataclass
class BigramConfig(ModelConfig):
    """The baseline: the next token depends only on the current one (``gpt.models.bigram.Bigram``)."""

    model: ClassVar[str] = "gpt.models.bigram.Bigram"

    block_size: int = 64  # only sets the length of training windows and of the context when sampling
