"""Personalization, runnable alone on a finished run: its settings (``settings``), the curves over
epochs and interpolation ratios (``curves``), the local prompts shared between personalizations
(``cache``) and the phase that runs and writes it all (``phase``)."""
