"""Grounding with a Hugging Face vision-language model run in this process.

Any model that loads with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and whose processor
has a chat template: Qwen2-VL / Qwen2.5-VL, LLaVA / LLaVA-NeXT, SmolVLM / Idefics3, Gemma 3,
PaliGemma-style models with a template, ... from a local folder or a hub id. Each batch is one
``generate`` call (left padding, greedy decoding, ``max_new_tokens``); only the new tokens are
decoded. The model loads lazily on the first batch, on the GPU when one is visible.

Without torchvision (e.g. CPU wheels where it does not import), processors that declare a video
processor (Qwen2-VL, SmolVLM) cannot be built by ``AutoProcessor``; this backend then assembles
the same processor from its image processor (transformers' PIL backend), tokenizer and chat
template, without the video part, which grounding never uses.

Failures: a batch that raises (e.g. CUDA out of memory, an image the processor rejects) is retried
one item at a time, and an item that still fails is recorded (``out_of_memory`` / ``model_error``)
so the run goes on; weights that cannot be loaded stop the run (BackendUnavailableError).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from recbole_vlm4rec.grounding.backends.base import (
    BackendUnavailableError,
    GroundingBackend,
    GroundingOutput,
    GroundingRequest,
)

logger = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")
# processors that want one list of images per prompt rather than a flat list
_NESTED_IMAGES = {"idefics2", "idefics3", "smolvlm"}


class TransformersBackend(GroundingBackend):
    """A local/hub vision-language model; ``batch_size`` images per ``generate`` call."""

    name = "transformers"
    concurrency = 1  # one model, one stream of batches

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 256,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ) -> None:
        if not model:
            raise ValueError("the transformers backend needs --model: a local model folder or a hub id "
                             "(e.g. Qwen/Qwen2-VL-2B-Instruct)")
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("transformers backend: batch_size and max_new_tokens must be >= 1")
        self.model_name = model
        self.requested_device = device
        self.dtype_name = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None
        self._load_lock = threading.Lock()
        self._succeeded = False
        self._failures_in_a_row = 0

    def model_id(self) -> str:
        name = self.model_name + (f"@{self.revision}" if self.revision else "")
        fingerprint = _local_fingerprint(self.model_name)
        weights = f", weights {fingerprint}" if fingerprint else ""
        return f"{name} (greedy, max_new_tokens={self.max_new_tokens}{weights})"

    def preflight(self) -> None:
        self._load()

    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        self._load()
        try:
            texts = self._generate(requests)
        except Exception as error:  # noqa: BLE001  (retried item by item just below)
            if len(requests) == 1:
                return [self._failure(requests[0], error)]
            logger.warning("batch of %d failed (%s); retrying one by one", len(requests), error)
            self._free_memory()
            return [output for request in requests for output in self.describe([request])]
        self._succeeded, self._failures_in_a_row = True, 0
        return [GroundingOutput(r.item_id, text=text) for r, text in zip(requests, texts)]

    def close(self) -> None:
        self._model = self._processor = None
        self._free_memory()

    # -- internals -------------------------------------------------------------------------------

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForImageTextToText

            from recbole_vlm4rec.formats.vectors import default_device

            self._device = torch.device(default_device(self.requested_device))
            dtype = _torch_dtype(self.dtype_name, self._device)
            options: dict[str, Any] = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
            try:
                processor = load_processor(self.model_name, **options)
                if self.attn_implementation:
                    options["attn_implementation"] = self.attn_implementation
                if self._device.type == "cuda" and importlib.util.find_spec("accelerate"):
                    options["device_map"] = {"": self._device}  # weights straight to the GPU
                model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=dtype, **options)
            except (OSError, ValueError, ImportError, KeyError) as error:
                raise BackendUnavailableError(
                    f"cannot load vision-language model {self.model_name!r}: {error}"
                ) from error
            if getattr(processor, "chat_template", None) is None:
                raise BackendUnavailableError(
                    f"{self.model_name}: the processor has no chat template (chat_template.jinja); "
                    "use an instruction-tuned model or add its template to the folder"
                )
            tokenizer = processor.tokenizer
            tokenizer.padding_side = "left"  # generation continues after the last prompt token
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._model = model.to(self._device).eval()
            self._processor = processor
            logger.info("loaded %s on %s (%s)", self.model_name, self._device, dtype)

    def _generate(self, requests: Sequence[GroundingRequest]) -> list[str]:
        import torch

        processor = self._processor
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}]
            for r in requests
        ]
        prompts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                   for c in conversations]
        images: list[Any] = [r.image for r in requests]
        if getattr(self._model.config, "model_type", "") in _NESTED_IMAGES:
            images = [[image] for image in images]
        inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self._device)
        floating = {k: v.to(self._model.dtype) for k, v in inputs.items() if torch.is_floating_point(v)}
        inputs.update(floating)
        tokenizer = processor.tokenizer
        with torch.inference_mode():
            generated = self._model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def _failure(self, request: GroundingRequest, error: Exception) -> GroundingOutput:
        self._failures_in_a_row += 1
        if not self._succeeded and self._failures_in_a_row >= max(4, self.batch_size):
            # nothing has ever worked: the model itself is the problem, not these items
            raise BackendUnavailableError(
                f"{self.model_name}: the first {self._failures_in_a_row} items all failed, last with "
                f"{type(error).__name__}: {str(error)[:300]}"
            ) from error
        out_of_memory = "out of memory" in str(error).lower()
        if out_of_memory:
            self._free_memory()
        return GroundingOutput(request.item_id, error="out_of_memory" if out_of_memory else "model_error",
                               detail=f"{type(error).__name__}: {str(error)[:300]}")

    def _free_memory(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _torch_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slow or unsupported for many ops
    return getattr(torch, name)


def _local_fingerprint(model: str) -> str | None:
    """Short hash of a local model folder's config and weight file sizes: a replaced model in the
    same folder makes cached rows stale. None for hub ids (the revision says it)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json":
            digest.update(path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def load_processor(model: str, **options: Any) -> Any:
    """``AutoProcessor.from_pretrained``, or, when that needs torchvision for a video processor
    that is not installed, the same processor class built without its video part."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model, **options)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        logger.info("torchvision missing: building %s's processor without video support", model)
        return _image_only_processor(model, **options)


def _image_only_processor(model: str, **options: Any) -> Any:
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import cached_file

    model_type = AutoConfig.from_pretrained(model, **options).model_type
    class_name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if not class_name:
        raise ImportError(f"no processor class known for model type {model_type!r}")
    processor_class = getattr(transformers, class_name)

    class ImageOnlyProcessor(processor_class):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = processor_class.__name__
    kwargs: dict[str, Any] = {}
    files = {"revision": options.get("revision"), "_raise_exceptions_for_missing_entries": False}
    config_file = cached_file(model, "processor_config.json", **files)
    if config_file:
        accepted = inspect.signature(processor_class.__init__).parameters
        saved = json.loads(Path(config_file).read_text())
        kwargs.update({k: v for k, v in saved.items() if k in accepted and not isinstance(v, dict)})
    template_file = cached_file(model, "chat_template.jinja", **files)
    tokenizer = AutoTokenizer.from_pretrained(model, **options)
    chat_template = Path(template_file).read_text() if template_file else getattr(tokenizer, "chat_template", None)
    parameters = inspect.signature(processor_class.__init__).parameters
    if "video_processor" in parameters:
        kwargs["video_processor"] = None
    return ImageOnlyProcessor(image_processor=AutoImageProcessor.from_pretrained(model, **options),
                              tokenizer=tokenizer, chat_template=chat_template, **kwargs)
