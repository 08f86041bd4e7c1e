"""What a client computes, on its worker: the per-example loss (``loss``), local training of one
client or many in lockstep (``training``), evaluation fused with greedy decoding (``evaluation``),
and rows of similar length in one forward pass (``lengths``). Plain functions over a
``PromptModel``; no Ray here."""
