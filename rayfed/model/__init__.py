"""The frozen backbone with its soft prompt (``prompt_model``) and the built-in offline models
(``builtin``: SmolLM2 from its PyPI wheel, converted once into the cache; torch-free to import)."""
