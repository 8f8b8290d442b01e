"""Checkpoints and atomic writes: whole or absent, mismatches named with their keys, scheduler
state that survives ``weights_only`` loading, resumable CSV logs."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.errors import CheckpointError
from benchmark.paths import DiskFullError, atomic_output, atomic_write
from benchmark.training import (CsvLog, Schedule, atomic_torch_save, load_matching_checkpoint, load_matching_weights,
                                restore_scheduler_state, scheduler_state, write_csv)


def _litter(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# --- atomic writes ---------------------------------------------------------------------------


def test_bytes_text_and_torch_objects_round_trip(tmp_path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "été\n")
    atomic_write(tmp_path / "c.pt", {"w": torch.arange(3.0)})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "été\n"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3.0))
    assert _litter(tmp_path) == []


def test_a_writer_failing_half_way_leaves_the_old_file_and_no_litter(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"v": 1}, path)
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"half a checkpo")
            raise RuntimeError("killed")
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert _litter(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "log.csv"
    atomic_write(path, "old\n")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(path, "new\n")
    assert path.read_text() == "old\n" and _litter(tmp_path) == []


def test_a_full_disk_is_named(tmp_path, monkeypatch) -> None:
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"no space left on the file system of .*x\.bin \(4 bytes needed\)"):
        atomic_write(tmp_path / "x.bin", b"abcd")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not (tmp_path / "x.bin").exists() and _litter(tmp_path) == []


# --- resuming --------------------------------------------------------------------------------


def test_only_a_checkpoint_of_this_format_and_configuration_is_resumed(tmp_path, capsys) -> None:
    path = tmp_path / "checkpoint.pt"
    assert load_matching_checkpoint(path, 1, "f", "t") is None  # none yet: silent
    atomic_torch_save({"format": 1, "fingerprint": "f", "x": 3}, path)
    assert load_matching_checkpoint(path, 1, "f", "t")["x"] == 3
    assert load_matching_checkpoint(path, 2, "f", "t") is None
    assert load_matching_checkpoint(path, 1, "g", "t") is None
    out = capsys.readouterr().out
    assert out.count("made with another configuration; starting afresh") == 2 and str(path) in out
    atomic_torch_save({"format": 1, "run_id": "r"}, path)
    assert load_matching_checkpoint(path, 1, "r", "pretext", key="run_id") is not None
    assert load_matching_checkpoint(path, 1, "s", "pretext", key="run_id", verbose=False) is None
    assert capsys.readouterr().out == ""


def test_weight_mismatches_list_their_keys(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    target = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    load_matching_weights(target, weights, "ck.pt")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in weights.items())

    partial = {k: v for k, v in weights.items() if not k.startswith("1.")}
    with pytest.raises(CheckpointError) as info:
        load_matching_weights(target, {**partial, "2.weight": torch.zeros(1)}, "ck.pt")
    message = str(info.value)
    assert "ck.pt lacks 2 weight(s) ['1.weight', '1.bias']" in message
    assert "1 unexpected weight(s) ['2.weight']" in message and "delete it" in message
    load_matching_weights(target, partial, "ck.pt", ignore=("1.",))  # frozen parts are not stored


def test_multisteplr_state_survives_weights_only_loading(tmp_path) -> None:
    schedule = Schedule("s", 8, 0.1, 4, milestones=(2, 5))

    def fresh():
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return optimizer, schedule.scheduler(optimizer)

    optimizer, scheduler = fresh()
    lrs = []
    for it in range(8):
        if it == 3:
            atomic_torch_save({"o": optimizer.state_dict(), "s": scheduler_state(scheduler)}, tmp_path / "c.pt")
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    optimizer, scheduler = fresh()
    optimizer.load_state_dict(state["o"])
    scheduler.load_state_dict(restore_scheduler_state(state["s"]))
    resumed = []
    for _ in range(3, 8):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert resumed == lrs[3:]


# --- CSV logs --------------------------------------------------------------------------------


def test_a_resumed_log_is_cut_back_to_its_checkpoint(tmp_path) -> None:
    path = tmp_path / "log.csv"
    log = CsvLog(path, ["iteration", "loss"])
    log.row([0, "1.5"])
    checkpoint = log.sync()
    log.row([1, "1.25"])  # written after the checkpoint: lost with the crash
    log.close()
    log = CsvLog(path, ["iteration", "loss"], resume_bytes=checkpoint)
    assert not log.fresh
    log.row([1, "1.0"])
    log.close()
    assert list(csv.reader(io.StringIO(path.read_text()))) == [["iteration", "loss"], ["0", "1.5"], ["1", "1.0"]]


def test_a_log_with_late_columns_and_a_disabled_log(tmp_path) -> None:
    log = CsvLog(tmp_path / "late.csv", None)
    log.header(["a", "b"])
    log.row([1, 2])
    log.close()
    assert (tmp_path / "late.csv").read_bytes() == b"a,b\r\n1,2\r\n"
    off = CsvLog(tmp_path / "off.csv", ["a"], enabled=False)
    off.row([1])
    assert off.sync() == 0 and not (tmp_path / "off.csv").exists()


def test_write_csv_writes_the_whole_log(tmp_path) -> None:
    write_csv(tmp_path / "log.csv", ["iteration", "lr"], [[0, "0.1"], [1, "0.05"]])
    assert (tmp_path / "log.csv").read_bytes() == b"iteration,lr\r\n0,0.1\r\n1,0.05\r\n"
