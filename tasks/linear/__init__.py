"""Linear heads on a frozen trunk trained from images: `linear` on any classification dataset
(classification.py), its Places205 preset `linear_places205` (places205.py), and their multi-head
trainer (heads.py)."""

NAME = "linear_places205"  # the name the task is registered and configured under

# The two reference schedules as data. "length"/"milestones" are in "unit" (iterations at
# batch_size, or epochs); weight_decay None = the reference's per-architecture value. Here rather
# than in heads.py: the task's options are read without importing torch.
SCHEDULES: dict[str, dict] = {
    # fair_ssb (Caffe2): LR 0.01 x0.1 at 40k/80k/120k, 140k iterations at batch 256 (~14.6 epochs)
    "reference": {"unit": "iterations", "length": 140_000, "milestones": (40_000, 80_000, 120_000),
                  "base_lr": 0.01, "batch_size": 256, "weight_decay": None},
    # VISSL: 14 epochs, x0.1 at epochs 4/8/12, weight decay 5e-4
    "vissl": {"unit": "epochs", "length": 14, "milestones": (4, 8, 12),
              "base_lr": 0.01, "batch_size": 256, "weight_decay": 5e-4},
}
SCHEDULE_NAMES = (*SCHEDULES, "custom")
