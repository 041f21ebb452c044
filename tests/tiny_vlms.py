"""Tiny, randomly initialised vision-language models of real architectures, saved like hub folders.

Built offline: a word-level tokenizer from the ``tokenizers`` library wrapped in
PreTrainedTokenizerFast, transformers' PIL (non-torchvision) image processors, a chat template,
and a few-thousand-parameter model from a small config. Their answers are random words.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("a an the red blue green soft cotton wool style casual formal item for with and of in to is "
         "it this look who wear home party summer winter bright dark classic modern").split()

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_tokenizer(special: list[str], pad: str, eos: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["[UNK]", *WORDS, *special])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    extra = [token for token in special if token not in (pad, eos)]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token=pad,
                                   eos_token=eos, additional_special_tokens=extra)


def _always_words(model, eos: int, pad: int, banned: list[int]) -> None:
    """Random weights often say eos or a special token first: ban those so every answer is
    ``max_new_tokens`` words, and a test can tell a decoded answer from an empty one."""
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.suppress_tokens = banned


def build_tiny_qwen2_vl(folder: Path) -> Path:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(special, pad="<|endoftext|>", eos="<|im_end|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    common = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
              "bos_token_id": ids["<|im_start|>"]}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **common),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **common,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    _always_words(model, ids["<|im_end|>"], ids["<|endoftext|>"], [0, *ids.values()])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # at most 56x56 px: 4x4 patches of 14 px, merged 2x2 -> 4 image tokens
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    return folder


def build_tiny_llava(folder: Path) -> Path:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    special = ["<pad>", "<s>", "</s>", "<image>"]
    tokenizer = word_tokenizer(special, pad="<pad>", eos="</s>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=256, pad_token_id=ids["<pad>"],
                                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"]),
        image_token_index=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    _always_words(model, ids["</s>"], ids["<pad>"], [0, *ids.values()])
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>", chat_template=LLAVA_TEMPLATE)
    processor.save_pretrained(folder)
    return folder
