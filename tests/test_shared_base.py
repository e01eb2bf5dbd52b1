"""The shared-base forward (fastdoctor.shared_base): the patient and its LoRA adapter doctors in one stacked
batch equal the same doctors run as separate peft models (unmerged), step by step; the planner and the pool
of stacked copies."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import PeftModel

import fastdoctor
from fastdoctor import adapters, shared_base, weights
from conftest import VOCAB, Opaque, left_padded_prompts, random_lora, tiny_model

FAMILIES = ["llama", "qwen2", "gpt2"]


def random_adapter(patient, folder, seed: int, rank: int = 4):
    """A peft LoRA of `patient` with random non-zero A and B, saved in peft's format to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    adapters.save_adapter(random_lora(patient, seed=seed, rank=rank), folder)  # peft's files and base.json
    return folder


def peft_copy(patient, folder):
    """The adapter as a plain peft model over a private copy of the patient."""
    with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 marks deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(copy.deepcopy(patient), str(folder)).eval()


def shared_and_separate(patient, folder):
    """The adapter loaded as fastdoctor does (an AdapterDoctor, run in the patient's stacked forward) and as a
    peft model over a private copy of the patient that generate runs as a separate model."""
    return adapters.load_adapter(folder, patient), Opaque(peft_copy(patient, folder))


class LogitRecorder:
    """A weights hook that records each step's logits and returns fixed weights."""

    def __init__(self, weights):
        self.weights, self.steps = torch.tensor(weights), []

    def __call__(self, logits):
        self.steps.append([z.clone() for z in logits])
        return self.weights.expand(logits[0].shape[0], -1).clone()


def run(patient, doctors, betas, **kwargs):
    ids, mask = left_padded_prompts()
    recorder = LogitRecorder([1.0, *betas])
    out = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=doctors, router=recorder, max_new_tokens=6,
                              **kwargs)
    return out, recorder.steps


def assert_same_run(a, b):
    (tokens_a, steps_a), (tokens_b, steps_b) = a, b
    assert torch.equal(tokens_a, tokens_b)
    assert len(steps_a) == len(steps_b)
    for step_a, step_b in zip(steps_a, steps_b):
        for za, zb in zip(step_a, step_b):
            torch.testing.assert_close(za, zb, rtol=1e-4, atol=5e-5)  # fp32: the delta sums in another order


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["one", "two", "mixed"])
@pytest.mark.parametrize("sampled", [False, True])
def test_the_stacked_forward_equals_separate_peft_models(tmp_path, family, kind, sampled):
    patient = tiny_model(family, seed=0)
    first = shared_and_separate(patient, random_adapter(patient, tmp_path / "a", seed=1))
    second = shared_and_separate(patient, random_adapter(patient, tmp_path / "b", seed=2))
    other = tiny_model(family, seed=3)  # a separate model: it runs in its own lane either way
    if kind == "one":
        shared, separate, betas = [first[0]], [first[1]], [0.7]
    elif kind == "two":
        shared, separate, betas = [first[0], second[0]], [first[1], second[1]], [0.7, 0.4]
    else:
        shared, separate, betas = [first[0], other, second[0]], [first[1], other, second[1]], [0.7, 0.3, 0.4]
    sampling = dict(temperature=1.0, top_p=0.9, seed=[5, 6, 7]) if sampled else dict(temperature=0.0)
    assert_same_run(run(patient, shared, betas, **sampling), run(patient, separate, betas, **sampling))


def test_rows_that_finish_early_match_too(tmp_path):
    patient = tiny_model("llama", seed=0)
    shared, separate = shared_and_separate(patient, random_adapter(patient, tmp_path / "a", seed=1))
    reference, _ = run(patient, [separate], [1.0], temperature=0.0)
    eos = int(reference[0, -4])  # row 0 emits it mid-run, so the rows finish at different steps
    a = run(patient, [shared], [1.0], temperature=0.0, eos_token_id=eos, pad_token_id=0)
    b = run(patient, [separate], [1.0], temperature=0.0, eos_token_id=eos, pad_token_id=0)
    assert_same_run(a, b)
    assert (a[0][0, 7:] == 0).any()


def test_the_taro_router_runs_on_the_stacked_forward(tmp_path):
    from fastdoctor import taro

    patient = tiny_model("llama", seed=0)
    shared, separate = shared_and_separate(patient, random_adapter(patient, tmp_path / "a", seed=1))
    torch.manual_seed(0)
    router = taro.Router(VOCAB, k=5, embed_dim=4, hidden=16)
    with torch.no_grad():
        router.out.weight.normal_(0.0, 1.0)
    ids, mask = left_padded_prompts()
    outs = []
    for doctor in (shared, separate):
        steering = taro.RoutedSteering(router)
        out = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], router=steering,
                                  temperature=1.0, seed=[1, 2, 3], max_new_tokens=6)
        outs.append((out, torch.stack(steering.trace)))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)


def test_a_bf16_patient_reads_bf16_adapter_weights_and_matches_peft(tmp_path):
    """In bf16 the stacked copy keeps the LoRA weights in bf16 (half the bytes per step); for an adapter whose
    weights are bf16 values (as the bundled doctors are saved) that is exact, so the prefill logits equal the
    separate peft model's within bf16 rounding of the base matmuls."""
    patient = tiny_model("llama", seed=0).to(torch.bfloat16)
    folder = random_adapter(patient, tmp_path / "a", seed=1)
    lm = peft_copy(patient, folder)
    with torch.no_grad():  # the adapter's weights as bf16 values (peft may hold them in fp32)
        for name, p in lm.named_parameters():
            if "lora_" in name:
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    adapters.save_adapter(lm, folder)
    shared, separate = shared_and_separate(patient, folder)
    assert shared.dtype == torch.bfloat16
    _, a = run(patient, [shared], [0.7], temperature=0.0)
    _, b = run(patient, [separate], [0.7], temperature=0.0)
    for za, zb in zip(a[0], b[0]):  # the prefill step: identical inputs
        torch.testing.assert_close(za.float(), zb.float(), rtol=2e-2, atol=2e-2)
    assert not torch.equal(a[0][1], a[0][0])  # the doctor's lane differs from the patient's
    entry, = shared_base._POOL[patient]
    buffers = [w for _, projection in entry.built.projections for w in (*projection.shrink, *projection.expand)]
    assert buffers and all(w.dtype == torch.bfloat16 for w in buffers)


def test_the_patient_and_the_doctors_own_forwards_are_not_called(tmp_path):
    """The stacked lane replaces them: one forward per step for all three models."""
    patient = tiny_model("llama", seed=0)
    doctors = [adapters.load_adapter(random_adapter(patient, tmp_path / n, seed=s), patient)
               for n, s in (("a", 1), ("b", 2))]
    run(patient, doctors, [0.5, 0.5], temperature=0.0)  # builds the stacked copy (it would copy the hooks below)
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in (patient,)]
    try:
        run(patient, doctors, [0.5, 0.5], temperature=0.0)
    finally:
        for h in handles:
            h.remove()
    assert calls == []


def test_merged_doctors_agree_within_tolerance(tmp_path):
    patient = tiny_model("llama", seed=0)
    folder = random_adapter(patient, tmp_path / "a", seed=1)
    shared, merged = adapters.load_adapter(folder, patient), peft_copy(patient, folder).merge_and_unload()
    _, a = run(patient, [shared], [1.0], temperature=0.0)
    _, b = run(patient, [merged], [1.0], temperature=0.0)
    for za, zb in zip(a[0], b[0]):  # the prefill step: same inputs, merged vs unmerged weights
        torch.testing.assert_close(za, zb, rtol=1e-4, atol=1e-4)


def test_the_patient_is_unchanged_by_a_guided_call(tmp_path):
    patient = tiny_model("llama", seed=0)
    ids, mask = left_padded_prompts()
    greedy = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    before = patient.generate(ids, **greedy)
    modules_before = [(n, type(m)) for n, m in patient.named_modules()]
    grads_before = [p.requires_grad for p in patient.parameters()]
    doctor = adapters.load_adapter(random_adapter(patient, tmp_path / "a", seed=1), patient)
    run(patient, [doctor], [1.0], temperature=0.0)
    assert torch.equal(patient.generate(ids, **greedy), before)
    assert [(n, type(m)) for n, m in patient.named_modules()] == modules_before
    assert [p.requires_grad for p in patient.parameters()] == grads_before
    assert torch.equal(fastdoctor.generate(patient, ids, attention_mask=mask, max_new_tokens=6, temperature=0.0,
                                           pad_token_id=0), before)


def test_an_adapter_loaded_against_another_base_is_refused(tmp_path):
    patient, other = tiny_model("llama", seed=0), tiny_model("llama", seed=5)
    folder = random_adapter(patient, tmp_path / "a", seed=1)
    fingerprint = weights.fingerprint(patient)
    assert weights.fingerprint(copy.deepcopy(patient).to(torch.bfloat16).float()) == fingerprint  # dtype: no matter
    with pytest.raises(ValueError, match="trained on another base model"):
        adapters.load_adapter(folder, other, expected_fingerprint=fingerprint)
    (folder / "base.json").unlink()  # no record: the file's keys still have to fit the patient's modules
    with pytest.raises(ValueError, match="not a projection of this patient"):
        adapters.load_adapter(folder, tiny_model("gpt2", seed=0))


@pytest.mark.parametrize("damage,match", [
    (lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 40), "cannot read the adapter weights"),
    (lambda f: (f / "adapter_config.json").write_text("{"), "not a readable peft adapter config"),
    (lambda f: (f / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"})), "expected a peft LoRA"),
])
def test_a_damaged_adapter_gives_a_clear_error(tmp_path, damage, match):
    patient = tiny_model("llama", seed=0)
    folder = random_adapter(patient, tmp_path / "a", seed=1)
    damage(folder)
    with pytest.raises(ValueError, match=match):
        adapters.load_adapter(folder, patient)


def test_threads_with_different_batch_sizes_each_get_their_tokens(tmp_path):
    import threading

    patient = tiny_model("llama", seed=0)
    doctor = adapters.load_adapter(random_adapter(patient, tmp_path / "a", seed=1), patient)
    ids, mask = left_padded_prompts(batch=3)
    jobs = {1: (ids[:1], mask[:1]), 3: (ids, mask)}

    def guided(rows):
        return fastdoctor.generate(patient, jobs[rows][0], attention_mask=jobs[rows][1], doctors=[doctor],
                                   max_new_tokens=8, temperature=0.0)

    serial = {rows: guided(rows) for rows in jobs}
    results, errors = {}, []

    def worker(rows):
        try:
            for _ in range(5):
                assert torch.equal(guided(rows), serial[rows])
            results[rows] = True
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(rows,)) for rows in (1, 3, 1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(results) == {1, 3}


def test_the_compiled_decode_step_runs_the_stacked_forward(tmp_path):
    # compile=True traces the stacked copy, its StackedLoRA forwards and the segmented_lora_ op (through its
    # fake kernel): the tokens equal the eager stacked path and the separate peft models.
    patient = tiny_model("qwen2", seed=0)
    shared, separate = shared_and_separate(patient, random_adapter(patient, tmp_path / "a", seed=1))
    ids, mask = left_padded_prompts()
    kwargs = dict(attention_mask=mask, betas=[0.7], max_new_tokens=8)
    for sampling in (dict(temperature=0.0), dict(seed=[1, 2, 3])):
        compiled = fastdoctor.generate(patient, ids, doctors=[shared], compile=True, **kwargs, **sampling)
        again = fastdoctor.generate(patient, ids, doctors=[shared], compile=True, **kwargs, **sampling)
        eager = fastdoctor.generate(patient, ids, doctors=[shared], **kwargs, **sampling)
        reference = fastdoctor.generate(patient, ids, doctors=[separate], **kwargs, **sampling)
        assert torch.equal(compiled, eager) and torch.equal(again, eager) and torch.equal(eager, reference)


def test_each_mode_installs_a_forward_it_can_run(tmp_path):
    """Eager decode gets the C++-bound projection forward; a compiled decode step gets the op, which dynamo traces
    whole (fullgraph: a graph break per projection would silently run 200 small graphs). Both give one result,
    each in a stacked copy of its own, and the patient's own modules are left alone."""
    from fastdoctor import _C

    patient = tiny_model("llama", seed=0)
    shared = adapters.load_adapter(random_adapter(patient, tmp_path / "a", seed=1), patient)
    with torch.inference_mode():
        with shared_base.stacked(patient, [shared], compiled=False) as eager_model, \
                shared_base.stacked(patient, [shared], compiled=True) as compiled_model:
            assert eager_model is not compiled_model
            name = sorted(shared.projections)[0]
            eager_module, traced_module = eager_model.get_submodule(name), compiled_model.get_submodule(name)
            assert isinstance(eager_module.forward, _C.BoundLinearSegmentedLora)
            x = torch.randn(2, 1, eager_module.in_features)
            eager = eager_module(x)
            traced = torch.compile(traced_module.forward, fullgraph=True, dynamic=False)(x)
    assert torch.equal(eager, traced)
    assert all("forward" not in vars(m) for m in patient.modules())
