"""The frozen backbone wrapped with PEFT prompt tuning, and helpers to get and set the prompt.

``model.name`` is a built-in name (``smollm2-135m``: the real default; ``tiny-llama``: a 2-layer
random Llama with a character tokenizer, for tests and debugging), a Hugging Face hub id (only
where the hub is reachable) or a local directory.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from rayfed.errors import UserError
from rayfed.settings import ModelSettings

TINY_LLAMA = "tiny-llama"

# PEFT ignores position ids under prompt tuning and says so on every generate call; harmless.
warnings.filterwarnings("ignore", message="Position ids are not supported")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")


@dataclass
class PromptModel:
    """A PEFT prompt-tuning model whose backbone is frozen, with its tokenizer."""

    peft: PeftModel
    tokenizer: object
    device: torch.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The backbone's dtype, which prompts are cast to on their way in (they train in float32)."""
        return self.peft.get_base_model().get_input_embeddings().weight.dtype

    @property
    def prompt_parameter(self) -> torch.nn.Parameter:
        return self.peft.prompt_encoder["default"].embedding.weight

    def get_prompt(self) -> torch.Tensor:
        """A detached CPU copy of the soft prompt, ``[num_virtual_tokens, hidden]``."""
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
        backbone = self.peft.get_base_model()
        tokens = backbone.get_input_embeddings()(input_ids.to(self.device))
        rows = tokens.shape[0]
        if prompts is None:
            prompts = self.prompt_parameter.unsqueeze(0).expand(rows, -1, -1)
        prompts = prompts.to(tokens.dtype)
        mask = attention_mask.to(self.device)
        return torch.cat([prompts, tokens], 1), torch.cat([mask.new_ones(rows, prompts.shape[1]), mask], 1)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # type: ignore[attr-defined]


def build_prompt_model(cfg: ModelSettings, device: str | torch.device = "cpu", seed: int = 0) -> PromptModel:
    """Load the backbone, freeze it and wrap it with a soft prompt initialised per ``cfg``.

    The initial prompt depends only on the backbone, ``cfg`` and ``seed``, so every process that
    builds the same config holds the same starting prompt.
    """
    backbone, tokenizer = load_backbone(cfg.name, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    backbone.eval()  # no dropout: training the prompt must be deterministic
    peft_cfg = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,  # replaced below, deterministically
    )
    peft_model = get_peft_model(backbone, peft_cfg)
    model = PromptModel(peft_model, tokenizer, torch.device(device))
    model.set_prompt(initial_prompt(backbone, tokenizer, cfg, seed))
    peft_model.to(model.device)
    return model


def initial_prompt(backbone, tokenizer, cfg: ModelSettings, seed: int) -> torch.Tensor:
    """``text``: embeddings of ``prompt_init_text`` tokens, repeated to fill the prompt (as PEFT's
    TEXT init); ``random``: Gaussian with the embedding matrix's standard deviation."""
    table = backbone.get_input_embeddings().weight.detach()
    n = cfg.num_virtual_tokens
    if cfg.prompt_init == "text":
        ids = tokenizer(cfg.prompt_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("model.prompt_init_text tokenizes to nothing")
        ids = (ids * (n // len(ids) + 1))[:n]
        return table[torch.tensor(ids)].clone().float()
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, table.shape[1], generator=gen) * table.float().std()


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
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<eos>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=2,
                         initializer_range=0.2)  # larger than default: a prompt can steer it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    return model, tokenizer
