"""The training toolkit every training loop of ssl-bench uses (pretrainers and tasks alike):

- ``seeding``: seeds, derived seeds, worker seeding, RNG states in checkpoints;
- ``sampling``: the data order as a function of (seed, epoch), resumable batch samplers,
  DataLoader iteration that keeps a worker's DatasetError readable;
- ``schedule``: the one LR schedule type (step / cosine / poly / onecycle, affine or ramp warm-up);
  the reference presets stay with their tasks, as data;
- ``checkpoint``: atomic saves, the checkpoint to resume from, strict weight matching;
- ``csvlog``: resumable CSV logs;
- ``distributed``: world size, process groups, keeping ranks identical;
- ``precision``: channels-last and bf16 autocast on CUDA;
- ``progress``: a tqdm bar on a terminal, periodic plain lines elsewhere;
- ``loop``: the one resumable training loop (resume, update, save cadence, final check, progress,
  log) and the one optimiser builder: a training writes only its model, data and loss.
"""

from ..paths import atomic_output, atomic_write
from .checkpoint import (atomic_torch_save, cpu_state, load_matching_checkpoint, load_matching_weights,
                         load_resume_state, restore_scheduler_state, scheduler_state)
from .csvlog import CsvLog, write_csv
from .distributed import (all_reduce, average_buffers, barrier, free_port, process_group, rank_divergence,
                          resolve_world_size)
from .loop import Part, RowsCsv, TrainingLoop, build_optimizer
from .precision import autocast, channels_last, to_device
from .progress import LineProgress, progress
from .sampling import ORDER_TAG, ResumableBatches, epoch_order, loader_batches, stream_items
from .schedule import Schedule
from .seeding import derived_seed, replicate_seed, rng_state, seed_everything, seed_worker, set_rng_state

__all__ = [
    "atomic_output", "atomic_write", "atomic_torch_save", "cpu_state", "load_matching_checkpoint",
    "load_matching_weights", "load_resume_state", "restore_scheduler_state", "scheduler_state", "CsvLog",
    "write_csv", "all_reduce", "average_buffers", "barrier", "free_port", "process_group", "rank_divergence",
    "resolve_world_size", "autocast", "channels_last", "to_device", "LineProgress", "progress", "ORDER_TAG",
    "ResumableBatches", "epoch_order", "loader_batches", "stream_items", "Schedule", "derived_seed",
    "replicate_seed", "rng_state", "seed_everything", "seed_worker", "set_rng_state", "Part", "RowsCsv",
    "TrainingLoop", "build_optimizer",
]
