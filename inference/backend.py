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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
import torch
from qwen_vl_utils import process_vision_info
from transformers import (
    AutoProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2_5_VLForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from .errors import InvalidRequest
from .sampling import RowSampling, select_next_tokens

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


class _RowSelector(LogitsProcessor):
    """Makes generate's argmax pick the token our per-row sampler chose (see sampling.py)."""

    def __init__(self, rows: Sequence[RowSampling]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = select_next_tokens(scores, self.rows)
        # In place: generate hands us its own copy of the step's logits.
        return scores.fill_(float("-inf")).scatter_(1, chosen[:, None], 0.0)


class _RowStopper(StoppingCriteria):
    """Per-row stopping decided by the engine (own max_new_tokens, EOS, cancellation)."""

    def __init__(self, finished: Callable[[], Sequence[bool]]) -> None:
        self.finished = finished

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.finished(), dtype=torch.bool, device=input_ids.device)


class _StepStreamer(BaseStreamer):
    """Hands each step's new tokens (one per row) to the engine; the first put is the prompt."""

    def __init__(self, on_step: Callable[[list[int]], None]) -> None:
        self.on_step = on_step
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


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

    def generate(
        self,
        rows: Sequence[PreparedRow],
        sampling: Sequence[RowSampling],
        *,
        max_new_tokens: int,
        on_step: Callable[[list[int]], None],
        finished: Callable[[], Sequence[bool]],
    ) -> None:
        """One batched generation. Tokens reach the caller through `on_step`, one call per step;
        `finished` says per row when to stop (the engine owns limits, EOS and cancellation)."""
        batch = {key: value.to(self.device) for key, value in _collate(rows, self.pad_token_id).items()}
        with torch.inference_mode():
            self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([_RowSelector(sampling)]),
                stopping_criteria=StoppingCriteriaList([_RowStopper(finished)]),
                streamer=_StepStreamer(on_step),
            )

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
