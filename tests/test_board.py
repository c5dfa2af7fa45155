"""ce-bench sweep / leaderboard / regress on results files written by real runs of the embedded
model (the tiny sweep of conftest's `sweep` fixture: the unedited model, a steering vector chosen
on the validation split, a GRACE edit stream), plus the regression gate's rules on edited copies
of a real results file."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ce_bench.board.leaderboard import SELECTION, build_board, to_markdown, write_board
from ce_bench.board.regress import FAIL, PASS, UNUSABLE
from ce_bench.board.runs import GENERAL, UNEDITED, BoardError, load_runs, read_run
from ce_bench.board.sweep import Sweep, SweepConfig, SweepConfigError
from ce_bench.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(sweep):  # type: ignore[no-untyped-def]
    return load_runs([sweep[0].out / "runs"])


def test_restarted_sweep_runs_only_the_cells_the_killed_one_had_not_finished(sweep) -> None:
    config, first, second = sweep
    # unedited, 2 validation strengths, the test cell, grace T=1
    assert len(first) == 2 and len(second) == 3
    assert not {c.fingerprint for c in first} & {c.fingerprint for c in second}
    assert all(c.finished(config.out) for c in first + second)
    third = Sweep(config)
    third.run()
    assert not third.ran and len(third.skipped) == 5  # a third run has nothing to do


def test_sweep_reports_the_test_split_at_the_strength_chosen_on_validation(runs) -> None:
    concept = [r for r in runs if "concept_emotion_anger" in r.scores]
    validation = {r.strength: r for r in concept if r.split == "validation"}
    (test,) = [r for r in concept if r.split == "test"]
    assert set(validation) == {"0.5", "8"}
    best = max(
        validation.values(),
        key=lambda r: (
            r.scores["concept_emotion_anger"]["degenerate_rate"].value <= 0.5,
            r.scores["concept_emotion_anger"].get("success_rate", _nan()).value,
            -float(r.strength),
        ),
    )
    assert test.strength == best.strength
    # the test cell also measured the side effects, with the general tasks' own limit
    (side,) = [r for r in runs if r.path.parents[1] == test.path.parents[1] and r is not test]
    assert (side.strength, side.samples["ce_mini_arc_easy"]) == (test.strength, 3)
    assert test.samples["concept_emotion_anger"] == 2


def _nan():  # type: ignore[no-untyped-def]
    from ce_bench.board.runs import Score

    return Score(float("-inf"))


def test_runs_are_described_by_method_layer_target_strength(runs) -> None:
    by_method = {r.method: r for r in runs if r.split != "validation"}
    assert set(by_method) == {UNEDITED, "steering", "grace"}
    steer, grace = by_method["steering"], by_method["grace"]
    assert (steer.base_model, steer.layer, steer.target) == ("smollm2-135m", "27", "anger")
    assert (grace.target, grace.strength, grace.settings) == ("zsre", "1", "eval_at=end")
    assert by_method[UNEDITED].base_model == "smollm2-135m"


def test_board_shows_deltas_from_the_unedited_run_and_from_paired_base_values(runs) -> None:
    sections = {s.title: s for s in build_board(runs)}
    selection = f"Concept editing: {SELECTION}"
    assert list(sections) == ["Concept editing", selection, "Lifelong editing", GENERAL]
    assert {r.run.split for r in sections["Concept editing"].rows} == {"test"}
    assert {r.run.split for r in sections[selection].rows} == {"validation"}
    general = sections[GENERAL]
    unedited = next(r for r in general.rows if not r.run.edited)
    base = unedited.cells["ce_mini_arc_easy acc"].score.value
    for row in general.rows:
        cell = row.cells["ce_mini_arc_easy acc"]
        if row.run.edited:
            assert cell.delta == pytest.approx(cell.score.value - base)
            assert cell.score.stderr is not None
        else:
            assert cell.delta is None
    (lifelong,) = sections["Lifelong editing"].rows
    rel = lifelong.cells["rel"]
    assert rel.base == lifelong.run.scores["zsre_lifelong"]["rel"].base is not None


def test_board_gives_each_methods_cost_and_a_quality_vs_cost_plot(runs, tmp_path) -> None:
    sections = {s.title: s for s in build_board(runs)}
    (steering,) = sections["Concept editing"].costs
    assert steering.method == "steering L27" and steering.runs == 1
    assert steering.wall_s > 0 and steering.locate_s > 0 and steering.peak_mb > 0
    assert steering.overhead > 0  # the concept task generates both halves of each prompt
    (grace,) = sections["Lifelong editing"].costs
    assert grace.s_per_edit > 0 and grace.locate_s is None
    files = write_board(list(sections.values()), tmp_path)
    assert files["concept-editing_quality_vs_cost"].read_bytes()[:4] == b"\x89PNG"
    assert "| steering L27 | 1 |" in files["markdown"].read_text()
    assert "s/edit" in files["html"].read_text()


def test_a_sweep_reports_its_compute_per_method(sweep) -> None:
    compute = (sweep[0].out / "compute.md").read_text()
    table = [line for line in compute.splitlines() if line.startswith("| ") and "---" not in line]
    table = table[1:]  # below the header
    rows = {line.split(" | ")[0].strip("| "): line for line in table}
    assert set(rows) == {"grace", "steering", "unedited"}
    assert rows["steering"].startswith("| steering | 3 |")  # two validation cells, the test


def test_leaderboard_command_writes_markdown_html_json_and_plots(sweep, tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["leaderboard", str(sweep[0].out / "runs"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "General ability" in result.output and "steering L27 anger" in result.output
    plots = ("concept-editing_dose_response.png", "general-ability_side_effects.png")
    for name in ("board.md", "board.html", "board.json", *plots):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "general-ability_side_effects.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "board.md").read_text()
    assert "## Concept editing" in markdown and "| smollm2-135m | grace | 25 | zsre |" in markdown


def test_html_board_reads_at_1366_px_with_each_familys_summary_in_chromium(runs, tmp_path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    sections = build_board(runs)
    files = write_board(sections, tmp_path)
    measure = "<script>document.body.dataset.width = document.documentElement.scrollWidth</script>"
    probe = tmp_path / "probe.html"
    probe.write_text(files["html"].read_text().replace("</body>", measure + "</body>"))
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1366,768",
         "--disable-background-networking", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert 'data-ready="yes"' in dom, "the page's script did not run to its end"
    width = re.search(r'data-width="(\d+)"', dom)
    assert width and int(width.group(1)) <= 1366, "the page scrolls sideways at 1366 px"
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        """Each table's class and, per body row, its cells' text (or data-v where given)."""

        def __init__(self) -> None:
            super().__init__()
            self.tables: list[tuple[str, list[list[str]]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
            found = dict(attrs)
            if tag == "table":
                self.tables.append((found.get("class") or "summary", []))
            elif tag == "tr":
                self.tables[-1][1].append([])
            elif tag in ("td", "th"):
                self.cell = [found["data-v"]] if "data-v" in found else []

        def handle_data(self, data: str) -> None:
            if self.cell is not None and data.strip():
                self.cell.append(data.strip())

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][1][-1].append(self.cell[0] if self.cell else "")
                self.cell = None

    parser = Tables()
    parser.feed(dom)
    summaries = [rows for kind, rows in parser.tables if kind == "summary"]
    families = [s for s in sections if s.title == s.family]
    assert len(summaries) == len(families)
    costs = [rows for kind, rows in parser.tables if kind == "cost"]
    assert [row[0] for rows in costs for row in rows[1:]] == [
        c.method for s in families for c in s.costs
    ]
    for rows, section in zip(summaries, families, strict=True):  # header, unedited, methods
        names = [row[0] for row in rows[1:]]
        expected = list(section.summary.rows)
        assert names in (expected, ["unedited", *expected]), section.title
    general = [rows for kind, rows in parser.tables if kind == "full"][-1]
    rank = len(sections[-1].identity_columns())
    values = [float(row[rank]) for row in general[2:]]  # below the header and pinned unedited
    assert values == sorted(values, reverse=True)


def _run(method: str, target: str, value: float, settings: str = "", strength: str = "1"):  # type: ignore[no-untyped-def]
    """A synthetic erasure run: acc with stderr 0.02 and its unedited value 1.0 beside it."""
    from ce_bench.board.runs import Run, Score

    score = Score(value, 0.02, True, base=1.0, base_stderr=0.0)
    return Run(
        Path(f"/nowhere/{method}{settings}{target}.json"), "m", method, "28", target, strength,
        settings, "", "", method + settings + target, "", {"erasure_sst2": {"acc": score}},
    )  # fmt: skip


def test_summary_puts_methods_down_targets_across_and_bolds_only_leaders_the_data_supports():
    runs = [
        _run("ranges", "negative", 0.90, "gate=always tau=2.5"),
        _run("ranges", "negative", 0.88, "gate=range tau=2.5"),
        _run("ranges", "positive", 0.40, "gate=always tau=2.5"),
        _run("ranges", "positive", 0.41, "gate=range tau=2.5"),
        _run("neurons", "negative", 0.30),
        _run("neurons", "positive", 0.42),
    ]
    (section,) = build_board(runs)
    summary = section.summary
    assert summary.columns == ["negative", "positive"]  # the targets, methods named without
    assert list(summary.rows) == ["neurons L28", "ranges L28 gate=always", "ranges L28 gate=range"]
    assert summary.unedited == {"negative": 1.0, "positive": 1.0}
    # negative: the two range gates tie (0.02 apart, stderr 0.02), both beat the neurons
    assert {m for m, c in summary.leaders if c == "negative"} == {
        "ranges L28 gate=always",
        "ranges L28 gate=range",
    }
    assert not {m for m, c in summary.leaders if c == "positive"}  # nobody stands out: no bold


def test_reading_a_file_that_is_not_lm_eval_results_names_it(tmp_path) -> None:
    bad = tmp_path / "results_x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(BoardError, match="results_x.json: not an lm-eval results file"):
        read_run(bad)
    with pytest.raises(BoardError, match="no lm-eval results file"):
        load_runs([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_sweep_checks_every_name_and_path_before_running_anything(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "general_tasks: [ce_mini_arc_easy, no_such_task]\n"
        "concept: {methods: [steering, telepathy], layers: [27], concepts: [anger, boredom]}\n"
        f"artifacts: [{{path: {tmp_path / 'missing'}, tasks: [erasure_sst2]}}]\n"
        "lifelong: {editors: ['grace:eps=x'], num_edits: [1]}\n"
    )
    sweep = Sweep(SweepConfig.from_yaml(path, out=tmp_path / "out"))
    with pytest.raises(SweepConfigError) as err:
        sweep.run()
    message = str(err.value)
    for expected in ("'telepathy'", "'boredom'", "missing", "'no_such_task'", "grace"):
        assert expected in message, expected
    assert not (tmp_path / "out").exists()


def test_sweep_config_with_an_unknown_key_is_an_error_naming_it(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: smollm2-135m\nconcept:\n  methods: [steering]\n  layer: [27]\n")
    with pytest.raises(SweepConfigError, match="concept: unknown key"):
        SweepConfig.from_yaml(path)
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "layer" in result.output


def test_sweep_config_with_yaml_aliases_is_refused_before_they_expand(tmp_path) -> None:
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "model: smollm2-135m\ngeneral_tasks: [ce_mini_arc_easy]\nmetadata:\n"
        + "".join(f"  {line}\n" for line in bomb)
    )
    with pytest.raises(SweepConfigError, match=r"line 5: YAML alias \*a is not allowed"):
        SweepConfig.from_yaml(path)
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "alias" in result.output


# ---------------------------------------------------------------- the regression gate
@pytest.fixture()
def gate(runs, tmp_path):  # type: ignore[no-untyped-def]
    """(write(changes) -> candidate path, baseline path): candidates are edited copies of the
    real unedited run's results."""
    (unedited,) = [r for r in runs if not r.edited]
    original = json.loads(unedited.path.read_text())

    def write(name: str, change) -> Path:  # type: ignore[no-untyped-def]
        data = copy.deepcopy(original)
        change(data)
        path = tmp_path / name / "results_2026-01-01T00-00-00.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data))
        return path

    return write, unedited.path


def _acc(value: float, stderr: float):  # type: ignore[no-untyped-def]
    def change(data: dict) -> None:
        data["results"]["ce_mini_arc_easy"].update({"acc,none": value, "acc_stderr,none": stderr})

    return change


def _regress(baseline: Path, candidate: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["regress", "--baseline", str(baseline), "--candidate", str(candidate), *extra]
    return CliRunner().invoke(app, args)


def test_regress_passes_a_candidate_equal_to_its_baseline(gate) -> None:
    write, baseline = gate
    result = _regress(baseline, write("same", lambda d: None))
    assert result.exit_code == PASS, result.output


def test_regress_fails_a_drop_beyond_max_drop_and_two_standard_errors(gate) -> None:
    write, baseline = gate
    base = write("base", _acc(0.8, 0.01))
    result = _regress(base, write("worse", _acc(0.5, 0.01)))
    assert result.exit_code == FAIL, result.output
    assert "FAILED" in result.output and "ce_mini_arc_easy/acc" in " ".join(result.output.split())


def test_regress_passes_a_drop_within_two_combined_standard_errors(gate) -> None:
    write, _ = gate
    base = write("base", _acc(0.8, 0.1))
    # a drop of 0.25 > max_drop 0.02, but < 2 * sqrt(0.1^2 + 0.1^2) = 0.283
    assert _regress(base, write("noisy", _acc(0.55, 0.1))).exit_code == PASS
    # the same drop with smaller errors fails
    base = write("base2", _acc(0.8, 0.05))
    assert _regress(base, write("sure", _acc(0.55, 0.05))).exit_code == FAIL


def test_regress_max_drop_can_be_set_per_task(gate) -> None:
    write, _ = gate
    base, worse = write("base", _acc(0.8, 0.0)), write("worse", _acc(0.7, 0.0))
    assert _regress(base, worse).exit_code == FAIL
    assert _regress(base, worse, "--max-drop", "ce_mini_arc_easy=0.15").exit_code == PASS
    assert _regress(base, worse, "--max-drop", "0.15").exit_code == PASS


def test_regress_reads_lower_is_better_metrics_the_right_way_round(gate) -> None:
    write, _ = gate

    def ppl(value: float):  # type: ignore[no-untyped-def]
        def change(data: dict) -> None:
            data["results"]["ce_perplexity"] = {"word_perplexity,none": value}
            data["higher_is_better"]["ce_perplexity"] = {"word_perplexity": False}

        return change

    base = write("base", ppl(40.0))
    assert _regress(base, write("better", ppl(30.0))).exit_code == PASS
    result = _regress(base, write("worse", ppl(50.0)))
    assert result.exit_code == FAIL and "ce_perplexity/word_perplexity" in result.output


def test_regress_says_unusable_for_files_that_cannot_be_compared(gate, tmp_path) -> None:
    write, baseline = gate

    def other_model(data: dict) -> None:
        data["config"]["ce_bench"]["base_model"] = "other/model"

    def no_general(data: dict) -> None:
        data["results"] = {"zsre_lifelong": {"rel,none": 1.0}}

    def fewer_docs(data: dict) -> None:
        data["n-samples"]["ce_mini_arc_easy"]["effective"] = 1

    cases = {
        "missing task": write("missing", lambda d: d["results"].pop("ce_mini_arc_easy")),
        "different base models": write("other", other_model),
        "no overlap": write("none", no_general),
        "different documents": write("fewer", fewer_docs),
    }
    for reason, candidate in cases.items():
        result = _regress(baseline, candidate)
        assert result.exit_code == UNUSABLE, (reason, result.output)
    missing = _regress(baseline, cases["missing task"])
    assert "ce_mini_arc_easy (not in the candidate)" in " ".join(missing.output.split())
    (tmp_path / "garbage.json").write_text("{not json")
    assert _regress(baseline, tmp_path / "garbage.json").exit_code == UNUSABLE
    assert _regress(baseline, baseline, "--max-drop", "mmlu=0.1").exit_code == UNUSABLE
    assert _regress(baseline, baseline, "--max-drop", "lots").exit_code == UNUSABLE


def test_a_run_of_lm_evals_steered_model_counts_as_edited(runs, tmp_path) -> None:
    (unedited,) = [r for r in runs if not r.edited]
    data = json.loads(unedited.path.read_text())
    data["config"].pop("ce_bench")
    data["config"].update(model="steered", model_args="pretrained=m,steer_path=anger.pt")
    path = tmp_path / "results_steered.json"
    path.write_text(json.dumps(data))
    run = read_run(path)
    assert (run.method, run.settings, run.edited) == ("steered", "steer_path=anger.pt", True)


def test_edited_hf_results_record_the_versions_of_the_stack_that_made_them(runs) -> None:
    for run in runs:
        assert set(run.versions) == {"torch", "transformers", "lm_eval", "sae_lens", "ce_bench"}
        assert run.versions["transformers"] == importlib.metadata.version("transformers")


def test_leaderboard_warns_when_its_runs_were_made_with_different_versions(
    sweep, runs, tmp_path
) -> None:
    (unedited,) = [r for r in runs if not r.edited]
    data = json.loads(unedited.path.read_text())
    data["config"]["ce_bench"]["versions"]["transformers"] = "5.23.0"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results_old.json").write_text(json.dumps(data))
    runs_dir = str(sweep[0].out / "runs")
    same = CliRunner().invoke(app, ["leaderboard", runs_dir, "--out", str(tmp_path / "a")])
    assert same.exit_code == 0 and "different versions" not in same.output
    args = ["leaderboard", runs_dir, str(tmp_path / "old"), "--out", str(tmp_path / "b")]
    mixed = CliRunner().invoke(app, args)
    assert mixed.exit_code == 0, mixed.output
    assert "warning: runs made with different versions of transformers: 5.23.0" in mixed.output
    assert "different versions of transformers" in (tmp_path / "b" / "board.md").read_text()


def test_plain_hf_results_keep_the_versions_lm_eval_records(runs, tmp_path) -> None:
    (unedited,) = [r for r in runs if not r.edited]
    data = json.loads(unedited.path.read_text())
    data["config"].pop("ce_bench")
    data["pretty_env_info"] = "PyTorch version: 2.9.1+cpu\nIs debug build: False"
    data.update(transformers_version="4.57.0", lm_eval_version="0.4.9")
    path = tmp_path / "results_hf.json"
    path.write_text(json.dumps(data))
    assert read_run(path).versions == {
        "torch": "2.9.1+cpu",
        "transformers": "4.57.0",
        "lm_eval": "0.4.9",
    }


def test_every_delta_carries_its_interval_p_value_and_whether_documents_were_paired(
    runs, tmp_path
) -> None:
    files = write_board(build_board(runs), tmp_path)
    board = json.loads(files["json"].read_text())
    cells = [
        c for s in board for r in s["rows"] for c in r["cells"].values() if c["delta"] is not None
    ]
    assert cells and all({"delta_ci", "p_value", "n_paired", "paired"} <= set(c) for c in cells)
    general = next(s for s in board if s["section"] == GENERAL)
    paired = [c for r in general["rows"] for c in r["cells"].values() if c.get("paired")]
    assert paired and all(c["n_paired"] == 3 for c in paired)  # the sweep's limit, by doc_id
    markdown = files["markdown"].read_text()
    assert "95% interval" in markdown and "Ranked by acc on ce_mini_arc_easy:" in markdown
    assert all("significant" in step for s in board for step in s["ranking"])


def test_without_samples_a_delta_falls_back_to_the_stderrs_and_says_so(runs, tmp_path) -> None:
    (unedited,) = [r for r in runs if not r.edited]
    copy = tmp_path / "unedited" / unedited.path.name
    copy.parent.mkdir()
    shutil.copy(unedited.path, copy)  # the results file alone: no samples beside it
    edited = [r for r in runs if r.edited and "ce_mini_arc_easy" in r.scores]
    sections = build_board([read_run(copy), *edited])
    general = next(s for s in sections if s.title == GENERAL)
    cells = [c for r in general.rows for c in r.cells.values() if c.delta is not None]
    assert cells and all(c.uncertainty is not None and not c.uncertainty.paired for c in cells)
    assert "~" in to_markdown(sections)


def test_a_lifelong_run_with_checkpoints_gets_a_retention_plot_and_no_extra_columns(
    runs, tmp_path
) -> None:
    (grace,) = [r for r in runs if r.method == "grace" and "zsre_lifelong" in r.scores]
    data = json.loads(grace.path.read_text())
    metrics = data["results"]["zsre_lifelong"]
    for name in ("rel", "gen", "loc", "avg"):  # as a run with eval_at=1 reports them
        metrics[f"{name}@1,none"] = metrics[f"{name},none"]
        metrics[f"{name}@1_stderr,none"] = "N/A"
        data["higher_is_better"]["zsre_lifelong"][f"{name}@1"] = True
    path = tmp_path / "lifelong" / grace.path.name
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    files = write_board(build_board([read_run(path)]), tmp_path / "board")
    assert files["lifelong-editing_retention"].read_bytes()[:4] == b"\x89PNG"
    assert "rel@1" not in files["markdown"].read_text()


SEEDED = """
model: smollm2-135m
general_tasks: []
concept:
  methods: [steering]
  layers: [27]
  concepts: [anger]
  strengths: [4.0]
  seeds: [1, 2]
  locate_limit: 1
  validation_limit: 2
  test_limit: 2
  max_gen_toks: 6
"""


def test_a_sweep_over_seeds_locates_on_each_split_and_the_board_shows_mean_and_sd(
    tmp_path, embedded_dir
) -> None:
    (tmp_path / "seeds.yaml").write_text(SEEDED)
    config = SweepConfig.from_yaml(tmp_path / "seeds.yaml", out=tmp_path / "out")
    files = Sweep(config).run()
    seeds = {
        json.loads((d / "intervention.json").read_text())["provenance"]["report"]["split_seed"]
        for d in (tmp_path / "out" / "artifacts").iterdir()
    }
    assert seeds == {1, 2}
    tested = [r for r in load_runs([tmp_path / "out" / "runs"]) if r.split == "test"]
    assert sorted(r.seed for r in tested) == ["1", "2"] and all("seed" in r.label for r in tested)
    board = json.loads(files["json"].read_text())
    concept = next(s for s in board if s["section"] == "Concept editing")
    (summary,) = concept["across_seeds"]
    assert summary["seeds"] == ["1", "2"]
    assert set(summary["cells"]["success_rate"]) == {"mean", "sd"}
    assert "Across seeds (mean ± sd): steering L27 anger test" in files["markdown"].read_text()


def test_sweep_seeds_must_be_distinct_non_negative_integers(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SEEDED.replace("seeds: [1, 2]", "seeds: [1, 1, -2]"))
    with pytest.raises(SweepConfigError, match="seeds must be distinct integers >= 0"):
        Sweep(SweepConfig.from_yaml(path, out=tmp_path / "out")).check()


def test_an_erasure_runs_class_metrics_are_paired_over_the_documents_they_average() -> None:
    from ce_bench.board.samples import TaskSamples, compare_in_run

    # (class, [erased class], [value]) per document: two of the erased class, two others
    acc = [["neg", ["neg"], [0.0]], ["neg", ["neg"], [0.0]], ["pos", ["neg"], [1.0]],
           ["pos", ["neg"], [0.0]]]  # fmt: skip
    base = [["neg", ["neg"], [1.0]], ["neg", ["neg"], [1.0]], ["pos", ["neg"], [1.0]],
            ["pos", ["neg"], [1.0]]]  # fmt: skip
    values = {"acc": acc, "acc_base": base, "cacc": acc, "cacc_base": base}
    samples = TaskSamples(Path("x.jsonl"), [0, 1, 2, 3], ["a", "b", "c", "d"], values)
    own = compare_in_run(samples, "acc", higher_is_better=False)
    other = compare_in_run(samples, "cacc", higher_is_better=True)
    assert own is not None and (own.n, own.delta) == (2, -1.0)  # the erased class: all gone
    assert other is not None and (other.n, other.delta) == (2, -0.5)  # one other lost
