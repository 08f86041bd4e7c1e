"""What a run leaves behind and who sees it: prompts and checkpoints (``checkpoint``), metric sinks
(``loggers``, ``wandb_logger``), figures redrawn from the files (``plots``: no torch, no Ray) and
what the command prints (``report``)."""
