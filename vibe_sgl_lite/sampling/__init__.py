"""Sampling: per-request parameters and the batched sampler that applies them."""

from vibe_sgl_lite.sampling.params import FIELD_NAMES, SamplingParams
from vibe_sgl_lite.sampling.sampler import Sampler, SamplerOutput, TokenLogprobs

__all__ = ["FIELD_NAMES", "Sampler", "SamplerOutput", "SamplingParams", "TokenLogprobs"]
