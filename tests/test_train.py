import pytest
import torch

from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE, get_task
from taskloc.tasks.mixture import TaskMixture
from taskloc.train import TrainConfig, lr_at, train

CFG = ModelConfig(vocab_size=VOCAB_SIZE, n_layer=1, n_head=2, d_model=16, d_mlp=32, block_size=64)


def fresh(seed=0):
    torch.manual_seed(seed)
    return TinyLM(CFG)


def mixture():
    return TaskMixture([get_task("add"), get_task("reverse")], [1, 2], seed=0)


def test_batches_are_a_pure_function_of_seed_and_step():
    m = mixture()
    assert m.batch(5, 16) == m.batch(5, 16)
    assert m.batch(5, 16) != m.batch(6, 16)


def test_training_reduces_loss():
    losses = []
    train(fresh(), TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5), mixture(), log=lambda r: losses.append(r["loss"]))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_masked_fine_tune_moves_only_masked_entries():
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(p.shape, generator=gen) < 0.05 for n, p in model.named_parameters() if "blocks.0" in n}
    train(model, TrainConfig(steps=10, batch_size=16, weight_decay=0.1, warmup=2), mixture(), mask=mask)
    moved_inside = 0
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        if name in mask:
            assert not changed[~mask[name]].any(), name
            moved_inside += int(changed[mask[name]].sum())
        else:
            assert not changed.any(), name
    assert moved_inside > 0.5 * sum(int(m.sum()) for m in mask.values())
    assert all(p.requires_grad for p in model.parameters())


class Killed(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=16, warmup=3, ckpt_every=4, eval_every=6)
    evaluate = lambda m: {"probe": float(m.unembed.weight.detach().sum())}
    reference = fresh()
    ref_history = train(reference, cfg, mixture(), evaluate=evaluate)

    ckpt = tmp_path / "state.safetensors"
    interrupted = fresh()

    def die_at_step_10(record):
        if record["step"] == 10:
            raise Killed

    with pytest.raises(Killed):
        train(interrupted, cfg, mixture(), checkpoint=ckpt, evaluate=evaluate, log=die_at_step_10)
    assert ckpt.exists()  # the step-8 checkpoint
    resumed = fresh(seed=123)  # different init: everything must come from the checkpoint
    history = train(resumed, cfg, mixture(), checkpoint=ckpt, evaluate=evaluate)
    assert history == ref_history
    for (n, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert ckpt.exists()  # removing it is the caller's job, once the final weights are written


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


def test_mixture_weights_set_task_proportions():
    m = TaskMixture([get_task("add"), get_task("reverse")], [1, 2], seed=0, weights={"add": 3.0})
    names = [e.prompt[0] for s in range(40) for e in m.batch(s, 50)]
    share_add = names.count("A") / len(names)
    assert 0.70 < share_add < 0.80  # expected 0.75
    levels = [e.level for s in range(40) for e in m.batch(s, 50) if e.prompt[0] == "A"]
    assert 0.4 < levels.count(1) / len(levels) < 0.6


def test_unknown_weight_name_is_config_error():
    from taskloc.errors import ConfigError
    from taskloc.tasks.mixture import DataConfig

    with pytest.raises(ConfigError, match=r"data.weights names \['hopp'\]"):
        DataConfig(tasks=["hop"], weights={"hopp": 2.0})


def test_sequential_phases_resume_from_the_last_finished_phase(tmp_path):
    from taskloc.train import Phase, train_sequential

    cfg = TrainConfig(steps=6, batch_size=8, warmup=1, ckpt_every=3)
    phases = [Phase(cfg, TaskMixture([get_task("add")], [1], seed=0), "A"),
              Phase(cfg, TaskMixture([get_task("reverse")], [1], seed=1), "B")]
    reference = fresh()
    train_sequential(reference, phases, tmp_path / "ref")
    assert len(list((tmp_path / "ref").glob("phase-1-*.safetensors"))) == 1
    # A run that stopped after phase A (phase B's file absent) picks up from phase A's weights.
    partial = tmp_path / "partial"
    train_sequential(fresh(), phases[:1], partial)
    resumed = fresh(seed=9)
    train_sequential(resumed, phases, partial)
    for (n, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_sequential_phases_in_another_order_do_not_reuse_files(tmp_path):
    from taskloc.train import Phase, train_sequential

    cfg = TrainConfig(steps=3, batch_size=8, warmup=1)
    a = Phase(cfg, TaskMixture([get_task("add")], [1], seed=0), "A")
    b = Phase(cfg, TaskMixture([get_task("reverse")], [1], seed=1), "B")
    train_sequential(fresh(), [a, b], tmp_path)
    train_sequential(fresh(), [b, a], tmp_path)
    assert len(list(tmp_path.glob("phase-0-*.safetensors"))) == 2
