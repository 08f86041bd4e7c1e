"""The frozen backbone wrapped with a PEFT prompt-learning adapter, and helpers to get and set it.

``model.peft`` picks the adapter, and either way a client owns one float32 tensor of
``[num_virtual_tokens, width]`` that every phase treats alike (aggregation, compression, l2 pull,
interpolation, checkpoints): ``prompt_tuning``, a soft prompt of input embeddings (width: the
hidden size); ``prefix_tuning``, the keys and values of the virtual tokens in every layer, in
PEFT's ``PrefixEncoder`` layout without projection (width: layers x 2 x kv heads x head dim);
``lora``, low-rank updates of the targeted linear layers, flattened into ``[1, P]``
(rayfed.model.lora).

``model.name`` is a built-in name (``smollm2-135m``: the real default; ``tiny-llama``: a 2-layer
random Llama with a character tokenizer, for tests and debugging), a Hugging Face hub id (only
where the hub is reachable) or a local directory.
"""

from __future__ import annotations

import functools
import string
import warnings
from dataclasses import dataclass

import torch
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import DynamicCache

from rayfed.errors import UserError
from rayfed.model.lora import LORA, RowLora, initial_lora, lora_layout
from rayfed.settings import ModelSettings

TINY_LLAMA = "tiny-llama"
PROMPT_TUNING, PREFIX_TUNING = "prompt_tuning", "prefix_tuning"

# PEFT ignores position ids under prompt tuning and says so on every generate call; harmless.
warnings.filterwarnings("ignore", message="Position ids are not supported")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")


@dataclass
class PromptModel:
    """A frozen backbone with one trainable adapter tensor, and its tokenizer: a PEFT
    prompt-learning model (``method``: prompt or prefix tuning; ``peft``), or the backbone with
    rayfed's per-row LoRA hooks (``lora``; ``peft`` is None)."""

    peft: PeftModel | None
    tokenizer: object
    device: torch.device
    method: str = PROMPT_TUNING
    lora: RowLora | None = None

    @property
    def backbone(self):
        """The frozen causal LM that every pass runs (under prompt learning, PEFT's base model)."""
        return self.lora.backbone if self.lora is not None else self.peft.get_base_model()  # type: ignore[union-attr]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The backbone's dtype, which prompts are cast to on their way in (they train in float32)."""
        return self.backbone.get_input_embeddings().weight.dtype

    @property
    def prompt_parameter(self) -> torch.nn.Parameter:
        """The adapter's tensor, ``[num_virtual_tokens, width]`` (LoRA: ``[1, P]``)."""
        if self.lora is not None:
            return self.lora.parameter
        return self.peft.prompt_encoder["default"].embedding.weight  # type: ignore[union-attr]

    def get_prompt(self) -> torch.Tensor:
        """A detached CPU copy of the adapter's tensor (for prompt tuning the soft prompt,
        ``[num_virtual_tokens, hidden]``)."""
        return self.prompt_parameter.detach().to("cpu", copy=True)

    def set_prompt(self, prompt: torch.Tensor) -> None:
        with torch.no_grad():
            self.prompt_parameter.copy_(prompt.to(self.prompt_parameter.device))

    def prompted_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's inputs with a soft prompt in front, as PEFT's prompt tuning builds them:
        ``(inputs_embeds [rows, virtual + len, hidden], attention_mask [rows, virtual + len])``.

        ``prompts`` gives each row its own prompt, ``[rows, virtual, hidden]`` (many clients in
        one pass); by default every row gets this model's prompt."""
        tokens = self.backbone.get_input_embeddings()(input_ids.to(self.device))
        rows = tokens.shape[0]
        if prompts is None:
            prompts = self.prompt_parameter.unsqueeze(0).expand(rows, -1, -1)
        prompts = prompts.to(tokens.dtype)
        mask = attention_mask.to(self.device)
        return torch.cat([prompts, tokens], 1), torch.cat([mask.new_ones(rows, prompts.shape[1]), mask], 1)

    def backbone_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompts: torch.Tensor | None = None) -> dict[str, object]:
        """Keyword arguments for the backbone (or its ``base_model``) that run ``input_ids`` after
        the adapter, one per row (``prompts [rows, virtual, width]``; by default this model's), as
        PEFT's forward builds them. The attention mask covers the virtual tokens; under prompt
        tuning the outputs start with their positions, under prefix tuning they are in the cache
        and the outputs are the tokens' only. Either way the tokens sit at positions ``virtual, ...``.
        Under LoRA there are no virtual tokens: ``prompts [rows, 1, P]`` are the rows' adapters,
        which the hooks apply to this and every following pass until the next call."""
        if self.method == LORA:
            self.lora.use(prompts)  # type: ignore[union-attr]
            return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if self.method == PROMPT_TUNING:
            embeds, mask = self.prompted_inputs(input_ids, attention_mask, prompts)
            return {"inputs_embeds": embeds, "attention_mask": mask}
        rows = input_ids.shape[0]
        if prompts is None:
            prompts = self.prompt_parameter.unsqueeze(0).expand(rows, -1, -1)
        mask = attention_mask.to(self.device)
        return {"input_ids": input_ids.to(self.device), "cache": DynamicCache(self.adapter_states(prompts)),
                "attention_mask": torch.cat([mask.new_ones(rows, prompts.shape[1]), mask], 1)}

    def adapter_states(self, prompts: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values of each adapter's virtual tokens alone, ``[prompts, kv_heads,
        virtual, head_dim]`` per layer: what every row attends to before its own tokens.

        Under prompt tuning a forward of the prompt at positions ``0..V-1`` computes them (causal
        attention keeps them independent of what follows); under prefix tuning they are the
        tensor itself, split as PEFT's ``get_prompt`` splits it. LoRA has no such states."""
        if self.method == LORA:
            raise TypeError("a LoRA adapter changes every token's states, not virtual tokens'")
        prompts = prompts.to(self.device, self.compute_dtype)
        if self.method == PROMPT_TUNING:
            return prompt_states(self.backbone, prompts)
        n, n_virtual = prompts.shape[:2]
        cfg = self.peft.peft_config["default"]  # type: ignore[union-attr]
        heads = cfg.num_attention_heads
        split = prompts.view(n, n_virtual, cfg.num_layers * 2, heads, cfg.token_dim // heads).permute(2, 0, 3, 1, 4)
        return [(split[2 * i], split[2 * i + 1]) for i in range(cfg.num_layers)]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # type: ignore[attr-defined]


def build_prompt_model(cfg: ModelSettings, device: str | torch.device = "cpu", seed: int = 0) -> PromptModel:
    """Load the backbone, freeze it and wrap it with the adapter ``cfg.peft`` names, initialised per ``cfg``.

    The initial tensor depends only on the backbone, ``cfg`` and ``seed``, so every process that
    builds the same config holds the same starting adapter. A prefix starts as the keys and values
    of the initial soft prompt, so prompt and prefix tuning start from the same outputs; LoRA as
    PEFT starts it (B = 0: the backbone's own outputs).
    """
    backbone, tokenizer = load_backbone(cfg.name, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    backbone.eval()  # no dropout: training the prompt must be deterministic
    if cfg.peft == LORA:
        backbone.to(device)
        lora = RowLora(backbone, lora_layout(backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets))
        model = PromptModel(None, tokenizer, torch.device(device), LORA, lora)
        model.set_prompt(initial_lora(lora.layout, seed))
        return model
    peft_model = get_peft_model(backbone, peft_config(cfg))
    model = PromptModel(peft_model, tokenizer, torch.device(device), cfg.peft)
    peft_model.to(model.device)
    prompt = initial_prompt(backbone, tokenizer, cfg, seed)
    if cfg.peft == PREFIX_TUNING:
        with torch.no_grad():
            prompt = pack_prefix(prompt_states(backbone, prompt[None].to(model.device, model.compute_dtype)))[0]
    model.set_prompt(prompt.float())
    return model


def prompt_states(backbone, prompts: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values of soft prompts alone (``[n, virtual, hidden]``, in the
    backbone's dtype and device) at positions ``0..V-1``, ``[n, kv_heads, virtual, head_dim]``."""
    n, n_virtual = prompts.shape[:2]
    out = backbone.base_model(
        inputs_embeds=prompts, attention_mask=torch.ones(n, n_virtual, dtype=torch.long, device=prompts.device),
        position_ids=torch.arange(n_virtual, device=prompts.device).expand(n, -1), use_cache=True)
    return [(layer.keys, layer.values) for layer in out.cache.layers]


def peft_config(cfg: ModelSettings) -> PromptTuningConfig | PrefixTuningConfig:
    """PEFT's config for ``cfg.peft``; the shape-giving fields PEFT fills from the backbone."""
    if cfg.peft == PREFIX_TUNING:
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                  prefix_projection=False)
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.RANDOM)  # replaced, deterministically


def pack_prefix(states: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-layer keys and values ``[n, kv_heads, virtual, head_dim]`` as prefix tensors
    ``[n, virtual, layers * 2 * kv_heads * head_dim]``: the inverse of :meth:`PromptModel.adapter_states`."""
    stacked = torch.stack([t for pair in states for t in pair])  # [layers * 2, n, heads, virtual, head_dim]
    n, n_virtual = stacked.shape[1], stacked.shape[3]
    return stacked.permute(1, 3, 0, 2, 4).reshape(n, n_virtual, -1)


def initial_prompt(backbone, tokenizer, cfg: ModelSettings, seed: int) -> torch.Tensor:
    """``text``: embeddings of ``prompt_init_text`` tokens, repeated to fill the prompt, as the
    embedding layer gives them (PEFT's TEXT init; Gemma's layer scales its table by sqrt(hidden));
    ``random``: Gaussian with the standard deviation of those embeddings."""
    embed = backbone.get_input_embeddings()
    table = embed.weight.detach()
    scale = float(getattr(embed, "embed_scale", 1.0))  # Gemma's scaled embeddings; 1 for a plain table
    n = cfg.num_virtual_tokens
    if cfg.prompt_init == "text":
        ids = tokenizer(cfg.prompt_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("model.prompt_init_text tokenizes to nothing")
        ids = (ids * (n // len(ids) + 1))[:n]
        with torch.no_grad():
            return embed(torch.tensor(ids, device=table.device)).detach().clone().float()
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, table.shape[1], generator=gen) * (table.float().std() * scale)


def load_backbone(name: str, trust_remote_code: bool = False, dtype: str = "float32"):
    """Return ``(model, tokenizer)`` with every backbone parameter frozen, in ``dtype``
    (``float32``, ``bfloat16`` or ``float16``).

    Weights load from safetensors only, never from a pickle (``pytorch_model.bin``), and a
    model's own code runs only with ``trust_remote_code`` (``model.trust_remote_code``).

    Raises:
        ValueError: the model directory has no safetensors weights.
    """
    if name == TINY_LLAMA:
        model, tokenizer = _tiny_llama()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from rayfed.model.builtin import resolve_model_path

        hf_logging.disable_progress_bar()  # one bar per client actor is noise
        path = resolve_model_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), use_safetensors=True,
                                                         trust_remote_code=trust_remote_code)
        except ValueError as err:  # transformers: a config class with no causal-LM head
            raise UserError(f"model.name {name!r}: not a causal language model ({str(err).splitlines()[0]})") from None
        except OSError as err:
            if "safetensors" not in str(err).lower():
                raise
            raise UserError(f"model.name {name!r}: no safetensors weights in {path}; rayfed never loads "
                             f"pickled weights (pytorch_model.bin). Convert them once, e.g. "
                             f"AutoModelForCausalLM.from_pretrained(path).save_pretrained(path)") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(getattr(torch, dtype))  # the tiny model is built in float32; a loaded one already is dtype
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _tiny_llama():
    """A 2-layer random Llama over a character vocabulary; identical in every process."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<eos>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(_tiny_llama_config(len(vocab)))
    return model, tokenizer


def _tiny_llama_config(vocab_size: int = 100):  # the character vocabulary of _tiny_llama
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=2,
                       initializer_range=0.2)  # larger than default: a prompt can steer it


@functools.lru_cache(maxsize=4)  # read once per process: every site's adapter asks
def backbone_config(name: str, trust_remote_code: bool = False):
    """The backbone's Hugging Face config, without loading its weights."""
    if name == TINY_LLAMA:
        return _tiny_llama_config()
    from transformers import AutoConfig

    from rayfed.model.builtin import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(name, quiet=True), trust_remote_code=trust_remote_code)
