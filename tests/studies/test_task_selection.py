"""A study's task list against the run's tasks: a default list is cut to the run's tasks (or the
study is skipped with one line naming the setting); a list the user set that names a task the run
lacks is one clear line, exit 2."""
import json
import math
from types import SimpleNamespace

import pytest

from taskloc.cli import main
from taskloc.errors import ConfigError
from taskloc.runconfig import resolve_config
from taskloc.runner import resolve_studies
from taskloc.studies import STUDIES
from taskloc.studies.context import study_settings
from taskloc.studies.task_selection import select_tasks

REDUCED = 'data.tasks=["sort", "copy"]'
TASK_STUDIES = ("activation-difficulty", "weight-delta", "core-isolation", "fast-slow")


def _plan(*overrides):
    cfg = resolve_config("quick", None, tuple(overrides))
    cfg.data.load_tasks()
    return cfg, {study.name: (study, study_cfg) for study, study_cfg in resolve_studies([], cfg)}


def _selection(cfg, plan, name):
    study, study_cfg = plan[name]
    chosen = study.tasks_for(study_cfg, cfg)
    return chosen[0] if isinstance(chosen, tuple) else chosen


def test_set_by_user_compares_with_the_preset_not_with_where_it_was_written():
    cfg = resolve_config("quick", None, ('studies.weight-delta.tasks=["add", "reverse"]', 'studies.core-isolation.tasks=["add", "sort"]',
                                         "studies.core-isolation.forgetting_pairs=[]"))
    wd = study_settings(cfg, "weight-delta", STUDIES.get("weight-delta").Config)
    ci = study_settings(cfg, "core-isolation", STUDIES.get("core-isolation").Config)
    ad = study_settings(cfg, "activation-difficulty", STUDIES.get("activation-difficulty").Config)
    assert not wd.set_by_user("tasks", "quick")  # the quick preset's own list, written again
    assert wd.set_by_user("tasks", "default")  # ... is a choice against another preset's
    assert ci.set_by_user("tasks", "quick") and ci.set_by_user("forgetting_pairs", "quick")
    assert not ad.set_by_user("tasks", "quick")  # not in the preset: the class default
    assert not cfg.data.set_by_user("ood_levels", "quick") and cfg.data.set_by_user("ood_levels", "default")  # [3] vs [3, 4, 5]


def test_a_reduced_task_set_passes_every_check_and_cuts_default_lists():
    cfg, plan = _plan(REDUCED)
    assert set(plan) == set(STUDIES.names())  # every study's check passed
    ad = _selection(cfg, plan, "activation-difficulty")
    assert ad.entries == ["sort", "copy"] and not ad.skip
    assert set(ad.dropped) == {"add", "reverse", "hop", "trace", "arith"}
    assert "ran on ['sort', 'copy']" in ad.notes()[0] and "studies.activation-difficulty.tasks" in ad.notes()[0]
    assert "(add, reverse, hop, trace, arith: not among the run's tasks (data.tasks = ['sort', 'copy']))" in ad.notes()[0]
    # weight-delta's quick list is add + reverse: nothing left, so skipped, naming the setting
    wd = _selection(cfg, plan, "weight-delta")
    assert wd.entries == [] and "set studies.weight-delta.tasks to run it" in wd.skip
    assert "data.tasks = ['sort', 'copy']" in wd.skip
    assert _selection(cfg, plan, "core-isolation").skip and _selection(cfg, plan, "fast-slow").skip


def test_a_jsonl_task_set_passes_every_check(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{lv}=", "target": str(i + lv), "level": lv}) + "\n"
                            for lv in (1, 2, 3) for i in range(3)))
    cfg, plan = _plan(f'data.tasks=["jsonl:{path}"]')
    assert set(plan) == set(STUDIES.names())
    for name in TASK_STUDIES:
        assert _selection(cfg, plan, name).skip.startswith(f"studies.{name}.")


def test_a_full_task_set_changes_nothing():
    cfg, plan = _plan()
    for name in TASK_STUDIES:
        selection = _selection(cfg, plan, name)
        study_cfg = plan[name][1]
        setting = study_cfg.stream if name == "fast-slow" else study_cfg.tasks
        assert selection.entries == setting and not selection.dropped and not selection.skip and selection.notes() == []


def test_core_isolation_default_pairs_follow_the_tasks():
    cfg, plan = _plan('data.tasks=["arith", "sort", "reverse", "copy"]')
    study, study_cfg = plan["core-isolation"]
    selection, pairs = study.tasks_for(study_cfg, cfg)
    assert selection.entries == ["arith", "sort", "reverse"] and pairs == [["arith", "sort"]]  # default [add, sort] cut
    with pytest.raises(ConfigError, match=r"studies\.core-isolation\.forgetting_pairs=\[\['sort', 'reverse'\], \['add', 'sort'\]\] "
                                          r"names tasks outside the ones this run fine-tunes \(studies\.core-isolation\.tasks: \['arith', 'sort', 'reverse'\]\)"):
        _plan('data.tasks=["arith", "sort", "reverse", "copy"]', "studies.core-isolation.forgetting_pairs=[[\"sort\", \"reverse\"], [\"add\", \"sort\"]]")


def test_a_skipped_study_reports_its_claims_inconclusive():
    cfg, plan = _plan(REDUCED)
    study, study_cfg = plan["weight-delta"]
    result = study.run(SimpleNamespace(cfg=cfg), study_cfg)  # returns before touching the context
    assert result.claims and {c.verdict for c in result.claims} == {"inconclusive"}
    assert all(c.id == "C0" and "study not run: studies.weight-delta.tasks" in c.reason and math.isnan(c.value) for c in result.claims)
    assert result.notes[0].startswith("Not run: studies.weight-delta.tasks") and result.metrics["skipped"]


def test_select_tasks_keeps_order_and_maps_entries_to_tasks():
    cfg, plan = _plan('data.tasks=["hop", "add", "sort"]')
    fs = plan["fast-slow"][1]
    selection = select_tasks(fs, "stream", cfg, at_least=3, task_of=lambda c: c.rpartition(":")[0])
    assert selection.entries == ["sort:3", "hop:3", "add:3"]
    one = select_tasks(fs, "further", cfg, task_of=lambda c: c.rpartition(":")[0])  # copy:3, and copy is not run here
    assert one.entries == [] and one.skip.startswith("studies.fast-slow.further:")


@pytest.mark.parametrize("setting, message", [
    ('studies.activation-difficulty.tasks=["sort", "add"]',
     r"studies\.activation-difficulty\.tasks: task 'add' is not among the run's tasks \(data\.tasks = \['sort', 'copy'\]\); name only those"),
    ('studies.weight-delta.tasks=["sort", "hop"]', r"studies\.weight-delta\.tasks: task 'hop' is not among the run's tasks"),
    ('studies.core-isolation.tasks=["sort", "copy", "add"]', r"studies\.core-isolation\.tasks: task 'add' is not among"),
    ('studies.fast-slow.stream=["sort:3", "copy:3", "add:3"]', r"studies\.fast-slow\.stream: task 'add' is not among"),
    ('studies.fast-slow.further="hop:3"', r"studies\.fast-slow\.further: task 'hop' is not among"),
    ('studies.activation-difficulty.tasks=["sort", "copyy"]', r"studies\.activation-difficulty\.tasks: task 'copyy' has no paired item family"),
    ('studies.fast-slow.stream=["sort:3", "copy3", "sort:2"]', r"studies\.fast-slow\.stream: 'copy3' is not TASK:LEVEL"),
])
def test_a_user_set_list_naming_a_missing_task_is_one_line_exit_2(tmp_path, capsys, setting, message):
    import re

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--preset", "quick", "--out", str(out), "--set", REDUCED, "--set", setting])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
