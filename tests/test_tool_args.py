"""The GPU tools' command lines (tile search, probe, host cost): bad input is one line, exit 2, before any compiling,
timing or patching -- and before their CUDA check, so a CPU checks them."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("triton", reason="the Triton cells' tools need triton (a dependency on Linux)")

from cells.triton_lstm import hostcost, probe, tune  # noqa: E402


def _refused(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("rnnbench: error:"), (argv, err)
    assert "CUDA" not in err, err  # refused before the CUDA check
    return err


@pytest.mark.parametrize("main", [tune.main, probe.main], ids=["tune", "probe"])
def test_the_search_and_the_probe_check_their_arguments_first(main, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, says in ((["--reps", "0"], "--reps: expected a positive integer, got '0'"),
                       (["--reps", "-2"], "--reps: expected a positive integer"),
                       (["--presets", ""], "no preset named (''); choose from small, medium, large"),
                       (["--dtypes", ","], "no dtype named (','); choose from float32, bfloat16"),
                       (["--presets", "medium,huge"], "unknown preset huge; choose from small, medium, large"),
                       (["--dtypes", "float16"], "unknown dtype float16; choose from float32, bfloat16"),
                       (["--json", str(tmp_path / "missing" / "t.json")], "missing is not a folder"),
                       (["--json", str(afile / "t.json")], "afile is not a folder"),
                       (["--json", str(tmp_path)], "is a folder")):
        assert says in _refused(main, argv, capsys), argv
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_the_search_takes_its_searches_as_cell_preset_dtype(capsys):
    """--searches: the searches to run, in order, each CELL:PRESET:DTYPE; in place of --presets, --dtypes, --cell."""
    assert tune._searches("triton_gru:large:float32,triton_lstm:medium:bfloat16") == [
        ("triton_gru", "large", "float32"), ("triton_lstm", "medium", "bfloat16")]
    for value, says in (("triton_lstm:large", "'triton_lstm:large' is not CELL:PRESET:DTYPE"),
                        ("", "'' is not CELL:PRESET:DTYPE"),
                        ("triton_lstm:huge:float32", "unknown preset huge; choose from small, medium, large"),
                        ("cudnn_lstm:large:float32", "unknown cell cudnn_lstm; choose from triton_lstm, triton_gru"),
                        ("triton_lstm:large:float16", "unknown dtype float16"),
                        ("triton_lstm:large:float32,triton_lstm:large:float32", "a search named twice")):
        assert says in _refused(tune.main, ["--searches", value], capsys), value
    for other in (["--presets", "large"], ["--dtypes", "float32"], ["--cell", "triton_gru"]):
        assert "give it without --presets, --dtypes, --cell" in _refused(
            tune.main, ["--searches", "triton_lstm:large:float32", *other], capsys), other


def test_the_search_takes_a_positive_finite_time_limit(capsys):
    for limit in ("-5", "0", "inf", "nan", "soon"):
        assert "--time-limit: expected a positive number of seconds" in _refused(
            tune.main, ["--time-limit", limit], capsys)


def test_hostcost_checks_its_arguments_before_patching_anything(capsys):
    import torch

    mm = torch.mm
    for argv, says in ((["--hidden", "abc"], "--hidden: expected a positive integer, got 'abc'"),
                       (["--hidden", "200,-5"], "--hidden: expected a positive integer, got '-5'"),
                       (["--calls", "0"], "--calls: expected a positive integer"),
                       (["--calls", "-3"], "--calls: expected a positive integer"),
                       (["--peak", "small", "--train"], "not allowed with argument --peak"),
                       (["--check-direct", "--peak", "small"], "not allowed with argument --check-direct"),
                       (["--train", "--check-direct"], "not allowed with argument --train")):
        err = _refused(hostcost.main, argv, capsys)
        assert says in err and "python -m cells.triton_lstm.hostcost:" in err, err
    assert torch.mm is mm  # nothing was patched
    assert hostcost._hidden("200,650") == [200, 650]
    calls = []
    r = hostcost._measure(lambda: calls.append(1), 3, {"launches": 0, "queries": 0})  # fewer calls than batches
    assert r["us"] >= 0 and len(calls) == 3 + 1 + 5


def test_the_matmul_measurement_checks_its_arguments_before_measuring(tmp_path, capsys):
    from bench import machine

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "unknown device 'bogus'" in _refused(machine.main, ["--device", "bogus"], capsys)
    assert "is not writable" in _refused(machine.main, ["--device", "cpu", "--results", str(afile)], capsys)


def test_a_hung_candidate_ends_the_search_and_says_so(monkeypatch):
    """A candidate whose kernels never return (a grid barrier never met) would hold the tile search -- and the GPU
    check's step -- until its limit: after HUNG_S the search records it as hung and ends the process (here a stand-in
    for os._exit), so the check's later steps keep their time."""
    import threading

    class Ended(BaseException):
        pass

    ended, recs, lines, timed = threading.Event(), [], [], []

    def passes(module, x, reps, graph=True):  # the first call times cuDNN; the first candidate's never returns
        timed.append(module)
        if len(timed) > 1:
            ended.wait(30)
            raise Ended
        return 1e-3, 2e-3, torch.zeros(1), torch.ones(1), 0, None

    monkeypatch.setattr(tune, "_passes", passes)
    monkeypatch.setattr(tune, "_record", lambda *a: [])
    monkeypatch.setattr(tune, "HUNG_S", 0.3)
    monkeypatch.setattr(tune, "end_process", lambda code: ended.set() if code == 3 else None)
    t0 = time.monotonic()
    with pytest.raises(Ended):
        tune.tune("small", torch.float32, 1, cell="triton_lstm", emit=recs.append, log=lines.append, device="cpu",
                  sms=132)
    assert ended.is_set() and time.monotonic() - t0 < 20
    assert len(recs) == 1 and recs[0]["error"] == "hung: no result after 0.3 s; the search ended here", recs
    assert recs[0]["preset"] == "small" and recs[0]["tile"] and "hung" in lines[-1]


def test_a_search_whose_time_limit_passes_while_its_kernels_compile_is_cut(monkeypatch):
    """The candidates' kernels compile in a pool ahead of their timing (precompile.Ahead); a candidate whose kernels
    are still compiling when the search's time limit passes is not timed (nor compiled in-line): the search is cut
    there, naming the best it timed."""
    from cells.triton_lstm import precompile

    def passes(module, x, reps, graph=True):
        return 1e-3, 2e-3, torch.zeros(1), torch.ones(1), 0, 1e-3

    waits = []

    def wait(self, key, timeout=None):  # the start's kernels are ready; the next candidate's take past the limit
        waits.append(timeout)
        if len(waits) > 1:
            time.sleep(timeout)
        return 0.0

    monkeypatch.setattr(tune, "_passes", passes)
    monkeypatch.setattr(tune, "_record", lambda *a: [])
    monkeypatch.setattr(precompile.Ahead, "wait", wait)
    recs, lines = [], []
    tune.tune("small", torch.float32, 1, cell="triton_lstm", emit=recs.append, log=lines.append, device="cpu",
              sms=132, fields=("num_stages",), deadline=time.monotonic() + 0.5)
    assert len(recs) == 1 and recs[0]["best"] and recs[0]["cut"], recs
    assert len(waits) == 2 and 0 < waits[1] <= 0.5 and "cut at the time limit" in lines[-1], (waits, lines)


def test_the_search_judges_a_tile_by_its_kernels_as_one_cuda_graph(monkeypatch):
    """Where a forward+backward is timed as one CUDA graph too, the search keeps a change by that time (the kernels'
    alone): an eager call whose host work outlasts its kernels -- small's on the H200, 2.84 ms eager where the whole LM
    step took 1.87 as a graph -- times the host, the same for every tile.  Both figures are recorded."""
    calls = []

    def passes(module, x, reps, graph=True):  # cuDNN first; the start (fast eagerly, slow kernels), then others
        calls.append(module)
        if len(calls) == 1:
            return 1e-3, 4e-3, torch.zeros(1), torch.ones(1), 0, 2e-3
        if len(calls) == 2:
            return 1e-3, 2e-3, torch.zeros(1), torch.ones(1), 0, 5e-3
        return 1e-3, 3e-3, torch.zeros(1), torch.ones(1), 0, 1e-3

    monkeypatch.setattr(tune, "_passes", passes)
    monkeypatch.setattr(tune, "_record", lambda *a: [])
    recs, lines = [], []
    tune.tune("small", torch.float32, 1, cell="triton_lstm", emit=recs.append, log=lines.append, device="cpu",
              sms=132, fields=("num_stages",))
    start, first = recs[0], recs[1]
    assert (start["fwdbwd_s"], start["fwdbwd_graph_s"], start["best"]) == (2e-3, 5e-3, False)
    assert (first["fwdbwd_s"], first["fwdbwd_graph_s"], first["best"]) == (3e-3, 1e-3, True)
    assert first["speedup_fwdbwd_graph"] == pytest.approx(2) and first["speedup_fwdbwd"] == pytest.approx(4 / 3)
    # the eager calls, for the record beside the graph that decides, timed a third as often (at least 3 times)
    assert (first["reps"], first["eager_reps"]) == (1, 1) and tune.eager_reps(15, True) == 5
    assert tune.eager_reps(15, False) == 15 and tune.eager_reps(6, True) == 3
    assert "as a graph   1.000 ms x 2.00" in lines[-2]
    assert "fwd+bwd as a CUDA graph 1.000 ms, cuDNN 2.000 ms" in lines[-1]
    # cuDNN's capture failing: the whole search by eager calls (one unit throughout), and says so
    real, calls[:] = passes, []

    def no_cudnn_graph(module, x, reps, graph=True):
        if not calls and graph:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        out = real(module, x, reps, graph)
        return (*out[:5], out[5] if graph else None)

    monkeypatch.setattr(tune, "_passes", no_cudnn_graph)
    recs, lines = [], []
    tune.tune("small", torch.float32, 1, cell="triton_lstm", emit=recs.append, log=lines.append, device="cpu",
              sms=132, fields=("num_stages",))
    assert "cuDNN's forward+backward as a CUDA graph failed (RuntimeError: CUDA error" in lines[0]
    assert "the search judges by eager calls" in lines[0]
    assert recs[0]["best"] and not any(r["best"] for r in recs[1:]) and "fwdbwd_graph_s" not in recs[0]


def test_a_gpu_the_tile_tables_are_not_for_is_not_searched():
    """On a GPU with fewer SMs than the tables were made for (an H100 PCIe's 114), every plan comes from the heuristic
    whatever the table holds (launch.plan_for): a search there would time one plan under many names.  It says so in
    a line and returns no record, so the GPU check's later steps keep the time."""
    lines = []
    assert tune.tune("medium", torch.float32, 1, log=lines.append, device="cpu", sms=114) == []
    assert lines == ["medium torch.float32 triton_lstm: not searched: the tile tables are for GPUs of at least 132 SMs "
                     "(H100 SXM, H200), this one has 114, and its plans come from the heuristic whatever the table "
                     "holds"]


def test_a_search_continued_after_a_hang_keeps_the_finished_and_never_times_the_hung(monkeypatch, tmp_path):
    """--after-hang (the GPU check runs a search again when it exited HUNG_EXIT): the file's searches that named their
    best are kept and not run again; the unfinished one runs again from its start, its earlier records dropped but the
    hung one, and the hung tile is not timed (nor compiled) again."""
    import dataclasses
    import json

    from cells.triton_lstm import launch

    start = tune.start_tile("LSTM", 200, torch.float32, 132)
    stages = [t for t in tune.candidates(start, 200, torch.float32, 132, "num_stages") if t != start]
    rec = {"cell": "triton_lstm", "dtype": "torch.float32"}
    records = [{**rec, "preset": "medium", "tile": {}, "fwdbwd_s": 1.0, "best": True},
               {**rec, "preset": "small", "tile": dataclasses.asdict(start), "fwdbwd_s": 2e-3, "best": False},
               {**rec, "preset": "small", "tile": dataclasses.asdict(stages[0]), "error": "hung: no result after 60 s"}]
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({"env": {}, "records": records}))
    everything, kept = tune.after_hang(str(path))
    assert everything == records and kept == [records[0], records[2]]
    assert tune.after_hang(str(tmp_path / "none.json")) == ([], []) == tune.after_hang(None)
    timed, warmed, lines = [], [], []

    def passes(module, x, reps, graph=True):
        timed.append(launch.tiles("LSTM").get((200, torch.float32)))
        return 1e-3, 2e-3, torch.zeros(1), torch.ones(1), 0, 1e-3

    monkeypatch.setattr(tune, "_passes", passes)
    monkeypatch.setattr(tune, "_record", lambda module, x, put, tile: warmed.append(tile) or [])
    assert tune.tune("medium", torch.float32, 1, log=lines.append, device="cpu", sms=132,
                     prior=tuple(records)) == []
    assert lines == ["medium torch.float32 triton_lstm: searched already (the --json file names its best)"]
    recs = tune.tune("small", torch.float32, 1, log=lines.append, device="cpu", sms=132, fields=("num_stages",),
                     prior=tuple(records))
    assert stages[0] not in timed[1:] and stages[0] not in warmed and start in warmed, (timed, warmed)
    assert f"small torch.float32 {tune.describe(stages[0])}: not timed: it hung in an earlier run" in lines
    assert [r["tile"] for r in recs] == [dataclasses.asdict(t) for t in [start, *stages[1:]]]


def test_the_command_line_continues_a_file_after_a_hang(monkeypatch, tmp_path):
    """tune --after-hang --json FILE: the file starts with its kept records (the finished searches', the hung ones)
    and every search is handed the file's records; without --after-hang the file starts empty and nothing is handed."""
    import json

    from lm import env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tune.launch, "runs_interpreted", lambda device: False)
    monkeypatch.setattr(env, "environment", lambda device: {"device_name": "GPU X"})
    handed = []

    def search(preset, dtype, reps, cell, emit, prior=(), **kwargs):
        handed.append((preset, len(prior)))
        emit({"cell": cell, "preset": preset, "dtype": str(dtype), "tile": {}, "fwdbwd_s": 1.0, "best": True})
        return []

    monkeypatch.setattr(tune, "tune", search)
    path = tmp_path / "tiles.json"
    done = {"cell": "triton_lstm", "preset": "medium", "dtype": "torch.float32", "tile": {}, "best": True}
    hung = {"cell": "triton_lstm", "preset": "large", "dtype": "torch.float32", "tile": {}, "error": "hung: ..."}
    gone = {"cell": "triton_lstm", "preset": "large", "dtype": "torch.float32", "tile": {}, "fwdbwd_s": 2.0}
    path.write_text(json.dumps({"env": {}, "records": [done, hung, gone]}))
    argv = ["--presets", "medium,large", "--dtypes", "float32", "--json", str(path)]
    assert tune.main([*argv, "--after-hang"]) == 0
    assert handed == [("medium", 3), ("large", 3)]
    records = json.loads(path.read_text())["records"]
    assert records[:2] == [done, hung] and gone not in records and len(records) == 4
    handed.clear()
    assert tune.main(argv) == 0
    assert handed == [("medium", 0), ("large", 0)] and len(json.loads(path.read_text())["records"]) == 2
