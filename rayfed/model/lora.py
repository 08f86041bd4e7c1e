"""LoRA with one low-rank update per row, so that many clients' adapters share a batched pass.

A client's LoRA adapter is one float32 tensor ``[1, P]``, like a prompt's one tensor per
client: for each targeted layer, in the backbone's module order, PEFT's ``lora_A`` weight
``[rank, in]`` then its ``lora_B`` weight ``[out, rank]``, flattened. Aggregation, compression,
server optimizers, the l2 pull, interpolation and checkpoints act on it unchanged (on A and B
each, as FedAvg of LoRA usually does; the product ``B A`` is not averaged).

:class:`RowLora` adds the update with forward hooks on the backbone's own layers, which it never
modifies: row ``i`` of a batch gets ``scaling * x_i A_i^T B_i^T`` from its own adapter (a batched
matrix product over the rows' gathered weights), or every row the model's own adapter. That is
PEFT's ``LoraLayer`` forward (``lora_B(lora_A(x)) * alpha / rank``, dropout 0, in float32), so
an exported adapter gives the same logits (rayfed.outputs.adapter).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

from rayfed.errors import UserError

LORA = "lora"  # model.peft


@dataclass(frozen=True)
class LoraLayout:
    """Where each targeted layer's A and B sit in the flat adapter tensor."""

    modules: tuple[str, ...]  # the backbone's module names, e.g. model.layers.0.self_attn.q_proj
    dims: tuple[tuple[int, int], ...]  # each module's (in features, out features)
    rank: int
    alpha: float
    targets: tuple[str, ...]  # PEFT's target_modules that picked them

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def size(self) -> int:
        return sum(self.rank * (i + o) for i, o in self.dims)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each module's A starts in the flat tensor."""
        return tuple(itertools.accumulate((self.rank * (i + o) for i, o in self.dims[:-1]), initial=0))

    def module(self, flat: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(A [n, rank, in], B [n, out, rank])`` of module ``index`` in adapters ``flat [n, P]``."""
        (i, o), start = self.dims[index], self.offsets[index]
        middle = start + self.rank * i
        return (flat[:, start:middle].unflatten(1, (self.rank, i)),
                flat[:, middle:middle + o * self.rank].unflatten(1, (o, self.rank)))

    def split(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`module` of every module."""
        return [self.module(flat, index) for index in range(len(self.dims))]

    def peft_state(self, adapter: torch.Tensor) -> dict[str, torch.Tensor]:
        """One adapter ``[1, P]`` as the tensors PEFT saves (``base_model.model.<module>.lora_A.weight``)."""
        state = {}
        for name, (a, b) in zip(self.modules, self.split(adapter.reshape(1, -1))):
            state[f"base_model.model.{name}.lora_A.weight"] = a[0].contiguous()
            state[f"base_model.model.{name}.lora_B.weight"] = b[0].contiguous()
        return state


def default_targets(model_type: str) -> list[str]:
    """PEFT's default LoRA target modules for an architecture (``model.lora_targets: null``)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if model_type not in DEFAULTS:
        raise UserError(f"model.lora_targets: PEFT has no default LoRA targets for {model_type!r} models; "
                        f"name the layers, e.g. model.lora_targets=[q_proj,v_proj]")
    return list(DEFAULTS[model_type])


def lora_config(rank: int, alpha: float, targets: list[str], **fields):
    """PEFT's ``LoraConfig`` of rayfed's LoRA: no dropout, no bias, the given targets."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=alpha, target_modules=targets,
                      lora_dropout=0.0, bias="none", **fields)


def lora_layout(backbone: torch.nn.Module, rank: int, alpha: float, targets: list[str] | None) -> LoraLayout:
    """The layout of LoRA on ``backbone``'s layers that PEFT's ``target_modules`` matching picks."""
    from peft.tuners.tuners_utils import check_target_module_exists

    names = targets or default_targets(backbone.config.model_type)
    config = lora_config(rank, alpha, names)
    modules, dims = [], []
    for name, module in backbone.named_modules():
        if not check_target_module_exists(config, name):
            continue
        shape = _linear_dims(module)
        if shape is None:
            raise UserError(f"model.lora_targets: {name} is a {type(module).__name__}, not a linear layer")
        modules.append(name)
        dims.append(shape)
    if not modules:
        raise UserError(f"model.lora_targets {names}: no layer of the backbone matches")
    return LoraLayout(tuple(modules), tuple(dims), rank, float(alpha), tuple(names))


def _linear_dims(module: torch.nn.Module) -> tuple[int, int] | None:
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear layer: weight [in, out]
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def initial_lora(layout: LoraLayout, seed: int) -> torch.Tensor:
    """PEFT's default initialisation, seeded: A uniform in +-1/sqrt(in) (Kaiming, a=sqrt(5)),
    B zero, so the adapter starts as the backbone itself."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for i, o in layout.dims:
        bound = 1 / math.sqrt(i)
        parts.append((torch.rand(layout.rank * i, generator=gen) * 2 - 1) * bound)
        parts.append(torch.zeros(o * layout.rank))
    return torch.cat(parts)[None]


class RowLora:
    """Forward hooks adding LoRA updates to the backbone's targeted layers, per row.

    :meth:`use` sets the adapters of the next passes: ``[rows, 1, P]``, one per row of every
    batch until the next call, or None for the model's own :attr:`parameter` on every row.
    """

    def __init__(self, backbone: torch.nn.Module, layout: LoraLayout):
        self.backbone = backbone
        self.layout = layout
        self.parameter = torch.nn.Parameter(torch.zeros(1, layout.size, device=next(backbone.parameters()).device))
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        modules = dict(backbone.named_modules())
        for index, name in enumerate(layout.modules):
            modules[name].register_forward_hook(self._hook(index))

    def use(self, adapters: torch.Tensor | None) -> None:
        if adapters is not None:
            adapters = adapters.to(self.parameter.device).reshape(adapters.shape[0], -1)
        self._rows = None if adapters is None else self.layout.split(adapters)

    def _hook(self, index: int):
        def add_update(module, args, output):
            x = args[0]
            if self._rows is None:
                a, b = self.layout.module(self.parameter, index)
                update = x.to(a.dtype) @ a[0].T @ b[0].T
            else:
                a, b = self._rows[index]
                if a.shape[0] != x.shape[0]:
                    raise RuntimeError(f"LoRA adapters for {a.shape[0]} rows, a batch of {x.shape[0]}")
                update = torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))
            return output + (update * self.layout.scaling).to(output.dtype)
        return add_update
