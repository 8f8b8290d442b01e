"""Linear heads on a frozen trunk trained from images: `linear` on any classification dataset
(classification.py), its Places205 preset `linear_places205` (places205.py), and their multi-head
trainer (heads.py)."""

NAME = "linear_places205"  # the name the task is registered and configured under
