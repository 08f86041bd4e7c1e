"""The server's optimizer over the global prompt (FedOpt): averaging, SGD with momentum, Adam.

Clients send pseudo-gradients (FedAvg: ``global - local``; FedSGD: a gradient); the server treats
their weighted mean as the gradient of the global prompt. SGD with lr 1 and no momentum is plain
FedAvg averaging.
"""

from __future__ import annotations

import torch

from rayfed.settings import OptimizerSettings


class ServerOptimizer:
    """Owns the global prompt and a torch optimizer over it."""

    def __init__(self, prompt: torch.Tensor, cfg: OptimizerSettings):
        self.prompt = torch.nn.Parameter(prompt.detach().clone().float())
        if cfg.name == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                [self.prompt], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.name == "adam":
            self.opt = torch.optim.Adam([self.prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"unknown server optimizer {cfg.name!r}")

    def step(self, pseudo_gradient: torch.Tensor) -> torch.Tensor:
        """Apply one step and return a copy of the new global prompt."""
        self.prompt.grad = pseudo_gradient.to(self.prompt.dtype).clone()
        self.opt.step()
        self.prompt.grad = None
        return self.global_prompt()

    def global_prompt(self) -> torch.Tensor:
        return self.prompt.detach().clone()

    def state(self) -> dict[str, torch.Tensor]:
        """The prompt and the optimizer's state (momentum buffer; Adam's step and moments) as
        named tensors: enough to continue bit for bit."""
        out = {"prompt": self.global_prompt()}
        for key, value in self.opt.state_dict()["state"].get(0, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"opt/{key}"] = value.detach().clone()
            elif value is not None:
                out[f"opt/{key}"] = torch.tensor(value, dtype=torch.float64)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of :meth:`state`."""
        with torch.no_grad():
            self.prompt.copy_(state["prompt"])
        entry = {key.removeprefix("opt/"): value.clone() for key, value in state.items() if key.startswith("opt/")}
        saved = self.opt.state_dict()
        self.opt.load_state_dict({"state": {0: entry} if entry else {}, "param_groups": saved["param_groups"]})
