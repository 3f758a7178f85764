"""Decode throughput of the Qwen2.5-VL-7B-Instruct architecture on one GPU, against the bandwidth bound.

    python3 bench/gpu/decode_bench.py                          # real 7B config, bf16, on the GPU
    python3 bench/gpu/decode_bench.py --config small --batch-sizes 1,2 --new-tokens 4   # CPU smoke run

No download: the model is built with random weights at the real config (bf16 on CUDA, fp32 on the
CPU); the tokenizer and processor come from the tiny checkpoint built on the spot. For each batch
size it measures:
- raw decode tokens/s of transformers' generate (greedy, fixed output length), from the time of N
  tokens minus the time of 1 token (the prefill), beside the memory-bandwidth bound: every decode
  step reads all language-model weights once, so steps/s <= bandwidth / weight bytes;
- the same prompts through the server's engine (batched generation with per-row stopping and our
  sampler), greedy and with temperature 0.7 / top_p 0.9, end to end.
Runs well inside 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from inference.backend import PreparedRow, QwenVLBackend, resolve_device  # noqa: E402
from inference.engine import Engine, Job  # noqa: E402
from inference.sampling import RowSampling  # noqa: E402
from inference.tiny_model import build_tiny_model, tiny_config  # noqa: E402


def real_config() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's config.json, as transformers 5 spells it."""
    small = tiny_config()
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "max_window_layers": 28,
            "sliding_window": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "bos_token_id": small.text_config.bos_token_id,
            "eos_token_id": small.text_config.eos_token_id,
            "pad_token_id": small.text_config.pad_token_id,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "out_hidden_size": 3584,
        },
        image_token_id=small.image_token_id,
        video_token_id=small.video_token_id,
        vision_start_token_id=small.vision_start_token_id,
        vision_end_token_id=small.vision_end_token_id,
        tie_word_embeddings=False,
    )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode_weight_bytes(model) -> int:
    """Bytes each decode step must read: every language-model weight except the embedding table
    (only one row per token is read), plus the output layer."""
    language = model.model.language_model
    embedding = language.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in language.parameters())
    total -= embedding.numel() * embedding.element_size()
    if model.lm_head.weight is not embedding:
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    else:
        total += embedding.numel() * embedding.element_size()
    return total


def copy_bandwidth(device: str) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read and written: the memory system's
    achievable rate, which a read-only decode step can use in full."""
    if device != "cuda":
        return float("nan")
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    started = time.perf_counter()
    repeats = 20
    for _ in range(repeats):
        target.copy_(source)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    del source, target
    return 2 * (1 << 30) / seconds


def gpu_busy_fraction(model, input_ids, new_tokens: int) -> float:
    """Share of generate's wall time that the GPU spends in kernels: low means the host side
    (Python, kernel launches) bounds decoding, not the GPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        wall = timed_generate(model, input_ids, new_tokens, "cuda")
    kernel_us = sum(event.self_device_time_total for event in profiler.key_averages())
    return kernel_us / 1e6 / wall


def timed_generate(model, input_ids, new_tokens: int, device: str) -> float:
    attention_mask = torch.ones_like(input_ids)
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    synchronize(device)
    return time.perf_counter() - started


def through_engine(backend, prompts: torch.Tensor, new_tokens: int, sampling: RowSampling) -> tuple[float, int]:
    """All rows submitted at once to an engine batching them together: (seconds, tokens generated)."""
    engine = Engine(backend, max_batch_size=prompts.shape[0], batch_wait_s=0.05, max_queue=prompts.shape[0])
    engine.start()
    rows = [
        PreparedRow(
            inputs={"input_ids": prompt[None], "attention_mask": torch.ones_like(prompt[None])},
            input_tokens=prompt.shape[0],
            visual_tokens=0,
        )
        for prompt in prompts.cpu()
    ]
    started = time.perf_counter()
    jobs = [
        engine.submit(
            Job(
                row=row,
                sampling=sampling,
                max_new_tokens=new_tokens,
                received_at=time.monotonic(),
                preprocess_s=0.0,
                deadline=time.monotonic() + 600,
            )
        )
        for row in rows
    ]
    tokens = sum(job.result().output_tokens for job in jobs)
    seconds = time.perf_counter() - started
    engine.stop()
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("real", "small"), default="real")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", help="write the results table (markdown) here too")
    parser.add_argument("--json", help="write the raw figures (JSON) here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        build_tiny_model(Path(tokenizer_dir) / "tiny")
        processor = AutoProcessor.from_pretrained(Path(tokenizer_dir) / "tiny")
    config = real_config() if args.config == "real" else tiny_config()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    backend = QwenVLBackend("random-weights", device=device)
    backend.attach(model, processor, device)
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = decode_weight_bytes(model)
    bandwidth = copy_bandwidth(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"{name}: {args.config} config, {parameters / 1e9:.2f} B parameters, {weight_bytes / 1e9:.2f} GB read per decode "
        f"step, copy bandwidth {bandwidth / 1e12:.2f} TB/s; built in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    vocabulary_of_words = 150000  # below the special tokens
    results = []
    for batch in [int(size) for size in args.batch_sizes.split(",")]:
        prompts = torch.randint(0, vocabulary_of_words, (batch, args.prompt_tokens), device=device)
        timed_generate(model, prompts, 2, device)  # warm-up
        prefill = timed_generate(model, prompts, 1, device)
        full = timed_generate(model, prompts, args.new_tokens, device)
        decode_tps = batch * (args.new_tokens - 1) / max(full - prefill, 1e-9)
        bound_tps = batch * bandwidth / weight_bytes
        greedy_s, greedy_tokens = through_engine(backend, prompts, args.new_tokens, RowSampling(0.0, 1.0))
        sampled_s, sampled_tokens = through_engine(backend, prompts, args.new_tokens, RowSampling(0.7, 0.9))
        busy = gpu_busy_fraction(model, prompts, 16) if device == "cuda" else float("nan")
        result = {
            "batch": batch,
            "gpu_busy_fraction": busy,
            "prefill_s": prefill,
            "generate_s": full,
            "decode_tokens_per_s": decode_tps,
            "bandwidth_bound_tokens_per_s": bound_tps,
            "fraction_of_bound": decode_tps / bound_tps if bound_tps == bound_tps else float("nan"),
            "generate_end_to_end_tokens_per_s": batch * args.new_tokens / full,
            "engine_greedy_tokens_per_s": greedy_tokens / greedy_s,
            "engine_sampled_tokens_per_s": sampled_tokens / sampled_s,
        }
        results.append(result)
        print(json.dumps({key: round(value, 4) for key, value in result.items()}), flush=True)

    lines = [
        f"{name}, {args.config} config ({parameters / 1e9:.2f} B parameters, {dtype}), prompt {args.prompt_tokens} "
        f"tokens, {args.new_tokens} new tokens; {weight_bytes / 1e9:.2f} GB of weights read per step; copy bandwidth "
        f"{bandwidth / 1e12:.2f} TB/s.",
        "",
        "| batch | decode tokens/s (generate) | bandwidth bound | of bound | GPU busy | generate end to end "
        "| engine greedy | engine top-p 0.9 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result['batch']} | {result['decode_tokens_per_s']:.0f} | {result['bandwidth_bound_tokens_per_s']:.0f} | "
            f"{result['fraction_of_bound']:.0%} | {result['gpu_busy_fraction']:.0%} | "
            f"{result['generate_end_to_end_tokens_per_s']:.0f} | "
            f"{result['engine_greedy_tokens_per_s']:.0f} | {result['engine_sampled_tokens_per_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "config": args.config, "results": results}, indent=2))
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
