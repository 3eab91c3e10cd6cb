"""The solver table: registry, NFE accounting, caching, formatting, script flags and the CLI subcommand."""

import pytest

import fastsample.solvers
from fastsample.zoo.gmm import GaussianMixture
from fastsample.zoo.solver_table import (
    DIFFUSERS_ENTRIES,
    QUICK_ROWS,
    SolverEntry,
    default_entries,
    format_markdown,
    run_mixture_sensitivity,
    run_solver_table,
)


def _entry(name):
    return next(e for e in DIFFUSERS_ENTRIES if e.name == name)


def test_solver_entry_validation():
    with pytest.raises(ValueError, match="family"):
        SolverEntry("x", "ve", lambda config: None)
    with pytest.raises(ValueError, match="name"):
        SolverEntry("", "vp", lambda config: None)
    with pytest.raises(TypeError, match="callable"):
        SolverEntry("x", "vp", None)


def test_registry_covers_the_brief_and_appends_fastsample_rows():
    names = {e.name for e in DIFFUSERS_ENTRIES}
    assert {"Euler", "PNDM/PLMS", "DPM++2M", "DPM++2M Karras", "UniPC-2 bh2", "DEIS-2", "DDIM"} <= names
    assert {e.name for e in DIFFUSERS_ENTRIES if e.family == "flow"} == {
        "FlowMatch Euler",
        "DPM++2M flow",
        "UniPC-2 bh2 flow",
    }
    assert set(QUICK_ROWS) <= names
    entries = default_entries()
    assert entries[: len(DIFFUSERS_ENTRIES)] == list(DIFFUSERS_ENTRIES)
    if hasattr(fastsample.solvers, "benchmark_entries"):
        extra = entries[len(DIFFUSERS_ENTRIES) :]
        assert len(extra) == len(fastsample.solvers.benchmark_entries()) > 0
        assert all(e.source for e in extra)


def test_table_accounts_nfe_caches_references_and_formats():
    mixture = GaussianMixture.random(seed=1)
    heun = SolverEntry(
        "Heun", "vp", lambda config: __import__("diffusers").HeunDiscreteScheduler.from_config(config)
    )
    entries = [_entry("PNDM/PLMS"), _entry("DPM++2M"), _entry("UniPC-2 bh2"), heun]
    table = run_solver_table(
        entries, nfe_values=(5, 8), guidance_scales=(7.5,), num_samples=64, mixture=mixture, progress=False
    )
    for name in ("PNDM/PLMS", "DPM++2M", "UniPC-2 bh2"):
        for nfe in (5, 8):
            assert table.cell(name, nfe, 7.5).metrics.nfe == nfe  # PLMS runs 4 and 7 steps
    # DPM++2M and UniPC share start (t=999) and end (σ̄=0); PLMS's leading grid starts elsewhere at each NFE
    assert table.num_references == 2 + 2
    assert table.cell("Heun", 8, 7.5).metrics is None  # Heun makes 2N − 1 calls: no N gives NFE 8
    assert table.cell("Heun", 5, 7.5).metrics.nfe == 5
    pndm = table.cell("PNDM/PLMS", 5, 7.5).metrics
    assert pndm.blowup_rate > 0.5  # solvers.md §5.2: PLMS diverges at NFE 5, w = 7.5
    text = format_markdown(table, "pytest")
    assert "| PNDM/PLMS | diffusers |" in text and "w=7.5 NFE 8" in text and "- command: `pytest`" in text
    assert "n/a" in text and "Cells that could not run" in text
    assert "| PNDM/PLMS | 5 | 7.5 | 5.77 (99.0%) |" in text  # comparison with the notes
    assert "| PNDM/PLMS | 5 | 0 |" not in text  # w = 0 was not run
    assert "custom mixture" in text


def test_quick_script_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "solvers.md"
    from fastsample.cli import main

    assert main(["solver-table", "--quick", "--samples", "24", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == out.read_text().strip()
    assert "--quick --samples 24" in printed and "diffusers 0." in printed and "24 samples" in printed
    for row in QUICK_ROWS:
        assert f"| {row} | diffusers |" in printed
    assert "w=7.5 NFE 10" in printed and "w=15" not in printed
    assert "## Flow matching: SD3 schedule: median error" in printed
    assert "## Comparison with docs/design/solvers.md#reading-the-table" in printed


def test_cli_subcommand_has_the_script_flags():
    from fastsample.cli import build_parser, solver_table

    parser = build_parser()
    args = parser.parse_args(["solver-table", "--quick", "--samples", "10", "--seed", "3", "--out", "x.md"])
    assert args.func is solver_table.run
    assert (args.quick, args.samples, args.seed, args.out, args.mixture_seed) == (True, 10, 3, "x.md", 0)
    assert args.labels == "uniform" and args.sensitivity is None
    args = parser.parse_args(["solver-table", "--labels", "prior", "--sensitivity", "0,1"])
    assert (args.labels, args.sensitivity) == ("prior", "0,1")
    with pytest.raises(SystemExit):
        parser.parse_args(["solver-table", "--samples", "many"])


def test_mixture_sensitivity_section():
    mixture = GaussianMixture.random(seed=1)
    table = run_solver_table(
        [_entry("PNDM/PLMS")],
        nfe_values=(8,),
        guidance_scales=(15.0,),
        num_samples=32,
        mixture=mixture,
        progress=False,
    )
    cells = (("PNDM/PLMS", 8, 15.0),)
    table.extra["sensitivity_seeds"] = [1, 2]
    table.extra["sensitivity"] = run_mixture_sensitivity([1, 2], cells, num_samples=32, progress=False)
    same = table.extra["sensitivity"][cells[0]][0]  # seed 1 is the table's mixture: identical numbers
    assert same.median_error == table.cell("PNDM/PLMS", 8, 15.0).metrics.median_error
    text = format_markdown(table)
    assert "## Sensitivity to the mixture draw" in text and "| PNDM/PLMS | 8 | 15 | " in text
    assert "48.7 (100.0%)" in text.split("## Sensitivity")[1]
    with pytest.raises(ValueError, match="unknown rows"):
        run_mixture_sensitivity([0], (("GHVB", 5, 1.0),))
