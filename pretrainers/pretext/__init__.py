"""Pretext-task pretraining: the method interface (``method``), one training loop every method runs
in (``trainer``), the ``pretext`` pretrainer that trains then evaluates in one suite model
(``pretrainer``), the ``ssl-bench pretrain`` sub-command (``command``), and one module per method
in ``methods/``."""
