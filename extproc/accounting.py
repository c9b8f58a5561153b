"""Real token usage of a finished request, as reported by Envoy's usage Lua filter.

The Lua filter scans the response as it streams (in Envoy, no Python per chunk) and
records the engine's ``usage`` object when there is one (non-streaming responses, and
streams whose client asked for ``stream_options.include_usage``). Otherwise completion
tokens are the number of streamed deltas of content, reasoning or tool-call arguments
(vLLM emits one per decode step) and prompt tokens stay the admission-time estimate.
When nothing was observed at all (the client left before the stream ended) the
admission estimate stands, so hanging up early never makes a request cheaper than it
was allowed to be. A request answered with an error costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairlane.policy import CostConfig


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    streamed_deltas: int | None = None

    def resolve(
        self, prompt_estimate: int, completion_estimate: int, failed: bool = False
    ) -> tuple[int, int]:
        """(prompt, completion) tokens: exact where the engine said, else the best guess.

        A request that ``failed`` (an error status: the engine refused it, say for a
        prompt over its context, or could not be reached) and reported no usage was not
        served: it costs what it streamed, and no prompt.
        """
        # Pooling (no completion budget) generates nothing, whatever text its answer
        # holds: a rerank's documents would read as deltas.
        generates = completion_estimate > 0
        if failed and self.prompt_tokens is None:
            return 0, (self.streamed_deltas or 0) if generates else 0
        prompt = self.prompt_tokens if self.prompt_tokens is not None else prompt_estimate
        if not generates:
            return prompt, 0
        if self.completion_tokens is not None:
            completion = self.completion_tokens
        elif self.streamed_deltas is not None:
            completion = self.streamed_deltas
        else:
            completion = completion_estimate
        return prompt, completion


def usage_cost(cost: CostConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return cost.input_weight * prompt_tokens + cost.output_weight * completion_tokens
