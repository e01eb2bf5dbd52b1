"""fastdoctor's decode loop behind HF's own `model.generate`: transformers 5 accepts a callable as
`custom_generate`, prepares the inputs and the generation_config as usual, then hands the loop over.

    patient.generate(ids, custom_generate=fastdoctor.guided(doctors=[doctor], betas=[0.5]),
                     do_sample=True, top_p=0.9, max_new_tokens=64)

Honoured generation_config fields: max_new_tokens / max_length, do_sample, temperature, top_k, top_p,
eos_token_id, pad_token_id. Any other field set away from its neutral value (beams, repetition penalty,
min_length, ...) is an error, as is a logits processor or stopping criterion fastdoctor cannot honour.
A streamer given to model.generate receives every step's tokens and the end, as HF defines it.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from .generate import generate

# Fields whose neutral value is the only one the fused loop reproduces.
_NEUTRAL = {
    "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "min_length": 0, "min_new_tokens": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "diversity_penalty": 0.0, "min_p": 0.0, "top_h": 0.0, "penalty_alpha": 0.0, "guidance_scale": 1.0,
    "renormalize_logits": False, "remove_invalid_values": False, "output_scores": False, "output_logits": False,
    "output_attentions": False, "output_hidden_states": False, "return_dict_in_generate": False,
    "token_healing": False,
}
_UNSET = ("bad_words_ids", "force_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
          "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "stop_strings",
          "max_time", "watermarking_config", "prompt_lookup_num_tokens", "assistant_early_exit")
_HONOURED_PROCESSORS = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"}
_HONOURED_CRITERIA = {"MaxLengthCriteria", "EosTokenCriteria"}


def _check_config(config, logits_processor, stopping_criteria) -> None:
    for name, neutral in _NEUTRAL.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral:
            raise ValueError(f"generation_config.{name}={value!r}: fastdoctor.guided does not support it "
                             f"(only {neutral!r}); drop it or call model.generate without custom_generate")
    for name in _UNSET:
        if getattr(config, name, None) is not None:
            raise ValueError(f"generation_config.{name}: fastdoctor.guided does not support it")
    extra = [type(p).__name__ for p in logits_processor or () if type(p).__name__ not in _HONOURED_PROCESSORS]
    if extra:
        raise ValueError(f"logits_processor: {extra} cannot run inside fastdoctor's fused sampling step")
    extra = [type(c).__name__ for c in stopping_criteria or () if type(c).__name__ not in _HONOURED_CRITERIA]
    if extra:
        raise ValueError(f"stopping_criteria: {extra} are not supported (max length and EOS are)")


class _PromptAlreadyPut:
    """model.generate's own streamer, handed on: HF has already put the prompt, so the first put is dropped."""

    def __init__(self, streamer):
        self.streamer, self.prompt_seen = streamer, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.streamer.put(value)
        self.prompt_seen = True

    def end(self) -> None:
        self.streamer.end()


def _callers_streamer(frame):
    """The streamer model.generate was given. transformers 5 keeps it from a callable custom_generate (it puts
    the prompt on it, then never hands it on, so a consumer waited for ever); it is the caller's local."""
    value = frame.f_locals.get("streamer") if frame is not None and frame.f_code.co_name == "generate" else None
    return value if value is not None and callable(getattr(value, "put", None)) else None


def guided(*, doctors: Sequence = (), alpha=1.0, betas=None, router=None, seed=None, generator=None,
           streamer=None, vocab_size: int | None = None, eos_check_interval: int | None = None,
           compile: bool = False):
    """A `custom_generate` callable that runs fastdoctor.generate with these steering settings and the
    sampling settings of HF's generation_config.

    streamer: here or to model.generate (not both): it receives the full HF protocol either way."""

    def custom_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                        synced_gpus=False, **model_kwargs):
        if generation_config is None:
            raise ValueError("generation_config: expected HF's prepared config (call through model.generate)")
        if synced_gpus:
            raise ValueError("synced_gpus: fastdoctor.guided runs on one device")
        _check_config(generation_config, logits_processor, stopping_criteria)
        sampling = dict(temperature=generation_config.temperature or 1.0, top_k=generation_config.top_k or 0,
                        top_p=generation_config.top_p or 1.0) if generation_config.do_sample else dict(temperature=0.0)
        max_length = generation_config.max_length
        if max_length is None:
            raise ValueError("generation_config: set max_new_tokens or max_length")
        eos = generation_config.eos_token_id
        handed = _callers_streamer(sys._getframe(1))
        if handed is not None and streamer is not None:
            raise ValueError("streamer: given to both guided() and model.generate(); give it to one of them")
        return generate(model, input_ids, doctors=doctors, alpha=alpha, betas=betas, router=router,
                        attention_mask=model_kwargs.get("attention_mask"),
                        max_new_tokens=max(max_length - input_ids.shape[1], 0), seed=seed, generator=generator,
                        eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else eos,
                        pad_token_id=generation_config.pad_token_id,
                        streamer=_PromptAlreadyPut(handed) if handed is not None else streamer, vocab_size=vocab_size,
                        eos_check_interval=eos_check_interval, compile=compile, **sampling)

    return custom_generate
