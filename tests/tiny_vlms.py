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


def build_tiny_qwen2_vl(folder: Path, version: str = "2") -> Path:
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``): images of at most 56x56 px, i.e. 4x4
    patches of 14 px merged 2x2 into 4 image tokens."""
    import torch
    import transformers
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(special, pad="<|endoftext|>", eos="<|im_end|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    common = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
              "bos_token_id": ids["<|im_start|>"]}
    vision = dict(depth=1, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    if version == "2":
        prefix = "Qwen2VL"
        vision.update(embed_dim=32, mlp_ratio=2)
    else:
        prefix = "Qwen2_5_VL"
        vision.update(intermediate_size=64, out_hidden_size=32, window_size=56, fullatt_block_indexes=[0])
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **common),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **common,
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    _always_words(model, ids["<|im_end|>"], ids["<|endoftext|>"], [0, *ids.values()])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": f"{prefix}Processor"}))
    return folder


def build_tiny_qwen2_5_vl(folder: Path) -> Path:
    return build_tiny_qwen2_vl(folder, version="2.5")


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


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tiny_idefics3(folder: Path) -> Path:
    """Idefics3 (the SmolVLM family's architecture): 56 px images, no splitting, 4 image tokens."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>"]
    tokenizer = word_tokenizer(special, pad="<|endoftext|>", eos="<end_of_utterance>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=56, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=256, pad_token_id=ids["<|endoftext|>"],
                                eos_token_id=ids["<end_of_utterance>"]),
        scale_factor=2, image_token_id=ids["<image>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    _always_words(model, ids["<end_of_utterance>"], ids["<|endoftext|>"], [0, *ids.values()])
    model.save_pretrained(folder)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 56},
                                                max_image_size={"longest_edge": 56})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llava_next(folder: Path) -> Path:
    """LLaVA-NeXT ("anyres"): 28 px tiles on a grid of at most 2 tiles, plus the base image."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    special = ["<pad>", "<s>", "</s>", "<image>"]
    tokenizer = word_tokenizer(special, pad="<pad>", eos="</s>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    pinpoints = [[28, 28], [28, 56], [56, 28]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=512, pad_token_id=ids["<pad>"],
                                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"]),
        image_token_index=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    _always_words(model, ids["</s>"], ids["<pad>"], [0, *ids.values()])
    model.save_pretrained(folder)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token="<image>", chat_template=LLAVA_TEMPLATE)
    processor.save_pretrained(folder)
    return folder
