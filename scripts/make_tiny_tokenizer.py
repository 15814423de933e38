"""Regenerate `src/mdkif/assets/tiny_tokenizer/`: a 1,024-token byte-level BPE for tiny test models.

Run once by a developer (`python scripts/make_tiny_tokenizer.py [DATA_ROOT]`); the output is committed, so
tests never train or download a tokenizer. It is trained on MedQuAD answers when the real data is at hand
(medical sub-words make tiny-model tests look like the real thing), else on the package's own text. Byte
fallback means any string tokenizes whatever the corpus was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "mdkif" / "assets" / "tiny_tokenizer"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as SmolLM2 uses, so chat code paths behave the same on tiny and real models.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(data_root: Path | None) -> list[str]:
    medquad = data_root / "skills" / "medquad" / "medquad_answered.jsonl" if data_root else None
    if medquad and medquad.is_file():
        lines = medquad.read_text(encoding="utf-8").splitlines()[:3000]
        return [json.loads(line)["question"] + "\n" + json.loads(line)["answer"] for line in lines]
    return [p.read_text(encoding="utf-8") for p in sorted((REPO / "src").rglob("*.py"))]


def main() -> None:
    data_root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(data_root), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
