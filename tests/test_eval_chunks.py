"""bench/eval_chunks.py: which chunk files of a resumable evaluation count, and the paired comparison of two."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import eval_chunks  # noqa: E402


def write(out, lo, nll, name="k1000"):
    (out / name).mkdir(parents=True, exist_ok=True)
    nll = np.asarray(nll, np.float32)
    scores = {"nll": nll, "elbo": nll + 5, "kl": np.full_like(nll, 20), "distortion": nll - 15}
    eval_chunks.write_chunk(eval_chunks.chunk_path(out, name, lo), scores, seconds=2.0)


def test_a_short_chunk_does_not_count_for_a_longer_pass(tmp_path):
    """A --limit 30 run writes images 0-29 as chunk 0; a 250-image pass must not take that file as images 0-99."""
    write(tmp_path, 0, np.arange(30))
    assert eval_chunks.read_pass(tmp_path, "k1000", 30)[0]["nll"].tolist() == list(range(30))
    assert eval_chunks.read_pass(tmp_path, "k1000", 250) == ({}, 0.0)
    write(tmp_path, 0, np.arange(100))
    write(tmp_path, 200, np.arange(200, 250))  # after a gap: not read until chunk 100 is there
    scores, seconds = eval_chunks.read_pass(tmp_path, "k1000", 250)
    assert scores["nll"].tolist() == list(range(100)) and seconds == 2.0
    write(tmp_path, 100, np.arange(100, 200))
    scores, seconds = eval_chunks.read_pass(tmp_path, "k1000", 250)
    assert scores["nll"].tolist() == list(range(250)) and seconds == 6.0
    assert not list((tmp_path / "k1000").glob(".*")), "no temporary file left behind"
    # A shorter run reads the longer run's files as they are: its images of them, their share of the seconds.
    assert eval_chunks.read_chunk(eval_chunks.chunk_path(tmp_path, "k1000", 200), 20)["seconds"] == 0.8
    scores, seconds = eval_chunks.read_pass(tmp_path, "k1000", 120)
    assert scores["nll"].tolist() == list(range(120)) and seconds == pytest.approx(2.4)
    # Without a count (the paired comparison): every image written, the short last chunk included.
    assert eval_chunks.read_pass(tmp_path, "k1000")[0]["nll"].tolist() == list(range(250))


def test_the_paired_difference_and_its_standard_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    first = rng.normal(85, 20, 200)
    second = first - 0.3 + rng.normal(0, 0.1, 200)  # the same digits, a little better each
    for lo in (0, 100):
        write(tmp_path / "a", lo, first[lo:lo + 100])
        write(tmp_path / "b", lo, second[lo:lo + 100])
    write(tmp_path / "b", 200, second[:100])  # only the images both scored are compared
    eval_chunks.main([str(tmp_path / "a"), str(tmp_path / "b")])
    report = json.loads(capsys.readouterr().out)
    difference = second.astype(np.float32).astype(np.float64) - first.astype(np.float32).astype(np.float64)
    assert report["images"] == 200
    assert report["nll"]["difference"] == pytest.approx(difference.mean(), abs=1e-9)
    assert report["nll"]["difference_standard_error"] == pytest.approx(difference.std(ddof=1) / np.sqrt(200))
    assert report["nll"]["difference_standard_error"] < 0.01 < 20 / np.sqrt(200)  # pairing removes the spread
    assert report["elbo"]["difference"] == pytest.approx(report["nll"]["difference"], abs=1e-5)
    assert eval_chunks.paired(*(eval_chunks.read_pass(tmp_path / d, "k1000", 10_000)[0] for d in "ab"),
                              images=50)["images"] == 50
    with pytest.raises(SystemExit, match="at least 2"):
        eval_chunks.main([str(tmp_path / "a"), str(tmp_path / "empty")])
