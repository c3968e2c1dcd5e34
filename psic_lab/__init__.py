"""The lab: training (``python -m psic_lab.training``), evaluation and the vision-language models.

It imports the runtime (:mod:`psic_cli`); the runtime never imports it.  Needs the ``train`` extra.
"""
