"""`clipvip demo --quick`: it completes, writes every table, a loadable model and a working search index.

The demo runs once per module (a module-scoped fixture running the real CLI); the checks then read its
files. Independent references: the JSON tables are checked for structure and for values that must hold
whatever the training did (ranks within bounds, chance level from the split size, frame mean pooling at
exactly chance order accuracy on exact-reversal twins); search is checked through `clipvip.load` + the
index on disk, not through the evaluation that produced the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

DIRECTIONS = ("t2v", "v2t", "t2v_dsl", "v2t_dsl")
METRICS = ("R1", "R5", "R10", "MdR", "MnR")


slow = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipvip.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    # --jobs 2: the training runs go to worker processes whatever the machine (the default follows the CPUs)
    status = main(["demo", "--quick", "--out", str(out), "--no-progress", "--jobs", "2"])
    assert status == 0
    return out


@pytest.fixture(scope="module")
def results(demo_out: Path) -> dict:
    return json.loads((demo_out / "results.json").read_text())


def _check_metrics(m: dict, n_videos: int) -> None:
    for d in DIRECTIONS:
        assert set(METRICS) <= set(m[d]), d
        assert 0.0 <= m[d]["R1"] <= m[d]["R5"] <= m[d]["R10"] <= 100.0
        assert 1.0 <= m[d]["MdR"] and 1.0 <= m[d]["MnR"]
    assert m["t2v"]["MdR"] <= n_videos  # a text can only rank among the test videos


@slow
def test_results_hold_every_table(results: dict) -> None:
    from clipvip.demo.report import TABLES

    for table in TABLES:
        assert table in results, f"results.json lacks the {table!r} table"
    n = results["world"]["test_videos"]
    assert results["chance_R1"] == pytest.approx(100.0 / n, abs=0.01)
    for name, row in results["main"]["rows"].items():
        _check_metrics(row, n)
    assert set(results["attention_ablation"]) == {"frame", "full", "proxy"}
    for row in results["attention_ablation"].values():
        _check_metrics(row["test"], n)
        assert 0.0 <= row["test"]["order"]["acc"] <= 100.0
    assert set(results["ocl_ablation"]) == {"a", "b", "c", "d"}
    for row in results["ocl_ablation"].values():
        _check_metrics(row["zero_shot_test"], n)
        _check_metrics(row["finetuned_test"], n)
    assert len(results["aux_caption_ablation"]) == 2
    for entry in results["domain_gap"].values():
        names = entry["names"]
        assert names == ["subtitles", "auxiliary captions", "downstream captions"]
        matrix = entry["matrix"]
        assert len(matrix) == 3 and all(len(r) == 3 for r in matrix)
        for i in range(3):
            for j in range(3):
                if matrix[i][j] is not None:
                    assert 0.0 <= matrix[i][j] <= 1.0
                    assert matrix[i][j] == pytest.approx(matrix[j][i])
    assert results["timings"]["total_s"] > 0


@slow
def test_main_model_beats_chance(results: dict) -> None:
    final = results["main"]["final"]
    assert final["t2v"]["R1"] > 3 * results["chance_R1"]
    assert final["t2v"]["R5"] > 3 * min(100.0, 5 * results["chance_R1"]) / 2


@slow
def test_report_plots_and_model_written(demo_out: Path, results: dict) -> None:
    report = (demo_out / "report.md").read_text()
    for heading in ("## Main results", "## Ablation: attention", "## Ablation: OCL variants",
                    "## Ablation: auxiliary captions", "## Language domain gap", "## Timings"):
        assert heading in report
    for name in ("val_r1.png", "nmi_stage0.png", "nmi_final.png", "retrieval_sheet.png"):
        png = demo_out / "plots" / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (demo_out / "model" / "config.json").is_file()
    assert (demo_out / "model" / "model.safetensors").is_file()


@slow
def test_text_query_returns_matching_video_first(demo_out: Path, results: dict) -> None:
    """Query the demo's index with the test captions through the saved model (``clipvip.load``): the
    matching synthetic video comes first for some captions, and far more often than chance."""
    from clipvip.demo.world import read_records, record_texts
    from clipvip.search.service import SearchService

    service = SearchService(demo_out / "index")
    assert len(service) == results["world"]["test_videos"]
    records = read_records(demo_out / "world" / "test.jsonl")
    hits = total = 0
    first_hit = None
    for rec in records:
        expected = Path(rec["video"]).name
        for text in record_texts(rec):
            top = service.search(text, k=3)
            total += 1
            if top[0]["path"] == expected:
                hits += 1
                first_hit = first_hit or (text, expected)
    assert first_hit is not None, "no test caption returned its own video first"
    assert 100.0 * hits / total > 3 * results["chance_R1"]
    # the CLI answers the same query with the same first video
    from clipvip.cli import main

    text, expected = first_hit
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["search", str(demo_out / "index"), text, "-k", "1", "--json"]) == 0
    assert expected in buf.getvalue()


@slow
def test_saved_model_reloads_with_same_scores(demo_out: Path) -> None:
    """``clipvip.load(out/model)`` embeds the same test video the same way twice and the index holds it."""
    import numpy as np

    from clipvip.pipeline import load
    from clipvip.search.store import read_snapshot

    snap = read_snapshot(demo_out / "index")
    pipe = load(str(demo_out / "model"), device="cpu")
    assert pipe.model_id == snap.model_id
    video = snap.videos[0]
    assert snap.offsets[1] - snap.offsets[0] == 1  # a short clip is one window over all of it
    res = pipe.encode_video_files([str(snap.video_root / video.path.decode())])
    assert not res.failures
    np.testing.assert_allclose(np.asarray(res.embeddings)[0], np.asarray(snap.vectors[snap.slots[0]]), atol=1e-5)


# ---------------------------------------------------------------------------------------------- fast unit tests
@slow
def test_attention_section_has_per_seed_lists(results: dict) -> None:
    """results.json ``attention``: the documented schema, one value per seed for every mode and metric, in
    percent; frame mean pooling cannot see order on exact-reversal twins, so its order accuracy is 50."""
    att = results["attention"]
    seeds = att["seeds"]
    assert seeds == [0, 1]  # --quick: 2 seeds, from --seed (default 0)
    assert set(att["modes"]) == {"frame", "full", "proxy"}
    for mode, entry in att["modes"].items():
        assert set(entry) >= {"t2v_R1", "v2t_R1", "order_acc", "pair_R1"}, mode
        for key in ("t2v_R1", "v2t_R1", "order_acc", "pair_R1"):
            values = entry[key]
            assert isinstance(values, list) and len(values) == len(seeds), (mode, key)
            assert all(0.0 <= v <= 100.0 for v in values), (mode, key)
        # order-blind retrieval is never below ordinary R@1
        assert all(p >= t for p, t in zip(entry["pair_R1"], entry["t2v_R1"]))
    assert all(abs(v - 50.0) <= 1.0 for v in att["modes"]["frame"]["order_acc"])
    # the main model is the proxy run of the first seed
    assert results["main"]["final"]["t2v"]["R1"] == att["modes"]["proxy"]["t2v_R1"][0]


@slow
def test_a_worker_run_equals_the_same_run_in_this_process(demo_out: Path, results: dict) -> None:
    """The demo ran its training runs in 2 worker processes; re-running one job (OCL variant a: a
    post-pretraining then a fine-tune) here, in this process, gives the same numbers, so results do not
    depend on ``--jobs``."""
    import torch

    from clipvip.demo.jobs import run_job
    from clipvip.demo.run import Runner, ocl_job
    from clipvip.demo.settings import QUICK
    from clipvip.demo.world import open_world, world_at

    assert results["demo"]["machine"]["jobs"] == 2 and results["timings"]["jobs"] == 2
    runner = Runner(demo_out, QUICK, open_world(world_at(demo_out / "world"), QUICK), progress=False)
    seed = results["demo"]["seed"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo's workers (--threads 1): the same float reduction order
    try:
        pre, fine = run_job(runner, ocl_job(QUICK, demo_out / "runs" / "init" / "stage1", "a", seed,
                                            prefix="recheck_ocl"))
    finally:
        torch.set_num_threads(threads)
    row = results["ocl_ablation"]["a"]
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731 - what results.json holds
    assert as_json(pre["test"]) == row["zero_shot_test"]
    assert as_json(fine["test"]) == row["finetuned_test"]
    assert pre["final_loss"] == row["final_loss"]


def test_demo_runs_use_the_library_trainer() -> None:
    """The demo's private step loop is gone: its runs are ``clipvip.train`` recipes."""
    import importlib.util
    from pathlib import Path

    import clipvip.demo.run as run
    from clipvip.demo.settings import QUICK
    from clipvip.train.config import TrainConfig

    assert importlib.util.find_spec("clipvip.demo.engine") is None
    world = type("W", (), {"tokenizer": _Tok(), "tokenizer_dir": Path("tok")})()
    runner = run.Runner(Path("/nonexistent"), QUICK, world, progress=False)
    cfg = runner.recipe("x", init=Path("init"), task="retrieval", train=Path("train.jsonl"), steps=7, lr=1e-3,
                        seed=3, attention="frame", lr_mult=QUICK.lr_mult)
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.group_by == "twin" and cfg.data.cache == "memory" and cfg.data.sampling == "uniform"
    assert cfg.optim.lr_mult == dict(QUICK.lr_mult) and cfg.optim.max_steps == 7
    assert cfg.model.attention == "frame" and cfg.run.seed == 3


class _Tok:
    """Just what ``model_config`` reads from a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 50


def test_inflated_model_matches_image_model_in_frame_mode() -> None:
    """Inflation copies every CLIP weight: in `frame` mode (no proxies, no temporal table) the video model
    is the image model applied per frame, so both give identical features; texts are identical too."""
    import torch

    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP
    from clipvip.weights import inflate

    image_cfg = CLIPViPConfig.from_name("clipvip-tiny", num_proxies=1, temporal_size=4,
                                       text={"vocab_size": 300, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    image = CLIPViP(image_cfg).eval()
    video = inflate(image.state_dict(), image_cfg.replace(num_proxies=4)).eval()
    assert video.vision_model.embeddings.added_cls.shape[0] == 3
    assert torch.count_nonzero(video.vision_model.embeddings.temporal_embedding) == 0
    x = torch.randn(2, 4, 3, 32, 32)
    ids = torch.randint(0, 299, (2, 7))
    with torch.no_grad():
        image.set_attention("frame")
        video.set_attention("frame")
        torch.testing.assert_close(video.encode_video(x), image.encode_video(x))
        torch.testing.assert_close(video.encode_text(ids), image.encode_text(ids))


def test_world_at_names_the_missing_file(tmp_path: Path) -> None:
    from clipvip.demo.world import world_at

    with pytest.raises(FileNotFoundError, match=r"train\.jsonl: missing"):
        world_at(tmp_path)


def test_demo_refuses_zero_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipvip.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@slow
def test_sigterm_stops_the_demo_and_its_worker_processes(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) during the training runs: the demo exits 130 within seconds and leaves no worker
    process behind (an orphan would go on writing into runs/)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "clipvip", "demo", "--quick", "--out", str(tmp_path / "out"),
                             "--no-progress", "--jobs", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
        workers = [int(x) for x in out.stdout.split()]
    assert len(workers) == 2, "the demo did not start its 2 worker processes"
    time.sleep(8)  # into stage 0 or the training runs
    assert proc.poll() is None, "the demo ended before it could be stopped"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:]
    assert time.monotonic() - t0 < 30
    assert "interrupted" in out
    time.sleep(1)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_run_demo_refuses_zero_jobs(tmp_path: Path) -> None:
    """``jobs=0`` is an error, not "the default" (0 is falsy), and nothing is written."""
    from clipvip.demo import run_demo

    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_demo(tmp_path / "out", quick=True, jobs=0)
    assert not (tmp_path / "out").exists()
