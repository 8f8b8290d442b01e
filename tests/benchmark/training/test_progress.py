"""Progress: a tqdm bar on a terminal; elsewhere plain lines (no carriage return) every 10 % or
every N seconds, and one at the end."""

from __future__ import annotations

import io

import torch
from tqdm import tqdm

from benchmark.training import LineProgress, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_every_tenth_then_none_at_close() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(200, "linear heads", stream=stream, every_seconds=1e9, clock=clock)
    for _ in range(200):
        clock.now += 0.5
        bar.update(1)
    bar.set_postfix(loss="0.123")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10
    assert lines[0] == "[linear heads] 20/200 it (10%), 2 it/s, about 2 min left"  # 180 it at 2 it/s
    assert lines[-1] == "[linear heads] 200/200 it (100%), 2 it/s"


def test_a_line_every_n_seconds_and_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(10_000, "pretrain simclr", initial=100, stream=stream, every_seconds=60, clock=clock)
    for _ in range(25):
        clock.now += 10
        bar.update(2)
        bar.set_postfix(loss="4.500")
    bar.close()
    lines = stream.getvalue().splitlines()
    # after 60 s, 120 s, 180 s, 240 s, and the last 10 s at close; rate counts this session only
    assert len(lines) == 5
    # 9888 it left at 0.2 it/s
    assert lines[0] == "[pretrain simclr] 112/10000 it (1%), 0.2 it/s, about 13.7 h left, loss=4.500"
    assert lines[-1].startswith("[pretrain simclr] 150/10000 it (2%)")


def test_the_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SSL_BENCH_PROGRESS_SECONDS", "5")
    assert LineProgress(10, "x", stream=io.StringIO()).every_seconds == 5.0
    monkeypatch.setenv("SSL_BENCH_PROGRESS_SECONDS", "often")
    assert LineProgress(10, "x", stream=io.StringIO()).every_seconds == 60.0


def test_terminal_gets_tqdm_pipe_gets_lines_disabled_gets_nothing() -> None:
    bar = progress(5, "x", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(5, "x", stream=io.StringIO()), LineProgress)
    silent_stream = io.StringIO()
    with progress(5, "x", stream=silent_stream, enabled=False) as silent:
        silent.update(5)
    assert silent_stream.getvalue() == ""


def test_feature_extraction_reports_plain_lines_when_not_on_a_terminal(tmp_path, capsys) -> None:
    from PIL import Image

    from benchmark.datasets.images import svm_transform
    from benchmark.features import extract_features
    from benchmark.models import FrozenBackbone, create_model
    from benchmark.models.backbone import get_architecture

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(paths[-1])
    backbone = FrozenBackbone(get_architecture("resnet18"), create_model("resnet18", seed=0))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_features(backbone, paths, ["pool5"], svm_transform(32)[0], device=torch.device("cpu"), batch_size=2,
                         num_workers=0, desc="voc07/test pool5")
    finally:
        torch.set_num_threads(previous)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines()] == ["[voc07/test pool5] 2/4 img (50%)",
                                                                  "[voc07/test pool5] 4/4 img (100%)"]
