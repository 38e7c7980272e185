import json

import numpy as np
import pytest

from taskloc.errors import DataError, UnknownNameError
from taskloc.models import CHAR_CODEC
from taskloc.tasks import EOS, encode, get_task, task_names
from taskloc.tasks.synthetic import arithmetic_problem


def test_builtin_tasks_are_registered():
    assert {"add", "sort", "reverse", "hop", "copy", "trace", "arith"} <= set(task_names())


@pytest.mark.parametrize("name", ["add", "sort", "reverse", "hop", "copy", "trace", "arith"])
def test_sampling_is_deterministic_and_levels_grow(name):
    task = get_task(name)
    a = task.sample(20, np.random.default_rng(3), 2)
    b = task.sample(20, np.random.default_rng(3), 2)
    assert a == b and all(e.level == 2 for e in a)
    short = np.mean([len(e.prompt) + len(e.target) for e in task.sample(50, np.random.default_rng(0), 1)])
    long = np.mean([len(e.prompt) + len(e.target) for e in task.sample(50, np.random.default_rng(0), 5)])
    assert long > short
    assert all(task.score(e.target, e) and not task.score(e.target + "0", e) for e in a)


def test_targets_are_correct():
    rng = np.random.default_rng(0)
    for e in get_task("add").sample(50, rng, 3):
        a, b = e.prompt[2:-1].split("+")
        assert int(e.target[::-1]) == int(a) + int(b)
    for e in get_task("sort").sample(20, rng, 2):
        assert e.target == "".join(sorted(e.prompt[2:-1]))
    for e in get_task("reverse").sample(20, rng, 2):
        assert e.target == e.prompt[2:-1][::-1]
    for e in get_task("hop").sample(20, rng, 3):
        facts, start = e.prompt[2:].split("|")
        table = dict(pair for pair in facts.split(","))
        node, path = start, ""
        for _ in range(3):
            node = table[node]
            path += node
        assert e.target == path
    for e in get_task("copy").sample(20, rng, 2):
        assert e.target == e.prompt[e.prompt.index("[") + 1 : e.prompt.index("]")]


def test_verbose_and_concise_arithmetic_describe_the_same_problem():
    expr, steps, answer = arithmetic_problem(np.random.default_rng(5), 4)
    value = int(expr[0])
    for i in range(4):
        op, d = expr[1 + 2 * i], int(expr[2 + 2 * i])
        value = (value + d) % 10 if op == "+" else (value - d) % 10
        assert steps[i].endswith(f"={value}")
    assert answer == value
    trace = get_task("trace").sample(1, np.random.default_rng(9), 3)[0]
    concise = get_task("arith").sample(1, np.random.default_rng(9), 3)[0]
    assert trace.prompt[2:] == concise.prompt[2:]
    assert [s.split("=")[1] for s in trace.target.split(",")] == concise.target.split(",")


def test_encode_batch_masks_only_the_answer():
    inputs, labels, mask = CHAR_CODEC.encode_batch([("A:1+2=", "3"), ("S:21>", "12")])
    assert inputs.shape == labels.shape == mask.shape == (2, 7)  # 6 + 1 + EOS, shifted by one
    assert mask[0].tolist() == [False] * 5 + [True, True]  # predicts "3", then EOS
    assert mask[1].tolist() == [False] * 4 + [True] * 3  # "1", "2", EOS
    assert labels[0, 6].item() == EOS and labels[1, 6].item() == EOS
    assert inputs[0, 0].item() == encode("A")[0]


def test_unknown_task_suggests():
    with pytest.raises(UnknownNameError, match=r"unknown task 'sortt'\. Did you mean 'sort'"):
        get_task("sortt")


def test_jsonl_task(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"X:{i}>", "target": str(i * 2), "level": 1 + i % 2}) for i in range(6)) + "\n")
    task = get_task(f"jsonl:{path}")
    assert task.levels == (1, 2)
    batch = task.sample(5, np.random.default_rng(0), 2)
    assert all(e.level == 2 and e.target == str(int(e.prompt[2:-1]) * 2) for e in batch)


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("{not json}\n", r"t.jsonl:1 is not valid JSON"),
    ('{"prompt": "a"}\n', r'needs string fields "prompt" and "target"'),
    ('{"prompt": "a", "target": "b", "level": 0}\n', r'"level" must be a positive integer'),
])
def test_malformed_jsonl_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        get_task(f"jsonl:{path}")


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_task(f"jsonl:{tmp_path / 'nope.jsonl'}")
