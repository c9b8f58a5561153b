"""Generate a random LoRA adapter for a model made by ``tinymodel``, in PEFT's format.

    python -P -m fairlane.engines.tinylora MODEL_DIR OUTDIR [--seed 1] [--rank 8]

Writes ``adapter_config.json`` and ``adapter_model.safetensors`` with low-rank updates of
every layer's attention query and value projections. Random like the model, but large
enough that greedy decoding with the adapter picks other tokens than without it, so a
test can tell that an engine applied it rather than serving the base model under
another name. ``torch`` and ``safetensors`` are imported lazily (the e2e venv has them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGETS = ("q_proj", "v_proj")


def projection_sizes(config: dict[str, Any]) -> dict[str, int]:
    """Output size of each targeted projection, from the model's config.json."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return {"q_proj": config["num_attention_heads"] * head_dim, "v_proj": kv_heads * head_dim}


def generate(model_dir: Path, outdir: Path, seed: int = 1, rank: int = 8) -> Path:
    import torch
    from safetensors.torch import save_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden = config["hidden_size"]
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for target, size in projection_sizes(config).items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            a = torch.randn(rank, hidden, generator=generator) * 0.02
            # PEFT starts B at zero (no change); a trained adapter has moved it well away.
            b = torch.randn(size, rank, generator=generator) * 0.5
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(outdir / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
    }
    (outdir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -P -m fairlane.engines.tinylora",
        description="Generate a random LoRA adapter for a tiny model.",
    )
    parser.add_argument("model_dir", type=Path, help="the model (its config.json is read)")
    parser.add_argument("outdir", type=Path, help="directory to write the adapter into")
    parser.add_argument("--seed", type=int, default=1, help="weights seed (default 1)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    args = parser.parse_args(argv)
    generate(args.model_dir, args.outdir, args.seed, args.rank)
    print(f"wrote a rank-{args.rank} LoRA adapter for {args.model_dir} in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
