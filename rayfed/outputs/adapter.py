"""Trained prompts, prefixes and LoRA adapters as PEFT adapter directories, for use outside rayfed.

Every global and personalized adapter rayfed keeps is also written as the directory
``PeftModel.from_pretrained`` loads: ``adapter_config.json`` (PEFT's own prompt-tuning,
prefix-tuning or LoRA config, naming the base model) and ``adapter_model.safetensors`` (tensor
``prompt_embeddings``, or each layer's ``lora_A`` and ``lora_B``, as PEFT saves them), plus
``rayfed_template.json``: the text template and token limits the prompt was trained with, which
the adapter alone does not carry::

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, "OUT/adapter")

The base is a hub id, a local directory, or for a built-in model (``smollm2-135m``) the directory
it was converted into on the machine that wrote the adapter (``rayfed model prepare`` rebuilds it
elsewhere). ``tiny-llama`` is rayfed's random test model and has no directory to name.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from rayfed.model.lora import LORA, LoraLayout, lora_config, lora_layout
from rayfed.settings import ModelSettings

ADAPTER_DIR = "adapter"  # a run's global prompt: OUT/adapter/
SITE_ADAPTERS = "adapters"  # a personalization's selected prompt per client: .../personalize/NAME/adapters/client_<id>/
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TEMPLATE_FILE = "rayfed_template.json"
TEMPLATE = "{instruction}\n\nInput: {input}\nOutput:"  # rayfed.data.formatting.source_text; the target follows


def adapter_base(name: str) -> str:
    """What ``base_model_name_or_path`` names for ``model.name``: a hub id as given, a local
    directory made absolute, a built-in model's converted directory."""
    from rayfed.model.builtin import BUILTIN_MODELS, resolve_model_path
    from rayfed.model.prompt_model import TINY_LLAMA

    if name in BUILTIN_MODELS:
        return resolve_model_path(name, quiet=True)
    if name == TINY_LLAMA:
        return TINY_LLAMA
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def save_adapter(directory: Path, prompt: torch.Tensor, model: ModelSettings, *, max_source_tokens: int,
                 max_target_tokens: int, source: dict[str, object] | None = None) -> None:
    """Write ``prompt`` (``[num_virtual_tokens, width]``) as a PEFT adapter of ``model.peft`` in
    ``directory``. ``source`` (the round, a client, an epoch and ratio) goes into the template file.

    Each file is written whole and renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = lora_layout_of(model) if model.peft == LORA else None
    config = _peft_config(prompt, model, layout)
    staging = directory / ".staging"
    staging.mkdir(exist_ok=True)
    config.save_pretrained(str(staging))
    weights = prompt.detach().to("cpu", torch.float32).contiguous()
    tensors = layout.peft_state(weights) if layout is not None else {"prompt_embeddings": weights}
    save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    template = {"template": TEMPLATE, "target_prefix": " ", "eos_after_target": True,
                "max_source_tokens": max_source_tokens, "max_source_truncation": "left",
                "max_target_tokens": max_target_tokens, "model_name": model.name, **(source or {})}
    (staging / TEMPLATE_FILE).write_text(json.dumps(template, indent=2, sort_keys=True) + "\n")
    for name in ("adapter_config.json", ADAPTER_WEIGHTS, TEMPLATE_FILE):
        (staging / name).replace(directory / name)
    staging.rmdir()


def lora_layout_of(model: ModelSettings) -> LoraLayout:
    """The LoRA layout of ``model``'s backbone, from its config alone (the module tree is built
    on the meta device: no weights are read)."""
    targets = tuple(model.lora_targets) if model.lora_targets is not None else None
    return _lora_layout(model.name, model.trust_remote_code, model.lora_rank, model.lora_alpha, targets)


@functools.lru_cache(maxsize=4)  # once per process: every site's adapter asks
def _lora_layout(name: str, trust_remote_code: bool, rank: int, alpha: float,
                 targets: tuple[str, ...] | None) -> LoraLayout:
    from transformers import AutoModelForCausalLM

    from rayfed.model.prompt_model import backbone_config

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(backbone_config(name, trust_remote_code),
                                                    trust_remote_code=trust_remote_code)
    return lora_layout(skeleton, rank, alpha, list(targets) if targets is not None else None)


def _peft_config(prompt: torch.Tensor, model: ModelSettings, layout: LoraLayout | None):
    """PEFT's config for ``prompt``, with the fields ``save_pretrained`` writes."""
    from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType

    from rayfed.model.prompt_model import PREFIX_TUNING, backbone_config

    if layout is not None:
        if layout.size != prompt.numel():
            raise ValueError(f"a LoRA adapter of {prompt.numel()} values does not fit {model.name} "
                             f"(expected {layout.size})")
        model_type = backbone_config(model.name, model.trust_remote_code).model_type
        return lora_config(layout.rank, layout.alpha, list(layout.targets),
                           fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D layers, as PEFT sets it
                           inference_mode=True, base_model_name_or_path=adapter_base(model.name))
    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": prompt.shape[0],
              "inference_mode": True,  # as PeftModel.save_pretrained writes it
              "base_model_name_or_path": adapter_base(model.name)}
    if model.peft != PREFIX_TUNING:
        return PromptTuningConfig(token_dim=prompt.shape[1], num_transformer_submodules=1,
                                  prompt_tuning_init=PromptTuningInit.RANDOM,  # the weights replace it on load
                                  **common)
    from peft.utils.other import _prepare_prompt_learning_config  # how PEFT shapes a prefix for a backbone

    config = _prepare_prompt_learning_config(PrefixTuningConfig(prefix_projection=False, **common),
                                             backbone_config(model.name, model.trust_remote_code))
    width = config.num_layers * 2 * config.token_dim
    if width != prompt.shape[1]:
        raise ValueError(f"a prefix of width {prompt.shape[1]} does not fit {model.name} (PEFT expects {width})")
    return config
