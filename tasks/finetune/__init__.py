"""Whole-network fine-tuning on a classification dataset (SimCLR appendix B.8 / Kornblith et al. 2019)."""

NAME = "finetune"
