"""Hardware presets for the engine simulator.

A preset is a vLLM configuration (batch and KV limits) plus a linear cost model of one
engine step. vLLM runs one forward pass per step over every scheduled sequence, so:

    step_ms = base_step_ms
            + ms_per_seq * sequences in the step
            + ms_per_prefill_token * prompt tokens computed in the step
            + ms_per_kv_ktoken * (KV-resident context tokens / 1000)

``base_step_ms`` is reading the weights once (decode is memory-bandwidth bound: ~16 GB
of bf16 Llama-3.1-8B weights per step), ``ms_per_seq`` the per-sequence sampling and
bookkeeping, ``ms_per_prefill_token`` the compute-bound prompt work, and
``ms_per_kv_ktoken`` the attention's KV reads (Llama-3-8B: 32 layers x 8 KV heads x 128
dims x K,V x 2 bytes = 128 KiB per token in bf16).

The numbers are approximations derived from datasheet bandwidth/FLOPS and published
vLLM benchmark figures for Llama-3-8B on these cards, not measurements of real hardware;
they aim at the right shape and order of magnitude (solo TTFT, per-token latency at
low and moderate batch, where the KV cache runs out), which is what fairness work needs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimPreset:
    """An engine configuration and its step-time model (see module docstring)."""

    name: str
    description: str
    max_num_seqs: int
    """Most sequences in one batch (vLLM ``--max-num-seqs``)."""
    kv_cache_tokens: int
    """KV cache capacity in tokens; admission and preemption are decided against it."""
    max_model_len: int
    """Longest prompt + completion a request may ask for (vLLM ``--max-model-len``)."""
    max_num_batched_tokens: int
    """Token budget of one step (vLLM ``--max-num-batched-tokens``); long prompts are
    prefilled in chunks of at most this many tokens (chunked prefill)."""
    base_step_ms: float
    """Fixed cost of a step: one pass over the weights."""
    ms_per_seq: float
    """Extra cost per sequence in the step (sampling, per-sequence kernels)."""
    ms_per_prefill_token: float
    """Cost per prompt token computed in the step (compute bound)."""
    ms_per_kv_ktoken: float
    """Cost per 1000 context tokens held in the KV cache (attention reads)."""
    api_overhead_ms: float
    """Latency before a request reaches the scheduler: HTTP, chat template,
    tokenization, the hop to the engine process. It delays, it does not use the engine."""
    chars_per_token: float = 4.0
    """The simulated tokenizer: prompt tokens = characters / chars_per_token."""

    def step_ms(self, seqs: int, prefill_tokens: int, context_tokens: int) -> float:
        """Duration of one step with this batch, in milliseconds."""
        return (
            self.base_step_ms
            + self.ms_per_seq * seqs
            + self.ms_per_prefill_token * prefill_tokens
            + self.ms_per_kv_ktoken * context_tokens / 1000.0
        )


# A100-SXM 80 GB, Llama-3.1-8B bf16, vLLM defaults (gpu_memory_utilization 0.9).
# Decode: 16 GB weights / ~2.0 TB/s HBM2e -> ~8 ms per step at batch 1 (7 ms base + small
# terms); KV reads at 2 TB/s -> 128 MiB per 1000 tokens -> ~0.065 ms. At 32-64 running
# sequences with ~1000-token contexts a step is ~11-15 ms, in line with published vLLM
# inter-token latencies for Llama-3-8B on A100 at moderate load. Prefill: 16 GFLOP per
# token against ~160 TFLOPS achieved bf16 -> ~10k tokens/s -> 0.1 ms per token. KV: 72 GB
# usable - 16 GB weights - ~2 GB activations/graphs = ~55 GB / 128 KiB -> ~450k tokens.
# api_overhead_ms is chosen so a solo ~100-token prompt sees ~50 ms TTFT, the figure
# commonly reported for this setup through the OpenAI server at low load. Batch limits
# are vLLM v1's OpenAI-server defaults for A100 (it keeps the small-GPU defaults there:
# 256 sequences, 2048 tokens per step).
_A100_8B = SimPreset(
    name="a100-8b",
    description="A100-80GB, Llama-3.1-8B bf16, vLLM",
    max_num_seqs=256,
    kv_cache_tokens=450_000,
    max_model_len=131_072,
    max_num_batched_tokens=2048,
    base_step_ms=7.0,
    ms_per_seq=0.06,
    ms_per_prefill_token=0.1,
    ms_per_kv_ktoken=0.065,
    api_overhead_ms=30.0,
)

# H100-SXM 80 GB, same model: 3.35 TB/s HBM3 -> ~4.8 ms per weight pass; ~2x the A100's
# achieved bf16 FLOPS for prefill (~18k tokens/s); a faster host for the API path.
# Overall ~1.6-2x the A100 preset, matching the speed-up vLLM's published benchmarks show
# between the two cards for 8B models. Same 80 GB, so the same KV capacity. vLLM v1's
# OpenAI-server defaults for >= 70 GiB GPUs other than A100: 1024 sequences, 8192 tokens.
_H100_8B = SimPreset(
    name="h100-8b",
    description="H100-80GB, Llama-3.1-8B bf16, vLLM",
    max_num_seqs=1024,
    kv_cache_tokens=450_000,
    max_model_len=131_072,
    max_num_batched_tokens=8192,
    base_step_ms=4.5,
    ms_per_seq=0.035,
    ms_per_prefill_token=0.055,
    ms_per_kv_ktoken=0.04,
    api_overhead_ms=20.0,
)

# L4 24 GB, same model: 300 GB/s GDDR6 -> ~53 ms per weight pass (~19 tokens/s for one
# stream); ~60 TFLOPS achieved bf16 -> ~3.8k prefill tokens/s. 21.6 GB usable - 16 GB
# weights leaves ~4 GB: ~60k tokens only with an fp8 KV cache (64 KiB per token; bf16 KV
# would give ~30k), so attention reads are 64 MiB per 1000 tokens at 300 GB/s. vLLM's
# smaller-GPU defaults (256 sequences, 2048 tokens) and a max_model_len that fits.
_L4_8B = SimPreset(
    name="l4-8b",
    description="L4-24GB, Llama-3.1-8B bf16 weights, fp8 KV cache, vLLM",
    max_num_seqs=256,
    kv_cache_tokens=60_000,
    max_model_len=16_384,
    max_num_batched_tokens=2048,
    base_step_ms=52.0,
    ms_per_seq=0.15,
    ms_per_prefill_token=0.26,
    ms_per_kv_ktoken=0.21,
    api_overhead_ms=30.0,
)

# Not a real card: a few milliseconds per step, 8 sequences and a small cache, so tests
# see batching limits, queueing and preemption within a second.
_TINY = SimPreset(
    name="tiny",
    description="test preset: fast steps, 8 sequences, 4k-token KV cache",
    max_num_seqs=8,
    kv_cache_tokens=4096,
    max_model_len=2048,
    max_num_batched_tokens=512,
    base_step_ms=4.0,
    ms_per_seq=0.1,
    ms_per_prefill_token=0.01,
    ms_per_kv_ktoken=0.1,
    api_overhead_ms=2.0,
)

PRESETS: dict[str, SimPreset] = {p.name: p for p in (_A100_8B, _H100_8B, _L4_8B, _TINY)}
DEFAULT_PRESET = "a100-8b"
