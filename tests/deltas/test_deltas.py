"""Streaming delta analysis against plain in-memory computations; patches and grafts; CLI errors."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_runner import cli
from taskloc.deltas import GRID, concentration_curve, delta_stats, global_topk_mask, parse_top
from taskloc.deltas.analysis import analyse
from taskloc.deltas.selection import MaskSink
from taskloc.deltas.sources import DictSource
from taskloc.errors import ConfigError
from taskloc.io import open_checkpoint


def _pair(seed=0, dtype=torch.float32):
    """Base and tuned with many exact ties: values on a 1/64 grid, so differences are exact."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"tok_emb.weight": (20, 8), "blocks.0.attn.qkv.weight": (24, 8), "blocks.0.attn.qkv.bias": (24,),
              "blocks.1.mlp.fc_in.weight": (32, 8), "ln_final.weight": (8,)}
    base = {n: torch.round(torch.randn(s, generator=g) * 16) / 16 for n, s in shapes.items()}
    tuned = {n: b + torch.round(torch.randn(b.shape, generator=g) * 3) / 64 for n, b in base.items()}
    tuned["ln_final.weight"] = base["ln_final.weight"].clone()  # one tensor unchanged
    return {n: t.to(dtype) for n, t in base.items()}, {n: t.to(dtype) for n, t in tuned.items()}


def _reference_shares(values: torch.Tensor, power: int) -> list[float]:
    """Plain sort-based Lorenz shares, written independently of taskloc; sums are exactly rounded
    (math.fsum), since a running float64 sum drifts by ~1e-12 over a few 100k entries."""
    v = values.double().abs().pow(power).sort(descending=True).values.tolist()
    total, n, out = math.fsum(v), len(v), []
    for q in GRID:
        whole = math.floor(q * n)
        top = math.fsum(v[:whole]) + ((q * n - whole) * v[whole] if whole < n else 0)
        out.append(top / total if total > 0 else q)
    return out


def _reference_mask(deltas: dict, k: int) -> torch.Tensor:
    """Top-k of the concatenated |delta|, ties in (tensor order, flat index) order via a stable sort."""
    flat = torch.cat([d.reshape(-1).float().abs() for d in deltas.values()])
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return mask


def test_streamed_curves_and_threshold_equal_in_memory_computation():
    base, tuned = _pair()
    report = delta_stats(base, tuned, top="5%")
    deltas = {n: tuned[n] - base[n] for n in base}
    flat = torch.cat([d.reshape(-1) for d in deltas.values()])
    assert report.total.curve_energy == pytest.approx(_reference_shares(flat, 2), abs=1e-12)
    assert report.total.curve_l1 == pytest.approx(_reference_shares(flat, 1), abs=1e-12)
    for s in report.tensors:
        assert s.curve_energy == pytest.approx(_reference_shares(deltas[s.name].reshape(-1), 2), abs=1e-12), s.name
    k = round(0.05 * flat.numel())
    kth = torch.kthvalue(-flat.abs(), k).values.neg().item()  # k-th largest |delta|
    assert report.selection.k == k and report.selection.threshold == kth
    assert report.selection.ties_at_threshold == int((flat.abs() == kth).sum()) > 1  # the test has ties
    assert sum(s.selected for s in report.tensors) == k
    mask = _reference_mask(deltas, k)
    sizes = [d.numel() for d in deltas.values()]
    assert [s.selected for s in report.tensors] == [int(m.sum()) for m in mask.split(sizes)]
    # exact totals and the Gini bound
    assert report.total.energy == pytest.approx(float((flat.double() ** 2).sum()), rel=1e-12)
    a = flat.abs().double().sort().values
    n = len(a)
    gini = float(((2 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1) * a).sum() / (n * a.sum()))
    assert gini - 2**-9 <= report.total.gini <= gini + 1e-12


@pytest.mark.parametrize("k", [0, 1, 7, 100, 333, 599, 1000])
@pytest.mark.parametrize("cap", [None, 0])  # cap 0 forces the third pass
def test_global_topk_mask_equals_sort_with_ties(k, cap):
    base, tuned = _pair(seed=3)
    deltas = {n: tuned[n] - base[n] for n in base}
    n_all = sum(d.numel() for d in deltas.values())
    if k > n_all:
        k = n_all
    if cap is None:
        masks = global_topk_mask(deltas, k)
    else:
        source = DictSource(deltas)
        sink = MaskSink(source.shapes)
        analyse(source, top=parse_top(str(k)), sink=sink, grid=(), rank_max_dim=0, candidate_cap=cap)
        masks = sink.masks()
    got = torch.cat([masks[n].reshape(-1) for n in deltas])
    assert torch.equal(got, _reference_mask(deltas, k))
    assert all(masks[n].shape == deltas[n].shape for n in deltas)


def _structured(seed=0, dtype=torch.float32):
    """Checkpoints big enough that the pre-pass samples them: Gaussian changes of different scales,
    a few rows changed a lot, untouched rows (exact zeros) and ties (values on a grid)."""
    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for i, rows in enumerate((300, 257, 400)):
        b = torch.randn(rows, 500, generator=g) * 0.02
        d = torch.randn(rows, 500, generator=g) * 1e-4 * (1 + 2 * i)
        d[torch.randint(0, rows, (6,), generator=g)] += torch.randn(6, 500, generator=g) * 3e-3
        d[: rows // 10] = 0  # untouched rows
        d[rows // 10: rows // 5] = torch.round(d[rows // 10: rows // 5] * 1e4) / 1e4  # ties
        name = f"blocks.{i}.mlp.fc_in.weight"
        base[name], tuned[name] = b.to(dtype), (b + d).to(dtype)
    return base, tuned


def _check_against_sorting(base, tuned, top, **kwargs):
    """Run the streaming analysis with a mask sink and compare everything exact with sorting."""
    from taskloc.deltas.sources import CheckpointPair
    from taskloc.io import MemoryCheckpoint

    source = CheckpointPair(MemoryCheckpoint(base), MemoryCheckpoint(tuned))
    sink = MaskSink(source.shapes)
    report = analyse(source, top=parse_top(top), sink=sink, rank_max_dim=0, **kwargs)
    deltas = {n: tuned[n].float() - base[n].float() for n in base}
    flat = torch.cat([d.reshape(-1) for d in deltas.values()])
    assert report.total.curve_energy == pytest.approx(_reference_shares(flat, 2), abs=1e-12)
    assert report.total.curve_l1 == pytest.approx(_reference_shares(flat, 1), abs=1e-12)
    for s in report.tensors:
        d = deltas[s.name].reshape(-1)
        assert s.curve_energy == pytest.approx(_reference_shares(d, 2), abs=1e-12), s.name
        assert s.curve_l1 == pytest.approx(_reference_shares(d, 1), abs=1e-12), s.name
        assert s.n_changed == int((d != 0).sum()) and s.max_abs == float(d.abs().max())
        assert s.energy == pytest.approx(float((d.double() ** 2).sum()), rel=1e-12)
        assert s.base_energy == pytest.approx(float((base[s.name].double() ** 2).sum()), rel=1e-5)
    k = report.selection.k
    masks = sink.masks()
    got = torch.cat([masks[n].reshape(-1) for n in deltas])
    assert torch.equal(got, _reference_mask(deltas, k)) and int(got.sum()) == k
    assert report.selection.threshold == float(flat.abs().sort(descending=True).values[k - 1])
    return report


@pytest.mark.parametrize("sample_entries", [None, 0, 2000])  # default / no prediction / a poor one
@pytest.mark.parametrize("top", ["1%", "20%"])
def test_sampled_prediction_never_changes_the_exact_results(sample_entries, top):
    kwargs = {} if sample_entries is None else {"sample_entries": sample_entries}
    report = _check_against_sorting(*_structured(), top, **kwargs)
    assert ("pass2_s" in report.timings) == (sample_entries == 0)  # no prediction: pass 2 fetches everything


@pytest.mark.parametrize("z_own", [3.0, 0.0])  # the default margin / none, so that some miss
def test_predicted_own_buckets_spare_the_second_sweep(monkeypatch, z_own):
    """Each tensor is swept once when its own curve's buckets are predicted from its sample; a
    missed bucket costs that tensor a lookup sweep, never exactness."""
    import taskloc.deltas.analysis as analysis
    import taskloc.deltas.predict as predict

    sweeps = []

    def counted(item, n, lut, moments, *args, **kwargs):
        sweeps.append(moments)
        return real(item, n, lut, moments, *args, **kwargs)

    real = analysis.sweep
    monkeypatch.setattr(analysis, "sweep", counted)
    monkeypatch.setattr(predict, "Z_OWN", z_own)
    base, tuned = _structured(seed=7)
    _check_against_sorting(base, tuned, "2%")  # own curves not predicted: tensors under OWN_ENTRIES
    unpredicted = sweeps.count(False)
    sweeps.clear()
    monkeypatch.setattr(predict, "OWN_ENTRIES", 1000)
    _check_against_sorting(base, tuned, "2%", sample_entries=20000)
    assert sweeps.count(True) == len(base) and unpredicted == len(base)
    assert (sweeps.count(False) == 0) == (z_own > 0)


def test_missed_predictions_are_fetched_by_pass_2(monkeypatch):
    import taskloc.deltas.predict as predict

    monkeypatch.setattr(predict, "Z", 0.0)  # windows without margins miss
    report = _check_against_sorting(*_structured(seed=1), "5%", sample_entries=300)
    assert "pass2_s" in report.timings


def test_candidates_beyond_the_cap_are_selected_by_pass_2():
    base, tuned = _structured(seed=2)
    n = sum(t.numel() for t in base.values())
    report = _check_against_sorting(base, tuned, "2%", candidate_cap=n // 100)
    assert "pass2_s" in report.timings and "pass3_s" not in report.timings


def test_torch_kernel_equals_numpy_kernel(monkeypatch):
    from taskloc.deltas import sweep

    monkeypatch.setattr(sweep, "NUMPY_ON_CPU", False)  # the accelerator code path, on CPU
    _check_against_sorting(*_structured(seed=3), "1%")


def test_threaded_sweeps_give_the_same_report(monkeypatch):
    from dataclasses import asdict


    base, tuned = _structured(seed=5)
    reports = []
    for workers in (1, 2):
        monkeypatch.setenv("TASKLOC_THREADS", str(workers))
        reports.append(_check_against_sorting(base, tuned, "2%"))
    one, two = (asdict(r) for r in reports)
    one.pop("timings"), two.pop("timings")
    assert one == two


@pytest.mark.parametrize("rate", ["1%", "30%"])
def test_compiled_loop_equals_numpy_steps(monkeypatch, rate):
    from dataclasses import asdict

    from taskloc.deltas import kernel, predict, radix, sweep

    if not kernel.AVAILABLE:
        pytest.skip("numba is not installed: only the numpy path exists")
    base, tuned = _structured(seed=6)
    base["bf16"], tuned["bf16"] = base.pop("blocks.2.mlp.fc_in.weight").bfloat16(), tuned.pop("blocks.2.mlp.fc_in.weight").bfloat16()
    monkeypatch.setattr(predict, "OWN_ENTRIES", 1000)  # own buckets predicted and streamed apart
    monkeypatch.setattr(sweep, "FLUSH", 1 << 12)  # many flushes of the packed accumulators
    monkeypatch.setattr(sweep, "ROOM", kernel.CHUNK)  # the compiled sweep stops and resumes every chunk
    monkeypatch.setattr(sweep, "BLOCK", 1000)  # blocks not a multiple of the chunk (the bf16 pair)
    reports = []
    for compiled in (True, False):
        monkeypatch.setattr(sweep, "COMPILED_ON_CPU", compiled)
        monkeypatch.setattr(radix, "COMPILED_COUNTS", compiled)
        reports.append(asdict(_check_against_sorting(base, tuned, rate)))
    exact, base_norms = zip(*(_split_base_norms(r) for r in reports))
    assert exact[0] == exact[1]  # every integer-derived figure, bit for bit
    assert base_norms[0] == pytest.approx(base_norms[1], rel=1e-6)  # float32 dot vs float64 sum of base^2


def _split_base_norms(report: dict) -> tuple[dict, list[float]]:
    """A report without its timings, and the figures that depend on sum base^2 (summed in another
    order by the compiled loop), taken out of it."""
    taken: list[float] = []

    def strip(x):
        if isinstance(x, dict):
            out = {}
            for key, value in x.items():
                if key in ("base_energy", "rel_norm") and value is not None:
                    taken.append(value)
                elif key != "timings":
                    out[key] = strip(value)
            return out
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(report), taken


def test_bfloat16_checkpoints_are_exact():
    _check_against_sorting(*_structured(seed=4, dtype=torch.bfloat16), "3%")


def test_denormal_deltas_are_counted_as_changes():
    base = {"w": torch.zeros(1000)}
    tuned = {"w": torch.zeros(1000)}
    tuned["w"][::3] = torch.tensor(1e-44)  # denormal: bucket 0, like the zeros
    tuned["w"][1::7] = 2e-3
    report = delta_stats(base, tuned, top="10%")
    assert report.tensors[0].n_changed == int((tuned["w"] != 0).sum())
    assert report.tensors[0].max_abs == float(torch.tensor(2e-3))


def test_patch_from_the_third_pass_equals_the_two_pass_patch(tmp_path):
    from taskloc.deltas.patch import PatchSink, open_patch
    from taskloc.deltas.sources import CheckpointPair
    from taskloc.io import MemoryCheckpoint

    base, tuned = _pair(seed=5)
    deltas = {n: tuned[n] - base[n] for n in base}
    k = 250
    patched = []
    for cap in (None, 0):
        source = CheckpointPair(MemoryCheckpoint(base), MemoryCheckpoint(tuned))
        sink = PatchSink(tmp_path / f"p{cap}.safetensors", source.shapes, source.dtypes, source.names)
        report = analyse(source, top=parse_top(str(k)), sink=sink, candidate_cap=cap)
        sink.write({})
        sink.close()
        assert any("third pass" in note for note in report.notes) == (cap == 0)
        patch = open_patch(tmp_path / f"p{cap}.safetensors")
        mask = torch.zeros(sum(d.numel() for d in deltas.values()), dtype=torch.bool)
        offset = 0
        for n, d in deltas.items():
            if n in patch.names():
                idx, values = patch.get(n)
                assert torch.equal(values, tuned[n].reshape(-1)[idx])
                mask[offset + idx] = True
            offset += d.numel()
        patched.append(mask)
    assert torch.equal(patched[0], _reference_mask(deltas, k)) and torch.equal(patched[1], patched[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.safetensors", "pNone.safetensors"]  # spools removed


def test_delta_of_a_checkpoint_with_itself_is_exactly_zero_and_well_defined():
    base, _ = _pair()
    report = delta_stats(base, {n: t.clone() for n, t in base.items()}, top="1%")
    assert report.total.energy == 0 and report.total.n_changed == 0 and report.total.rel_norm == 0
    assert report.total.curve_energy == pytest.approx(list(GRID)) and report.total.null_energy == pytest.approx(list(GRID))
    values = [report.total.gini, report.total.hoyer] + [x for s in report.tensors for x in (s.gini, s.hoyer, *s.curve_l1)]
    assert not any(math.isnan(v) for v in values)
    assert report.selection.threshold == 0.0 and sum(s.selected for s in report.tensors) == report.selection.k
    assert report.tensors[0].selected == report.selection.k  # ties at zero go to the first tensor first


def test_concentration_of_a_few_large_entries_beats_the_null():
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(10_000, generator=g) * 1e-3
    sparse[:50] = 1.0  # 0.5% of entries hold almost all the energy
    report = delta_stats({"w": torch.zeros(10_000)}, {"w": sparse})
    i = GRID.index(0.01)
    assert report.total.curve_energy[i] > 0.99 > report.total.null_energy[i] * 5
    curve = concentration_curve([sparse])
    assert curve["energy"] == pytest.approx(report.total.curve_energy)


def test_effective_rank_and_profile():
    u, v = torch.randn(32, 2), torch.randn(2, 16)
    base = {"blocks.0.attn.out.weight": torch.zeros(32, 16), "blocks.1.mlp.fc_out.weight": torch.zeros(32, 16)}
    tuned = {"blocks.0.attn.out.weight": u @ v, "blocks.1.mlp.fc_out.weight": torch.zeros(32, 16)}
    report = delta_stats(base, tuned, top="10%")
    assert 1.0 < report.tensors[0].effective_rank <= 2.0 and report.tensors[1].effective_rank == 0.0
    by_kind = {r["kind"]: r for r in report.profile["kind"]}
    assert by_kind["attn_out"]["energy_share"] == 1.0 and by_kind["attn_out"]["topk_share"] == 1.0
    assert by_kind["mlp_out"]["energy_share"] == 0.0
    assert [r["layer"] for r in report.profile["layer"]] == [0, 1]


@pytest.mark.parametrize("text, fraction, count", [("1%", 0.01, None), ("0.5%", 0.005, None), ("0.01", 0.01, None),
                                                    ("1000", None, 1000), ("100%", 1.0, None), ("0", None, 0)])
def test_parse_top(text, fraction, count):
    top = parse_top(text)
    assert (top.fraction, top.count) == (fraction, count)


@pytest.mark.parametrize("text, message", [("1.5", "ambiguous"), ("150%", "between 0% and 100%"), ("abc", "not a size")])
def test_parse_top_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_top(text)


# --- CLI: patches and grafts -----------------------------------------------------------------------

def _files(tmp_path, dtype=torch.float32):
    base, tuned = _pair(dtype=dtype)
    save_file(base, str(tmp_path / "base.safetensors"), metadata={"step": "0"})
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    return tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"


def _cli(args, capsys):
    return cli(args, capsys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graft_of_full_patch_is_tuned_bit_for_bit_and_empty_patch_is_base(tmp_path, capsys, dtype):
    base, tuned = _files(tmp_path, dtype)
    for top, want in (("100%", tuned), ("0%", base)):
        patch, out = tmp_path / f"p{top[:-1]}.safetensors", tmp_path / f"g{top[:-1]}.safetensors"
        assert _cli(["delta", base, tuned, "--top", top, "--patch", patch], capsys)[0] == 0
        assert _cli(["graft", base, patch, "--out", out], capsys)[0] == 0
        got, ref = load_file(str(out)), load_file(str(want))
        assert got.keys() == ref.keys() and all(torch.equal(got[n], ref[n]) and got[n].dtype == dtype for n in ref)
        with safe_open(str(out), "pt") as f:
            assert f.metadata()["step"] == "0"  # the base's metadata is carried


def test_partial_patch_holds_exactly_the_top_k_and_scale_interpolates(tmp_path, capsys):
    base, tuned = _files(tmp_path)
    patch = tmp_path / "p.safetensors"
    assert _cli(["delta", base, tuned, "--top", "5%", "--patch", patch, "--json", tmp_path / "r.json"], capsys)[0] == 0
    b, t = load_file(str(base)), load_file(str(tuned))
    deltas = {n: t[n] - b[n] for n in b}
    mask = _reference_mask(deltas, round(0.05 * sum(d.numel() for d in deltas.values())))
    with safe_open(str(patch), "pt") as f:
        meta = f.metadata()
        chosen = torch.zeros_like(mask)
        offset = 0
        for n, d in deltas.items():
            if f"{n}:indices" in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                idx = f.get_tensor(f"{n}:indices")
                assert idx.dtype == torch.int32 and torch.equal(f.get_tensor(f"{n}:values"), t[n].reshape(-1)[idx.long()])
                chosen[offset + idx.long()] = True
            offset += d.numel()
    assert torch.equal(chosen, mask)
    assert meta["k"] == str(int(mask.sum())) and meta["base_fingerprint"].startswith("sha256:") and meta["top"] == "5%"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["selection"]["k"] == int(mask.sum()) and len(report["tensors"]) == 5
    out = tmp_path / "half.safetensors"
    assert _cli(["graft", base, patch, "--out", out, "--scale", "0.5"], capsys)[0] == 0
    half = load_file(str(out))
    offset = 0
    for n, d in deltas.items():
        m = mask[offset:offset + d.numel()].view(d.shape)
        assert torch.equal(half[n][m], b[n][m] + 0.5 * d[m]) and torch.equal(half[n][~m], b[n][~m])
        offset += d.numel()


def test_delta_and_graft_on_sharded_hf_folder_and_lora_adapter(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "base", max_shard_size="4KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").exists()
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()

    patch = tmp_path / "lora.safetensors"
    code, out, err = _cli(["delta", tmp_path / "base", tmp_path / "adapter", "--top", "100%", "--patch", patch], capsys)
    assert code == 0, err
    assert "r=2" in out and "peft-lora" in out and "(19 unchanged)" in out
    code, _, err = _cli(["graft", tmp_path / "base", patch, "--out", tmp_path / "grafted"], capsys)
    assert code == 0, err
    shards = sorted(p.name for p in (tmp_path / "base").glob("*.safetensors"))
    assert sorted(p.name for p in (tmp_path / "grafted").glob("*.safetensors")) == shards and len(shards) > 1
    assert (tmp_path / "grafted" / "config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "grafted").state_dict()
    assert all(torch.equal(loaded[n], merged[n]) for n in merged)


# --- CLI: bad input --------------------------------------------------------------------------------

def _save(path, tensors):
    save_file(tensors, str(path))
    return path


BAD = {
    "missing": (lambda b, t: {k: v for k, v in t.items() if k != "tok_emb.weight"},
                r"the tuned checkpoint .* lacks 1 tensors of the base \('tok_emb\.weight'\)"),
    "extra": (lambda b, t: {**t, "extra.weight": torch.ones(2)}, r"has 1 tensors the base lacks \('extra\.weight'\)"),
    "shape": (lambda b, t: {**t, "blocks.0.attn.qkv.bias": torch.ones(12)},
              r"tensor 'blocks\.0\.attn\.qkv\.bias' has shape \(24,\) in the base but \(12,\) in the tuned checkpoint"),
    "dtype": (lambda b, t: {**t, "tok_emb.weight": t["tok_emb.weight"].half()},
              r"tensor 'tok_emb\.weight' is float32 in the base but float16 in the tuned checkpoint"),
    "nan": (lambda b, t: {**t, "blocks.1.mlp.fc_in.weight": t["blocks.1.mlp.fc_in.weight"].index_fill(0, torch.tensor([3]), float("nan"))},
            r"tensor 'blocks\.1\.mlp\.fc_in\.weight' holds NaN or Inf in the tuned checkpoint"),
    "inf": (lambda b, t: {**t, "ln_final.weight": torch.full((8,), float("inf"))},
            r"tensor 'ln_final\.weight' holds NaN or Inf in the tuned checkpoint"),
}


def _assert_one_line_error(code, err, pattern):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_mismatched_or_broken_checkpoints_exit_2_with_one_line_and_no_output(tmp_path, capsys, case):
    base, tuned = _pair()
    make, pattern = BAD[case]
    b = _save(tmp_path / "base.safetensors", base)
    t = _save(tmp_path / "tuned.safetensors", make(base, tuned))
    outs = [tmp_path / "p.safetensors", tmp_path / "r.json", tmp_path / "r.html"]
    code, _, err = _cli(["delta", b, t, "--patch", outs[0], "--json", outs[1], "--html", outs[2]], capsys)
    _assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "tuned.safetensors"]


@pytest.mark.parametrize("damage, pattern", [(lambda raw: raw[:-10], r"is truncated: tensor"),
                                             (lambda raw: raw[:8] + b"[" + raw[9:], r"has a corrupt header")])
def test_damaged_file_on_the_cli(tmp_path, capsys, damage, pattern):
    b, t = _files(tmp_path)
    t.write_bytes(damage(t.read_bytes()))
    code, _, err = _cli(["delta", b, t, "--patch", tmp_path / "p.safetensors"], capsys)
    _assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "p.safetensors").exists()


def test_pickle_refused_on_the_cli_and_accepted_with_the_flag(tmp_path, capsys):
    base, tuned = _pair()
    torch.save(base, tmp_path / "base.pt")
    t = _save(tmp_path / "tuned.safetensors", tuned)
    code, _, err = _cli(["delta", tmp_path / "base.pt", t], capsys)
    _assert_one_line_error(code, err, r"base\.pt is a pickle checkpoint, which can run code when loaded; refused.*--allow-pickle")
    code, out, err = _cli(["delta", tmp_path / "base.pt", t, "--allow-pickle", "--patch", tmp_path / "p.safetensors"], capsys)
    assert code == 0, err
    assert "(pickle)" in out
    code, _, err = _cli(["graft", tmp_path / "base.pt", tmp_path / "p.safetensors", "--out", tmp_path / "g.safetensors",
                         "--allow-pickle"], capsys)
    assert code == 0, err


def test_patch_on_the_wrong_base_is_refused(tmp_path, capsys):
    b, t = _files(tmp_path)
    patch = tmp_path / "p.safetensors"
    assert _cli(["delta", b, t, "--top", "10%", "--patch", patch], capsys)[0] == 0
    other = _save(tmp_path / "other.safetensors", _pair(seed=9)[0])
    out = tmp_path / "g.safetensors"
    code, _, err = _cli(["graft", other, patch, "--out", out], capsys)
    _assert_one_line_error(code, err, r"was made for another base \(fingerprint sha256:.*--allow-fingerprint-mismatch")
    assert not out.exists()
    code, _, err = _cli(["graft", other, patch, "--out", out, "--allow-fingerprint-mismatch"], capsys)
    assert code == 0 and "did not match" in err and out.exists()
    code, _, err = _cli(["graft", b, b, "--out", tmp_path / "x.safetensors"], capsys)
    _assert_one_line_error(code, err, r"is not a taskloc patch")


@pytest.mark.parametrize("args, pattern", [
    (["--top", "1.5"], r"--top 1\.5 is ambiguous"),
    (["--top", "99999999"], r"asks for 99999999 entries but the checkpoints hold only \d+"),
    (["--patch", "{dir}/p.bin"], r"--patch .* must end in \.safetensors"),
    (["--patch", "{dir}/base.safetensors"], r"output .*base\.safetensors is also an input"),
])
def test_bad_options_on_the_cli(tmp_path, capsys, args, pattern):
    b, t = _files(tmp_path)
    code, _, err = _cli(["delta", b, t, *[a.format(dir=tmp_path) for a in args]], capsys)
    _assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "tuned.safetensors"]


def test_report_files_and_terminal_tables(tmp_path, capsys):
    b, t = _files(tmp_path)
    code, out, err = _cli(["delta", b, t, "--top", "0.5", "--json", tmp_path / "r.json", "--html", tmp_path / "r.html"], capsys)
    assert code == 0, err
    assert "selection: top 50% of 640 entries = 320" in out  # the unit of --top 0.5 is said out loud
    for heading in ("share held by the top k% of all entries", "tensors by delta energy", "profile by kind", "profile by layer"):
        assert heading in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "taskloc-delta-report/1" and report["grid_percent"][0] == 0.01
    assert {r["kind"] for r in report["profile"]["kind"]} == {"embed", "attn_qkv", "mlp_in", "norm"}
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert open_checkpoint(b).names()  # inputs untouched
