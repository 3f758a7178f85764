"""The tiny Qwen2.5-VL checkpoint loads and runs like the real one (no Django involved)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from qwen_vl_utils import process_vision_info
from safetensors import safe_open
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from inference.tiny_model import build_tiny_model, is_tiny_model_built

# transformers 5 saves under the hub checkpoints' tensor names, not its own module paths.
EMBEDDING_TENSOR = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen25vl", seed=0)


@pytest.fixture(scope="module")
def processor(model_dir):
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)


def first_rows_of_embedding(model_dir):
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        return weights.get_slice(EMBEDDING_TENSOR)[:8]


def generate(model, processor, messages, **processor_kwargs):
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], padding=True, return_tensors="pt", **processor_kwargs)
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return inputs, output[:, inputs["input_ids"].shape[1] :]


def test_build_leaves_only_the_finished_folder(model_dir):
    assert is_tiny_model_built(model_dir)
    assert [entry.name for entry in model_dir.parent.iterdir()] == [model_dir.name]


def test_tokenizer_has_the_real_qwen25_ids(processor):
    tokenizer = processor.tokenizer
    expected_ids = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
        "<|vision_pad|>": 151654,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
        "<|file_sep|>": 151664,
    }
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected_ids} == expected_ids
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert len(tokenizer) == 151665
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)


def test_chat_template_adds_default_system_turn_and_vision_placeholders(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": "x"}, {"type": "text", "text": "Hi?"}]}]

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_image_request_generates_four_tokens(model, processor):
    image = Image.new("RGB", (64, 48), color=(200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    images, _ = process_vision_info(messages)

    inputs, new_tokens = generate(model, processor, messages, images=images)

    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 64x48 is resized to 56x56
    assert (inputs["input_ids"] == 151655).sum() == 4  # 4x4 patches merged 2x2
    assert new_tokens.shape == (1, 4)


def test_video_of_frames_generates_four_tokens(model, processor):
    frames = [Image.new("RGB", (64, 48), color=(0, 0, 40 * index)) for index in range(4)]
    messages = [{"role": "user", "content": [{"type": "video", "video": frames, "sample_fps": 2.0}]}]
    _, videos, _ = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
    video_frames, video_metadata = zip(*videos, strict=True)

    inputs, new_tokens = generate(
        model,
        processor,
        messages,
        videos=list(video_frames),
        video_metadata=list(video_metadata),
        do_sample_frames=False,
    )

    # 4 frames make 2 temporal patches; qwen_vl_utils upscales frames to its 128-token video minimum.
    assert inputs["video_grid_thw"].tolist() == [[2, 20, 28]]
    assert inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per grid step at 2 fps
    assert new_tokens.shape == (1, 4)


def test_same_seed_gives_same_weights_and_another_seed_does_not(model_dir, tmp_path):
    same_seed = build_tiny_model(tmp_path / "same", seed=0)
    other_seed = build_tiny_model(tmp_path / "other", seed=1)

    assert torch.equal(first_rows_of_embedding(same_seed), first_rows_of_embedding(model_dir))
    assert not torch.equal(first_rows_of_embedding(other_seed), first_rows_of_embedding(model_dir))


def test_rebuild_replaces_a_built_model_but_never_a_foreign_folder(tmp_path):
    target = build_tiny_model(tmp_path / "model", seed=0)
    build_tiny_model(target, seed=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")

    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path / "notes")

    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["model", "notes"]
