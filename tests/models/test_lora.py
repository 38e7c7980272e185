import copy

import pytest
import torch

from taskloc.errors import ConfigError
from taskloc.models import load_weights, lora, weights_of
from taskloc.tasks import VOCAB_SIZE, get_task
from taskloc.tasks.mixture import TaskMixture
from taskloc.train import TrainConfig, train

TARGETS = ("attn.qkv.weight", "attn.out.weight", "mlp.fc_in.weight", "mlp.fc_out.weight")


def test_adapters_start_at_the_base_and_only_adapters_are_trainable(tiny_model):
    x = torch.randint(2, VOCAB_SIZE, (2, 9))
    before = tiny_model(x)
    model = copy.deepcopy(tiny_model)
    mask = lora.attach(model, lora.LoraSpec(rank=3, alpha=6.0))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # B = 0: exactly the base
    # one A and one B per adapted matrix: 4 linear layers per block, the head left alone
    assert len(mask) == 2 * 4 * 2 and all(m.all() for m in mask.values())
    assert not any("unembed" in n for n in mask)


def test_trained_adapters_merge_into_a_rank_limited_delta(tiny_model):
    torch.manual_seed(0)
    base = weights_of(tiny_model)
    model = copy.deepcopy(tiny_model)
    rank = 2
    mask = lora.attach(model, lora.LoraSpec(rank=rank, alpha=4.0))
    train(model, TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup=1), TaskMixture([get_task("sort")], [1], seed=0), mask=mask)
    x = torch.randint(2, VOCAB_SIZE, (2, 9))
    adapted = model(x)
    lora.merge(model)
    tuned = weights_of(model)
    assert set(tuned) == set(base)  # the usual names: no parametrization left behind
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)  # merging changes nothing the model computes
    moved = 0
    for name, w in tuned.items():
        delta = w - base[name]
        if name.endswith(TARGETS):
            assert int(torch.linalg.matrix_rank(delta)) <= rank
            moved += int(delta.abs().max() > 0)
        else:  # biases, norms, embeddings and the head are frozen exactly
            assert torch.equal(w, base[name]), name
    assert moved == 8


def test_targets_choose_layers_and_a_miss_is_one_clear_error(tiny_model):
    model = copy.deepcopy(tiny_model)
    mask = lora.attach(model, lora.LoraSpec(rank=2, targets=("qkv",)))
    assert len(mask) == 2 * 2 and all("qkv" in n for n in mask)
    with pytest.raises(ConfigError, match="match no linear layer"):
        lora.attach(copy.deepcopy(tiny_model), lora.LoraSpec(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="rank=0"):
        lora.attach(copy.deepcopy(tiny_model), lora.LoraSpec(rank=0))


class Killed(Exception):
    pass


def test_a_resumed_lora_finetune_continues_from_its_checkpoint(tiny_model, tmp_path):
    """The resumable checkpoint holds the adapters: a run killed after its step-4 checkpoint and
    resumed ends exactly where an uninterrupted run ends."""
    mixture = TaskMixture([get_task("sort")], [1], seed=0)
    cfg = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup=1, ckpt_every=4)

    def adapted():
        torch.manual_seed(1)  # the adapters' A: the same draw in both runs
        model = copy.deepcopy(tiny_model)
        return model, lora.attach(model, lora.LoraSpec(rank=2))

    def kill_at_5(record):
        if record["step"] == 5:
            raise Killed

    model, mask = adapted()
    train(model, cfg, mixture, mask=mask, checkpoint=tmp_path / "a.safetensors")
    lora.merge(model)
    straight = weights_of(model)
    model, mask = adapted()
    with pytest.raises(Killed):
        train(model, cfg, mixture, mask=mask, checkpoint=tmp_path / "b.safetensors", log=kill_at_5)
    model, mask = adapted()
    steps = []
    train(model, cfg, mixture, mask=mask, checkpoint=tmp_path / "b.safetensors", log=lambda r: steps.append(r["step"]))
    assert steps == [5, 6, 7, 8]  # it resumed (adapters and their Adam moments read back), not restarted
    lora.merge(model)
    resumed = weights_of(model)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)
    load_weights(copy.deepcopy(tiny_model), resumed)  # the merged weights fit the plain architecture


def test_a_lora_finetune_job_returns_merged_low_rank_weights(tiny_model, tmp_path):
    """The study's fine-tune job (studies.context._tune) with a LoRA spec trains adapters, not the
    weights: its result has the plain names and a rank-limited change on the adapted matrices."""
    from taskloc.studies.context import _tune

    base = weights_of(tiny_model)
    tuned = _tune(tmp_path, start=base, mask=None, recipe=None, template=tiny_model, device="cpu", label="lora", meta={},
                  train_cfg=TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup=1),
                  mixture=TaskMixture([get_task("sort")], [1], seed=0), lora=lora.LoraSpec(rank=1, alpha=1.0))
    assert set(tuned) == set(base)
    ranks = [int(torch.linalg.matrix_rank(tuned[n] - base[n])) for n in base if n.endswith(TARGETS)]
    assert ranks == [1] * 8
    assert all(torch.equal(tuned[n], base[n]) for n in base if not n.endswith(TARGETS))


def test_adapters_are_drawn_from_their_own_seed(tiny_model):
    """A comes from LoraSpec.seed's own generator: the same seed gives the same adapters whatever
    ran before, another seed other adapters."""
    def a_of(seed: int) -> torch.Tensor:
        model = copy.deepcopy(tiny_model)
        lora.attach(model, lora.LoraSpec(rank=2, seed=seed))
        torch.rand(100)  # the global generator moving in between must not matter
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith(".A")])

    assert torch.equal(a_of(3), a_of(3)) and not torch.equal(a_of(3), a_of(4))


def test_a_model_without_linear_layers_is_one_clear_error():
    with pytest.raises(ConfigError, match="has none outside its head"):
        lora.attach(torch.nn.Sequential(torch.nn.Embedding(5, 3)), lora.LoraSpec())
