"""The declarative search-space spec (SPEC §6): YAML validated by strict pydantic models.

A spec names the search space (``nasnet`` or ``densenet``), its shape, the data, the training
recipe and the search settings. Unknown keys, wrong types and impossible values are errors
that name the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnas_ir.errors import InputError, shorten
from cnas_ir.safeyaml import load_yaml

__all__ = [
    "DataSpec",
    "DensenetSpec",
    "InputSpec",
    "NasnetSpec",
    "SearchSpec",
    "Spec",
    "TrainSpec",
    "load_spec",
    "parse_spec",
]

# A spec is a mapping of sections, each a mapping of scalars: collections nest two deep.
SPEC_DEPTH = 2

# Counts and sizes fit the IR's int32 columns (vertex ids, resolutions), and every size the
# estimate multiplies out of them stays a finite float; seeds fit numpy's and torch's generators.
MAX_INT = 2**31 - 1
MAX_IMAGE_SIZE = 2**16
Positive = Annotated[int, Field(gt=0, le=MAX_INT)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class _Strict(BaseModel):
    # strict: "36" is not 36, true is not 1; extra="forbid": a typo is an error, not a default;
    # allow_inf_nan=False: a learning rate of .inf or .nan is refused, not trained into NaN.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class InputSpec(_Strict):
    channels: Positive = 3
    # At most 65,536 pixels a side: multiply-add counts (int64) stay exact far beyond any image.
    size: Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)] = 32


class NasnetSpec(_Strict):
    """The NASNet channel search space (SPEC §1); defaults are the paper's CIFAR-10 config."""

    channels: Positive = 36
    stacks: Positive = 3
    cells_per_stack: Positive = 6
    nodes_per_cell: Positive = 5
    ops_per_node: Positive = 2
    stem_multiplier: Positive = 3
    spatial_dropout: Probability = 0.1
    # cifar: one 3x3 conv at the input's resolution. imagenet (paper §3.3): three stride-2 3x3
    # convs, in -> S/2 -> S -> S with S = stem_multiplier x channels; the first cell reads the
    # second conv's output as a and the stem's as b.
    stem: Literal["cifar", "imagenet"] = "cifar"


class DensenetSpec(_Strict):
    """The DenseNet-BC channel search space (SPEC §2); defaults are DenseNet-BC-100, k=12."""

    growth_rate: Positive = 12
    depth: Positive = 100
    bottleneck_width: Positive = 4
    compression: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    spatial_dropout: Probability = 0.0

    @field_validator("depth")
    @classmethod
    def _depth_fits_three_blocks(cls, depth: int) -> int:
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (three blocks of n bottleneck layers), got {depth}")
        return depth

    @model_validator(mode="after")
    def _transitions_keep_channels(self) -> DensenetSpec:
        # A transition keeps int(compression x its input) channels (passes/build.py): none is
        # a graph with an empty group, refused here in the spec's words.
        width = 2 * self.growth_rate
        for block in (2, 3):
            width = int((width + self.layers_per_block * self.growth_rate) * self.compression)
            if width < 1:
                raise ValueError(f"compression {self.compression} leaves the transition into block {block} no channels")
        return self

    @property
    def layers_per_block(self) -> int:
        return (self.depth - 4) // 6


class DataSpec(_Strict):
    """The data set: built in (``digits``, ``synthetic``), or read from the local folder
    ``path`` (``cifar10``'s batches; ``folder``: one subfolder of images per class). ``seed``
    draws the splits carved from the data."""

    name: Literal["digits", "synthetic", "cifar10", "folder"] = "digits"
    path: str | None = None
    seed: Seed = 0


class TrainSpec(_Strict):
    """The paper's recipe (§3): SGD with Nesterov momentum and cosine warm restarts."""

    epochs: Annotated[int, Field(ge=0)] = 150
    batch_size: Positive = 128
    lr: PositiveFloat = 0.05
    lr_min: Annotated[float, Field(ge=0.0)] = 0.0001
    t0: Positive = 10
    t_mul: Positive = 2
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0002
    seed: Seed = 0

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainSpec:
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        return self


class SearchSpec(_Strict):
    rho: Annotated[float, Field(gt=0.0, le=1.0)] = 0.46
    gamma: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    criterion: Literal["taylor", "random", "weight"] = "taylor"
    saliency_batches: Positive = 100
    finetune_epochs: Annotated[int, Field(ge=0)] = 1
    # What rho is a fraction of: the cells' parameters (the paper's) or their multiply-adds.
    budget: Literal["params", "macs"] = "params"


class Spec(_Strict):
    """A whole spec file. Exactly the section of the chosen ``space`` may be given."""

    name: Annotated[str, Field(min_length=1)]
    space: Literal["nasnet", "densenet"] = "nasnet"
    input: InputSpec = InputSpec()
    classes: Annotated[int, Field(ge=2, le=MAX_INT)] = 10
    nasnet: NasnetSpec | None = None
    densenet: DensenetSpec | None = None
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()

    @model_validator(mode="after")
    def _one_space(self) -> Spec:
        other = "densenet" if self.space == "nasnet" else "nasnet"
        if getattr(self, other) is not None:
            raise ValueError(f"section '{other}' is given but space is '{self.space}'")
        if getattr(self, self.space) is None:
            # A missing section means the paper's defaults for that space.
            object.__setattr__(self, self.space, NasnetSpec() if self.space == "nasnet" else DensenetSpec())
        if self.space == "densenet" and self.input.size < 4:
            raise ValueError(
                f"input.size must be at least 4 for densenet (two 2x2 average pools), got {self.input.size}"
            )
        return self

    def to_json(self) -> str:
        """Canonical JSON of the spec (sorted keys): what the ``.cnas`` file stores."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _format_error(source: str, err: ValidationError) -> str:
    """The first validation error, naming its key and (shortened) value, and how many more."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] not in ("value_error", "missing") and "input" in e:
            msg += f" (got {shorten(repr(e['input']))})"
        parts.append(f"{key}: {shorten(msg, 160)}")
    more = f" (and {len(parts) - 1} more)" if len(parts) > 1 else ""
    return f"{source}: {parts[0]}{more}"


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate a mapping (already parsed YAML/JSON) into a :class:`Spec`.

    Raises :class:`InputError` with one line naming ``source`` and every offending key.
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: a spec must be a mapping of keys, got {type(data).__name__}")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise InputError(_format_error(source, err)) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file (no anchors or aliases, at most 1 MiB, two levels of
    nesting: the schema's sections)."""
    data = load_yaml(path, SPEC_DEPTH, "spec file")
    return parse_spec(data, str(path))
