"""Fine-tuning regularizers and data tools of the method registry (``rsseg methods``).

Every module here is imported by the registry (:mod:`rsseg.registry`); a registered class
with ``kind = "regularizer"`` adds a term ``w·L`` to the supervised fine-tuning loss through the
interface of :mod:`rsseg.regularizers.base`, one with ``kind = "tool"`` is a data tool (DCC).
"""
