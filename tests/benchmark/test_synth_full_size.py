"""``ssl-bench data synth --full-size``: the real datasets' counts, splits and resolutions."""

from __future__ import annotations

import benchmark.datasets.synth_places as synth_places
import benchmark.datasets.synth_voc as synth_voc
from benchmark.cli import main


def test_voc07_full_size_has_the_real_split_sizes(tmp_path, monkeypatch, capsys):
    calls = {}

    def record(out, **kwargs):
        calls.update(kwargs)
        return out

    monkeypatch.setattr(synth_voc, "synth_voc07", record)
    assert main(["data", "synth", "voc07", "--out", str(tmp_path), "--full-size"]) == 0
    assert calls["n_images"] == 9963 and (calls["min_side"], calls["max_side"]) == (333, 500)
    splits = synth_voc._split_ids(calls["n_images"], calls["test_fraction"])
    assert (len(splits["trainval"]), len(splits["test"])) == (5011, 4952)  # VOC2007's own counts
    assert "wrote 9963 images" in capsys.readouterr().out


def test_places205_full_size_has_205_scenes_at_256_pixels(tmp_path, monkeypatch, capsys):
    calls = {}

    def record(out, **kwargs):
        calls.update(kwargs)
        return out

    monkeypatch.setattr(synth_places, "synth_places205", record)
    assert main(["data", "synth", "places205", "--out", str(tmp_path), "--full-size", "--per-class", "20"]) == 0
    assert calls == {"num_classes": 205, "train_per_class": 20, "val_per_class": 100, "seed": 0,
                     "min_side": 256, "max_side": 256}
    assert "wrote 205 classes x (20 train + 100 val)" in capsys.readouterr().out
    assert len(set(synth_places.scene_names(205))) == 205
