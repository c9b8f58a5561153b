"""Generate a tiny random Llama that real engines (vLLM on CPU) can serve, with no downloads.

    python -P -m fairlane.engines.tinymodel OUTDIR [--seed 0]

Writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and a byte-level
BPE tokenizer (``tokenizer.json`` + ``tokenizer_config.json`` with a chat template) trained
on a small built-in corpus. Deterministic for a seed, and idempotent: an OUTDIR that
already holds a complete model of the same shape is left as it is. The weights are random,
so the text is gibberish; the point is a real model that loads, batches and streams.

``transformers``, ``tokenizers`` and ``torch`` are imported lazily: only the e2e venv
(``make e2e``) has them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

MARKER = ".fairlane-tinymodel.json"
SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,  # vLLM's CPU attention does not support head_dim 16
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
VOCAB_SIZE = 1024  # the trainer may stop below it on a small corpus
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
CORPUS = """\
Fairlane makes one shared language model engine fair to many tenants.
A quiet tenant keeps its latency while a noisy neighbour floods the same engine.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Hello there! How are you today? I am fine, thank you. What can I do for you?
Once upon a time there was a small model that answered every question with words.
Tokens flow from the prompt through the layers and out of the sampler, one at a time.
The scheduler picks the tenant with the smallest counter; weights decide the share.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 1024 and symbols like {} [] () <> = + - * /
Write a short poem about the sea. Summarise this text in one sentence. Translate it.
The weather is nice, the sky is blue and the river runs slowly to the sea.
"""


def is_complete(outdir: Path, seed: int = 0) -> bool:
    """True when OUTDIR holds a model this module made with the same shape and seed."""
    try:
        marker = json.loads((outdir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
    return marker == fingerprint(seed) and all((outdir / f).is_file() for f in files)


def generate(outdir: Path, seed: int = 0) -> Path:
    """Write the model into OUTDIR unless it is already there; returns OUTDIR."""
    outdir = Path(outdir)
    if is_complete(outdir, seed):
        return outdir
    outdir.mkdir(parents=True, exist_ok=True)
    # Build beside OUTDIR, then move the files in; the marker goes last, so an
    # interrupted run is never mistaken for a complete model.
    with tempfile.TemporaryDirectory(dir=outdir.parent, prefix=".tinymodel-") as tmp:
        staging = Path(tmp)
        tokenizer = _build_tokenizer(staging)
        _build_model(staging, tokenizer, seed)
        (outdir / MARKER).unlink(missing_ok=True)
        for path in sorted(staging.iterdir()):
            shutil.move(str(path), str(outdir / path.name))
    (outdir / MARKER).write_text(json.dumps(fingerprint(seed), indent=2, sort_keys=True))
    return outdir


def fingerprint(seed: int) -> dict[str, Any]:
    return {"shape": SHAPE, "vocab": VOCAB_SIZE, "seed": seed, "special": SPECIAL_TOKENS}


def _build_tokenizer(staging: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary: any text encodes, nothing maps to <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(staging))
    # Readable by older transformers too (a vLLM elsewhere may bring transformers 4).
    config_path = staging / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return tokenizer


def _build_model(staging: Path, tokenizer: Any, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(vocab_size=len(tokenizer), **SHAPE, **ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(staging), safe_serialization=True)
    GenerationConfig(**ids).save_pretrained(str(staging))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -P -m fairlane.engines.tinymodel",
        description="Generate a tiny random Llama for real engines.",
    )
    parser.add_argument("outdir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    args = parser.parse_args(argv)
    existed = is_complete(args.outdir, args.seed)
    generate(args.outdir, args.seed)
    print(f"{'kept' if existed else 'wrote'} tiny Llama in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
