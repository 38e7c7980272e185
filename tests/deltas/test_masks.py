"""Selection rules (deltas/masks.py, deltas/learned.py) and `taskloc graft --select`.

The recall test uses a hand-built factorised bigram model whose skill lives in a known 1% of
the entries, with a decoy of larger updates on embedding rows of tokens the task never reads,
dense small noise everywhere else, and part of the skill in channels that are dead at the base
(two entries that help only together, so the base's gradient does not see them).
"""
import copy
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from cli_runner import cli
from taskloc.deltas.learned import loss_gradient, task_loss
from taskloc.deltas.masks import SELECTORS, apply_mask, count_of, deltas_of, rule_scale, select
from taskloc.errors import CheckpointError, ConfigError, UnknownNameError
from taskloc.io import open_checkpoint
from taskloc.io.atomic import write_safetensors
from taskloc.models import CHAR_CODEC
from taskloc.tasks.vocab import EOS, VOCAB_SIZE, encode
from taskloc.train import answer_loss

RULES = ["magnitude", "random", "dare", "saliency", "learned"]


class FactorBigram(nn.Module):
    """logits of the next character = embed[current] @ readout: the smallest model the model-based
    rules can run (it reads characters, like TinyLM)."""

    codec = CHAR_CODEC

    def __init__(self, vocab: int, channels: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(vocab, channels))
        self.readout = nn.Parameter(torch.zeros(channels, vocab))

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embed[idx] @ self.readout  # (B, T, V)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (two threads on a shared 2-core box are far slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted():
    """(model, base, tuned, skill mask, decoy mask, pairs, number of entries the base's gradient can see).

    Task: one character c -> target f(c) (one of WXYZ), then EOS. Live channels 0-15 of the base
    are random, with channel i < 4 reading out target i and channel 4 reading out EOS; channels
    16-23 are dead (zero). The skill, 47 entries = 1.0% of 4,656:
      - 27 prompts: embed[c, channel of f(c)] += 3 (one entry each; the base's gradient sees it)
      - 8 prompts through dead channel h: embed[c, h] = readout[h, f(c)] = 3 (two entries that act
        only together: zero gradient at the base)
      - 4 targets: embed[t, 4] += 3 (then EOS)
    Decoy: 3 embedding rows of characters the task never reads, +-6 (twice the skill's size).
    Noise: N(0, 0.05) on every other entry."""
    g = torch.Generator().manual_seed(0)
    vocab, channels, live, a = VOCAB_SIZE, 24, 16, 3.0
    model = FactorBigram(vocab, channels).eval()
    targets, prompts = "WXYZ", "abcdefghijklmnopqrstuvwxyz012345678"
    with torch.no_grad():
        model.embed[:, :live] = 0.5 * torch.randn(vocab, live, generator=g)
        model.readout[:live] = 0.5 * torch.randn(live, vocab, generator=g)
        for i, t in enumerate(targets):
            model.readout[i, encode(t)[0]] = a
        model.readout[4, EOS] = a
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    tuned = {n: t.clone() for n, t in base.items()}
    skill = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in base.items()}
    pairs = []
    for i, c in enumerate(prompts):
        t = targets[i % 4]
        ci, ti = encode(c)[0], encode(t)[0]
        pairs.append((c, t))
        if i < channels - live:  # through a dead channel
            h = live + i
            skill["embed"][ci, h] = skill["readout"][h, ti] = True
            tuned["embed"][ci, h] = tuned["readout"][h, ti] = a
        else:
            skill["embed"][ci, i % 4] = True
            tuned["embed"][ci, i % 4] += a
    for t in targets:
        skill["embed"][encode(t)[0], 4] = True
        tuned["embed"][encode(t)[0], 4] += a
    read = {encode(c)[0] for c in prompts + targets}
    unused = [i for i in range(2, vocab) if i not in read]
    decoy = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in base.items()}
    decoy["embed"][unused[:3]] = True
    for n in base:
        sign = torch.randint(0, 2, base[n].shape, generator=g) * 2.0 - 1
        noise = 0.05 * torch.randn(base[n].shape, generator=g)
        tuned[n] += torch.where(decoy[n], 2 * a * sign, torch.where(skill[n], 0.0, noise))
    visible = len(prompts) - (channels - live) + len(targets)
    return model, base, tuned, skill, decoy, pairs, visible


def _recall(mask, skill):
    return sum(int((mask[n] & skill[n]).sum()) for n in skill) / count_of(skill)


def _gain_kept(model, base, tuned, mask, pairs):
    """Share of the fine-tune's loss reduction the graft keeps."""
    loss = {name: task_loss(model, sd, pairs).item() for name, sd in
            (("base", base), ("tuned", tuned), ("graft", apply_mask(base, tuned, mask)))}
    return (loss["base"] - loss["graft"]) / (loss["base"] - loss["tuned"])


def test_learned_mask_finds_the_planted_skill_where_magnitude_takes_the_decoy(planted):
    model, base, tuned, skill, decoy, pairs, visible = planted
    k = count_of(skill)
    assert k == 47 and k / sum(t.numel() for t in base.values()) == pytest.approx(0.0101, abs=1e-4)
    masks = {rule: select(rule, base, tuned, k, model=model, data=pairs) for rule in ("magnitude", "saliency", "learned")}
    recall = {rule: _recall(m, skill) for rule, m in masks.items()}
    # magnitude takes only decoy entries; saliency finds exactly the skill entries the base's
    # gradient can see (the dead-channel pairs score ~0); the learned mask finds nearly all
    assert all(bool((masks["magnitude"][n] <= decoy[n]).all()) for n in base) and recall["magnitude"] == 0.0
    assert recall["saliency"] == visible / k == 31 / 47
    assert recall["learned"] > 0.9
    kept = {rule: _gain_kept(model, base, tuned, m, pairs) for rule, m in masks.items()}
    assert kept["magnitude"] == pytest.approx(0.0, abs=1e-6)  # the decoy rows are never read
    assert kept["saliency"] < 0.95 < kept["learned"]


def test_learned_mask_from_the_saliency_start_finds_the_part_saliency_misses(planted):
    """Started at the saliency top k (the weight-delta study's start), the optimisation still
    reaches the dead-channel entries whose base gradient is ~0, so it ends above its start."""
    model, base, tuned, skill, _, pairs, visible = planted
    k = count_of(skill)
    mask = select("learned", base, tuned, k, model=model, data=pairs, init="saliency")
    assert _recall(mask, skill) > 0.9 > visible / k
    with pytest.raises(ConfigError, match="init='sailency'"):
        select("learned", base, tuned, k, model=model, data=pairs, init="sailency")


def test_model_rules_leave_the_model_untouched_and_repeat_under_a_seed(planted):
    model, base, tuned, _, _, pairs, _ = planted
    before = copy.deepcopy(model.state_dict())
    first = select("learned", base, tuned, 47, model=model, data=pairs, seed=3, steps=30)
    again = select("learned", base, tuned, 47, model=model, data=pairs, seed=3, steps=30)
    select("saliency", base, tuned, 47, model=model, data=pairs)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_saliency_is_delta_times_the_base_gradient_of_the_answer_loss(planted):
    model, base, tuned, _, _, pairs, _ = planted
    reference = copy.deepcopy(model)  # plain autograd on a copy's own parameters
    inputs, labels, answer = CHAR_CODEC.encode_batch(pairs)
    answer_loss(reference, inputs, labels, answer).backward()
    grads = loss_gradient(model, base, pairs, batch_size=8)  # 35 pairs: unequal batches, weighted by size
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)
    _, deltas = deltas_of(base, tuned)
    scores = torch.cat([(deltas[n] * reference.get_parameter(n).grad).abs().flatten() for n in deltas])
    mask = select("saliency", base, tuned, 47, model=model, data=pairs)
    chosen = torch.cat([mask[n].flatten() for n in deltas])
    assert scores[chosen].min() >= scores[~chosen].max()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [0, 1, 47, 4656])
def test_every_rule_returns_exactly_k_entries_shaped_like_the_delta(planted, rule, k):
    model, base, tuned, _, _, pairs, _ = planted
    mask = select(rule, base, tuned, k, model=model, data=pairs, steps=3)
    assert mask.keys() == base.keys() and all(mask[n].shape == base[n].shape and mask[n].dtype == torch.bool for n in base)
    assert count_of(mask) == k


def test_magnitude_keeps_the_largest_deltas():
    base = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    tuned = {"a": torch.tensor([[0.1, -5.0, 0.3], [2.0, 0.0, -0.2]]), "b": torch.tensor([1.0, -3.0, 0.5, 0.05])}
    mask = select("magnitude", base, tuned, 3)
    assert mask["a"].tolist() == [[False, True, False], [True, False, False]] and mask["b"].tolist() == [False, True, False, False]


def test_random_is_seeded_and_dare_grafts_the_same_entries_at_scale_n_over_k():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(30, 20, generator=g), "b": torch.randn(40, generator=g)}
    tuned = {n: t + torch.randn(t.shape, generator=g) for n, t in base.items()}
    n, k = 640, 64
    rand, dare = select("random", base, tuned, k, seed=7), select("dare", base, tuned, k, seed=7)
    assert all(torch.equal(rand[x], dare[x]) for x in base) and count_of(rand) == k
    assert any(not torch.equal(rand[x], select("random", base, tuned, k, seed=8)[x]) for x in base)
    assert rule_scale("dare", k, n) == 10.0 and rule_scale("random", k, n) == 1.0 and rule_scale("dare", 0, n) == 1.0
    grafted = apply_mask(base, tuned, dare, rule_scale("dare", k, n))
    for x in base:
        expected = base[x] + 10.0 * (tuned[x] - base[x])  # float32, as the graft computes it
        assert torch.equal(grafted[x][dare[x]], expected[dare[x]]) and torch.equal(grafted[x][~dare[x]], base[x][~dare[x]])
    plain = apply_mask(base, tuned, rand)
    assert all(torch.equal(plain[x], torch.where(rand[x], tuned[x], base[x])) for x in base)  # scale 1: tuned bit for bit


def test_bad_requests_name_the_problem():
    base, tuned = {"w": torch.zeros(4)}, {"w": torch.ones(4)}
    with pytest.raises(UnknownNameError, match=r"unknown selection rule 'learnt'\. Did you mean 'learned'\?"):
        select("learnt", base, tuned, 1)
    with pytest.raises(ConfigError, match=r"k=5 must be a whole number of entries between 0 and 4"):
        select("magnitude", base, tuned, 5)
    with pytest.raises(ConfigError, match=r"selection rule 'saliency' runs the model on training data: pass model="):
        select("saliency", base, tuned, 1)
    with pytest.raises(CheckpointError, match=r"only in base: \['w'\], only in tuned: \['v'\]"):
        select("magnitude", base, {"v": torch.ones(4)}, 1)
    with pytest.raises(ConfigError, match=r"unknown selection option\(s\) \['stpes'\]"):
        select("learned", base, tuned, 1, stpes=3)
    assert SELECTORS.names() == RULES


# --- CLI: taskloc graft BASE TUNED --select ---------------------------------------------------------

def _cli(args, capsys):
    code, out, err = cli(args, capsys)
    return code, out + err


@pytest.fixture
def tiny_files(tiny_model, tmp_path):
    meta = {"taskloc": json.dumps({"kind": "base", "model": tiny_model.cfg.to_dict()})}
    base = {n: t.detach().clone() for n, t in tiny_model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    tuned = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    write_safetensors(tmp_path / "base.safetensors", base, meta)
    write_safetensors(tmp_path / "tuned.safetensors", tuned, meta)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"A:{i}+1=", "target": str(i + 1)}) + "\n" for i in range(6)))
    return tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", data, base, tuned


@pytest.mark.parametrize("rule", RULES)
def test_graft_select_writes_the_rules_graft(tiny_files, tmp_path, capsys, rule):
    base_path, tuned_path, data, base, tuned = tiny_files
    out = tmp_path / f"{rule}.safetensors"
    extra = ["--data", data, "--steps", "5"] if SELECTORS.get(rule).needs_model else []
    code, text = _cli(["graft", base_path, tuned_path, "--out", out, "--select", rule, "--top", "1%", "--seed", "2", *extra], capsys)
    assert code == 0, text
    got = load_file(str(out))
    n = sum(t.numel() for t in base.values())
    k = round(0.01 * n)
    mask = {name: got[name] != base[name] for name in base}
    assert count_of(mask) == k and f"grafted {k:,} of {n:,} entries chosen by {rule}" in text
    if rule in ("random", "dare", "magnitude"):  # independent of the model: the in-memory selection exactly
        order = open_checkpoint(base_path).names()  # the file's tensor order, which the draw and ties follow
        ref = select(rule, {x: base[x] for x in order}, {x: tuned[x] for x in order}, k, seed=2)
        assert all(torch.equal(mask[name], ref[name]) for name in base)
    scale = n / k if rule == "dare" else 1.0
    for name in base:
        assert torch.equal(got[name], apply_mask(base, tuned, mask, scale)[name])
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["taskloc_graft"])
        assert f.metadata()["taskloc"]  # the base's own metadata is kept
    assert meta["select"] == rule and meta["k"] == k and meta["scale"] == scale


@pytest.mark.parametrize("make_args, message", [
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "learned"], r"--select learned runs the model on training examples: pass --data F\.jsonl"),
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "saliency", "--data", d.parent / "empty.jsonl"], r"task file .*empty\.jsonl is empty"),
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "saliency", "--data", d.parent / "missing.jsonl"], r"task file .*missing\.jsonl does not exist"),
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "magnitud"], r"unknown selection rule 'magnitud'\. Did you mean 'magnitude'\?"),
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "random", "--data", d], r"--select random reads no training data"),
    (lambda b, t, d, o: [b, t, "--out", o, "--top", "5%"], r"--top, --data and --steps choose entries and need --select"),
    (lambda b, t, d, o: [b, t, "--out", o, "--select", "magnitude", "--top", "150%"], r"between 0% and 100%"),
])
def test_graft_select_bad_input_is_one_line_exit_2_and_no_output(tiny_files, tmp_path, capsys, make_args, message):
    base_path, tuned_path, data, _, _ = tiny_files
    (tmp_path / "empty.jsonl").write_text("\n")
    out = tmp_path / "out.safetensors"
    code, text = _cli(["graft", *make_args(base_path, tuned_path, data, out)], capsys)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, text
    assert lines[0].startswith("error:") and re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_graft_select_refuses_a_patch_as_the_tuned_model(tiny_files, tmp_path, capsys):
    base_path, tuned_path, _, _, _ = tiny_files
    patch = tmp_path / "p.safetensors"
    assert _cli(["delta", base_path, tuned_path, "--patch", patch], capsys)[0] == 0
    code, text = _cli(["graft", base_path, patch, "--out", tmp_path / "o.safetensors", "--select", "magnitude"], capsys)
    assert code == 2 and "is a patch, whose entries are already chosen" in text


def test_in_memory_top_k_equals_the_streamed_selection_ties_included(monkeypatch):
    """top_k_scores sorts in memory below IN_MEMORY_TOP_K entries and streams above it: the same
    entries either way, ties to earlier tensors and lower flat indices."""
    from taskloc.deltas import masks as masks_module
    from taskloc.deltas.api import global_topk_mask

    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randint(0, 4, (7, 5), generator=g).float(), "b": torch.randint(0, 4, (11,), generator=g).float(),
              "c": torch.randn(3, 4, generator=g)}  # signed: ranked by |.|
    n = sum(t.numel() for t in scores.values())
    for k in (0, 1, 9, 20, 40, n):
        fast = masks_module.top_k_scores(scores, k)
        streamed = global_topk_mask(scores, k)
        assert all(torch.equal(fast[name], streamed[name]) for name in scores), k
        assert sum(int(m.sum()) for m in fast.values()) == k
    # float64 near-ties rank as float32 in both paths; a non-floating tensor is never chosen
    close = {"a": torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64), "ids": torch.tensor([5, 9])}
    fast = masks_module.top_k_scores(close, 1)
    assert fast["a"].tolist() == global_topk_mask(close, 1)["a"].tolist() == [True, False] and "ids" not in fast
    # NaN: the streamed selection's one-line error, not a silent ranking
    with pytest.raises(CheckpointError, match="NaN"):
        masks_module.top_k_scores({"a": torch.tensor([1.0, float("nan")])}, 1)
    # above the size limit it streams: checked against a reference written here (stable sort of |.|)
    monkeypatch.setattr(masks_module, "IN_MEMORY_TOP_K", 10)
    flat = torch.cat([t.abs().flatten() for t in scores.values()])
    expected = torch.zeros(n, dtype=torch.bool)
    expected[sorted(range(n), key=lambda i: (-float(flat[i]), i))[:20]] = True
    assert torch.equal(torch.cat([m.flatten() for m in masks_module.top_k_scores(scores, 20).values()]), expected)


def test_a_given_gradient_replaces_the_computed_one(planted):
    model, base, tuned, skill, _, pairs, _ = planted
    k = count_of(skill)
    grads = loss_gradient(model, base, pairs)
    assert all(torch.equal(select("saliency", base, tuned, k, model=model, data=pairs, gradient=grads)[n],
                           select("saliency", base, tuned, k, model=model, data=pairs)[n]) for n in base)
    flipped = {n: torch.where(skill[n], 0.0, 1.0) * torch.ones_like(g) for n, g in grads.items()}  # zero on the skill entries
    chosen = select("saliency", base, tuned, k, model=model, data=pairs, gradient=flipped)
    assert _recall(chosen, skill) == 0.0  # it really used the gradient it was given
