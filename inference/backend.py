"""The transformers Qwen2.5-VL backend: loads the model once, prepares rows, runs batched generation.

Django-free. The engine's worker thread is the only caller of `generate` and `clear_cache`;
`prepare` runs in request threads, in parallel, so the CPU-heavy processor work (chat template,
image resizing, patching) never waits for the model.

The same code loads the real Qwen2.5-VL-7B-Instruct and the tiny checkpoint the tests build:
nothing here knows the size of the model.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch
from qwen_vl_utils import process_vision_info
from transformers import AutoProcessor, DynamicCache, GenerationConfig, Qwen2_5_VLForConditionalGeneration

from .errors import InvalidRequest

logger = logging.getLogger(__name__)

# Per-token tensors are left-padded when rows are batched; everything else (pixel patches, grids)
# is concatenated in row order, which keeps each image's patches in the order of its pad tokens.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_GIB = 1024**3


@dataclass
class PreparedRow:
    """One request turned into model inputs (CPU tensors, batch dimension 1)."""

    inputs: dict[str, torch.Tensor]
    input_tokens: int
    visual_tokens: int


@dataclass
class MemoryStats:
    """The spec's /vram_status numbers, in GiB. On a CPU they describe host memory."""

    device: str
    allocated_gb: float
    reserved_gb: float
    free_gb: float
    total_gb: float

    @property
    def usage_fraction(self) -> float:
        return self.reserved_gb / self.total_gb if self.total_gb else 0.0

    def as_dict(self) -> dict[str, float | str]:
        return {
            "allocated_gb": round(self.allocated_gb, 3),
            "reserved_gb": round(self.reserved_gb, 3),
            "free_gb": round(self.free_gb, 3),
            "total_gb": round(self.total_gb, 3),
            "usage_percentage": round(100.0 * self.usage_fraction, 1),
            "device": self.device,
        }


def resolve_device(requested: str) -> str:
    """`auto` picks CUDA when torch sees a GPU; asking for cuda without one is an error worth stopping on."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("VLM_DEVICE=cuda but torch sees no CUDA device")
    return requested


def memory_stats(device: str) -> MemoryStats:
    """Device memory from torch.cuda on a GPU; on a CPU, the host's memory and this process's RSS."""
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return MemoryStats(
            device="cuda",
            allocated_gb=torch.cuda.memory_allocated() / _GIB,
            reserved_gb=torch.cuda.memory_reserved() / _GIB,
            free_gb=free / _GIB,
            total_gb=total / _GIB,
        )
    host = psutil.virtual_memory()
    rss = psutil.Process(os.getpid()).memory_info().rss
    # On the CPU the process's resident memory is both what it "allocated" and "reserved".
    return MemoryStats(
        device="cpu",
        allocated_gb=rss / _GIB,
        reserved_gb=rss / _GIB,
        free_gb=host.available / _GIB,
        total_gb=host.total / _GIB,
    )


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


@dataclass
class DecodeBatch:
    """Rows decoding together: their KV cache, attention mask and next positions, one row per job.

    Rows join after their own prefill and leave when they finish, between any two decode steps
    (continuous batching): a new request never waits for a whole batch to end. Rows are left-padded
    to a common length; the attention mask hides the padding.
    """

    cache: DynamicCache
    attention_mask: torch.Tensor  # (rows, cached length)
    next_positions: torch.Tensor  # (rows,) the rotary position of each row's next token
    last_tokens: torch.Tensor  # (rows,) each row's latest token, the next step's input

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])


class QwenVLBackend:
    """Qwen2.5-VL through transformers' `Qwen2_5_VLForConditionalGeneration` and `AutoProcessor`."""

    def __init__(self, model_path: str, *, device: str = "auto") -> None:
        self.model_path = model_path
        self.requested_device = device
        self.device = "cpu"
        self.model = None
        self.processor = None

    def load(self) -> None:
        """Load processor and weights: bf16 + sdpa on CUDA, fp32 on the CPU (bf16 matmuls are slow there)."""
        device = resolve_device(self.requested_device)
        processor = AutoProcessor.from_pretrained(self.model_path)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.model_path,
            dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            attn_implementation="sdpa",
            device_map=device,  # straight onto the device, not through host memory first
        )
        self.attach(model, processor, device)
        logger.info("loaded %s on %s (context %d)", self.model_path, self.device, self.context_length)

    def attach(self, model, processor, device: str) -> None:
        """Serve an already-built model and processor (load() and the GPU benchmark's random 7B)."""
        # Left padding: every row's last position is its real last token, which batched decoding needs.
        processor.tokenizer.padding_side = "left"
        model.eval()
        eos_ids = model.generation_config.eos_token_id or processor.tokenizer.eos_token_id
        self.eos_token_ids = frozenset(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        self.pad_token_id = processor.tokenizer.pad_token_id
        # The checkpoint's generation_config (top_k=1, repetition_penalty=1.05, ...) would be merged
        # into every call; sampling is ours per row, so generate gets a neutral config.
        model.generation_config = GenerationConfig(
            eos_token_id=sorted(self.eos_token_ids), pad_token_id=self.pad_token_id, do_sample=False
        )
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.image_token_id = model.config.image_token_id
        self.video_token_id = model.config.video_token_id
        self.model, self.processor, self.device = model, processor, device

    def prepare(self, conversation: list[dict]) -> PreparedRow:
        """Chat template + vision inputs + processor for one request.

        `conversation` uses qwen_vl_utils' message form with media already loaded by the media
        loader: `{"type": "image", "image": PIL.Image}` and
        `{"type": "video", "video": [PIL frames], "sample_fps": float}`.
        """
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images, videos, video_kwargs = process_vision_info(
            conversation, return_video_kwargs=True, return_video_metadata=True
        )
        processor_kwargs: dict = {}
        if videos:
            frames, metadata = zip(*videos, strict=True)
            processor_kwargs = {
                "videos": list(frames),
                "video_metadata": list(metadata),
                "do_sample_frames": False,
                # Frames are already capped by the media loader; this is the reference (qwen-vl-utils) behaviour.
                "cap_pixels_per_frame": True,
                **{key: value for key, value in video_kwargs.items() if key != "fps"},
            }
        inputs = self.processor(text=[text], images=images, return_tensors="pt", **processor_kwargs)
        input_ids = inputs["input_ids"]
        visual = (input_ids == self.image_token_id) | (input_ids == self.video_token_id)
        return PreparedRow(inputs=dict(inputs), input_tokens=int(input_ids.shape[1]), visual_tokens=int(visual.sum()))

    def check_fits(self, row: PreparedRow, max_new_tokens: int) -> None:
        """Refuse before queueing what the model's context cannot hold."""
        if row.input_tokens + max_new_tokens > self.context_length:
            raise InvalidRequest(
                f"input is {row.input_tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                f"the model's context of {self.context_length} tokens"
            )

    def prefill(self, rows: Sequence[PreparedRow]) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts of `rows` (vision encoder included) in one forward pass.

        Returns their decode state and the logits of each row's first new token (rows x vocab, float32);
        the caller picks the tokens and hands them to `DecodeBatch.last_tokens`.
        """
        inputs = {key: value.to(self.device) for key, value in _collate(rows, self.pad_token_id).items()}
        attention_mask = inputs["attention_mask"]
        positions = self._prompt_positions(inputs)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            output = self.model(**inputs, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        # Padding positions hold placeholders; a row continues after the largest of its real ones.
        real = attention_mask.bool()[None].expand_as(positions)
        next_positions = positions.masked_fill(~real, -1).amax(dim=(0, 2)) + 1
        state = DecodeBatch(cache, attention_mask, next_positions, torch.zeros_like(next_positions))
        return state, output.logits[:, -1].float()

    def _prompt_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rotary positions (3 x rows x length): Qwen's 3D ones when there is an image or video, else
        the text positions (counting real tokens only, as generate does with left padding)."""
        if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
            positions, _ = self.model.model.get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"),
                second_per_grid_ts=inputs.get("second_per_grid_ts"),
                attention_mask=inputs["attention_mask"],
            )
            return positions
        mask = inputs["attention_mask"]
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return text[None].expand(3, -1, -1)

    def decode_step(self, state: DecodeBatch) -> torch.Tensor:
        """Feed every row its last token; returns the next token's logits (rows x vocab, float32)."""
        state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(state.size, 1)], dim=1)
        positions = state.next_positions.view(1, -1, 1).expand(3, -1, 1)
        with torch.inference_mode():
            output = self.model(
                input_ids=state.last_tokens[:, None],
                attention_mask=state.attention_mask,
                position_ids=positions,
                cache=state.cache,
                use_cache=True,
            )
        state.next_positions = state.next_positions + 1
        return output.logits[:, -1].float()

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(token_ids, skip_special_tokens=True)

    def memory(self) -> MemoryStats:
        return memory_stats(self.device)

    def clear_cache(self) -> None:
        """Free what Python and the CUDA caching allocator hold but no tensor uses."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _collate(rows: Sequence[PreparedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch single-row processor outputs: left-pad per-token tensors, concatenate the rest."""
    longest = max(row.inputs["input_ids"].shape[1] for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for key in rows[0].inputs.keys() | {key for row in rows for key in row.inputs}:
        present = [row.inputs[key] for row in rows if key in row.inputs]
        if key in _PER_TOKEN_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.cat(
                [torch.nn.functional.pad(value, (longest - value.shape[1], 0), value=fill) for value in present]
            )
        else:
            batch[key] = torch.cat(present)
    return batch


def merge_batches(running: DecodeBatch | None, joining: DecodeBatch) -> DecodeBatch:
    """One batch holding the rows of both, left-padded to the longer cache (running rows first)."""
    if running is None:
        return joining
    length = max(running.attention_mask.shape[1], joining.attention_mask.shape[1])

    def left_pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for ours, theirs in zip(running.cache.layers, joining.cache.layers, strict=True):
        ours.keys = torch.cat([left_pad(ours.keys, -2), left_pad(theirs.keys, -2)])
        ours.values = torch.cat([left_pad(ours.values, -2), left_pad(theirs.values, -2)])
    return DecodeBatch(
        cache=running.cache,
        attention_mask=torch.cat([left_pad(running.attention_mask, 1), left_pad(joining.attention_mask, 1)]),
        next_positions=torch.cat([running.next_positions, joining.next_positions]),
        last_tokens=torch.cat([running.last_tokens, joining.last_tokens]),
    )


def keep_rows(state: DecodeBatch, rows: Sequence[int]) -> DecodeBatch | None:
    """The batch without the rows that finished (None when none is left), and without the leading
    columns that only padded them."""
    if not rows:
        return None
    index = torch.tensor(rows, device=state.attention_mask.device)
    attention_mask = state.attention_mask.index_select(0, index)
    first_used = int(attention_mask.any(dim=0).nonzero()[0])
    for layer in state.cache.layers:
        layer.keys = layer.keys.index_select(0, index)[..., first_used:, :]
        layer.values = layer.values.index_select(0, index)[..., first_used:, :]
    return DecodeBatch(
        cache=state.cache,
        attention_mask=attention_mask[:, first_used:],
        next_positions=state.next_positions.index_select(0, index),
        last_tokens=state.last_tokens.index_select(0, index),
    )
