"""Models and tokenizers: load from a local folder, build a tiny one offline, pick the attention backend.

Nothing here downloads: `model.path` is a local Hugging Face folder. The tiny model is a real `LlamaForCausalLM` with a
byte-level BPE tokenizer and a ChatML template, saved as a normal HF folder, so every stage loads it like a 7B model.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cst_dist import attention, prompts
from cst_dist.config import ModelConfig, TinyModelConfig
from cst_dist.data.advbench import ADVBENCH_CSV
from cst_dist.errors import UserError
from cst_dist.io import atomic_directory, read_rows

log = logging.getLogger(__name__)

# ChatML, as OpenHermes-2.5-Mistral-7B uses it; the template writes BOS itself, as Llama/Mistral templates do, while
# the tokenizer also adds BOS by default: exactly the set-up in which naive tokenization doubles the BOS.
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>", "unk_token": "<unk>"}


class ModelLoadError(UserError, ValueError):
    pass


def _tokenizer_corpus(extra_files: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The vendored AdvBench text and the paper's strings, plus every string field of `extra_files` that exist."""
    with open(ADVBENCH_CSV, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row["goal"] for row in rows] + [row["target"] for row in rows]
    texts += [value for name, value in vars(prompts).items() if name.isupper() and isinstance(value, str)]
    for file in extra_files:
        if not Path(file).is_file():
            # The released set is not vendored (it holds harmful outputs): without it the vocabulary is AdvBench's.
            log.warning("model.tiny.tokenizer_corpus: %s not found; training the tokenizer without it", file)
            continue
        texts += [value for _, row in read_rows(file) for value in row.values() if isinstance(value, str)]
    return texts


def build_tiny_tokenizer(vocab_size: int, corpus_files: list[str] | tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained (deterministically, offline) on AdvBench and `corpus_files`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(TINY_SPECIAL_TOKENS.values()) + ["<|im_start|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(corpus_files), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **TINY_SPECIAL_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_tiny_model(path: str | Path, config: TinyModelConfig) -> Path:
    """Build the tiny model + tokenizer and save them as an HF folder at `path` (atomically)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(config.vocab_size, config.tokenizer_corpus)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    with atomic_directory(path) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    log.info("built tiny model (%.2fM parameters) at %s", model.num_parameters() / 1e6, path)
    return Path(path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def ensure_model(config: ModelConfig) -> Path:
    """The model folder, built first if it is missing and the config describes a tiny model; its config.json checked."""
    path = Path(config.path)
    if not path.exists() and config.tiny is not None:
        # Loud: a typo in model.path must not pass unnoticed as a freshly initialised random model.
        log.warning("model.path %s does not exist: building a NEW RANDOM tiny model there (model.tiny is set; set "
                    "model.tiny=null to use only existing models)", path)
        try:
            build_tiny_model(path, config.tiny)
        except (OSError, UserError):
            if not (path / "config.json").is_file():  # not another rank that finished the same build first
                raise
    if not (path / "config.json").is_file() and config.import_from:
        raise ModelLoadError(f"model folder {str(path)!r} (model.path) does not exist yet; import it first: "
                             f"cst import-model {config.import_from} --output {path}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {str(path)!r} (model.path) does not exist or has no config.json; point model.path at a "
            "local Hugging Face model folder (nothing is downloaded: fetch it first, e.g. `huggingface-cli download "
            "ORG/NAME --local-dir DIR`)"
        )
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} (model.path) is not a valid JSON object: {exc}") from None
    if not model_type:
        raise ModelLoadError(f"{path / 'config.json'} (model.path) has no 'model_type'; is it a model's config?")
    return path


def load_tokenizer(config: ModelConfig):
    from transformers import AutoTokenizer

    path = ensure_model(config)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {str(path)!r} (model.path) has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer of the model into the folder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code,
                                                  local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {str(path)!r} (model.path): {_first_line(exc)}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"tokenizer in {str(path)!r} (model.path) has no chat template; add one (chat_template.jinja) to the folder"
        )
    if tokenizer.pad_token is None:
        # Pad ids never reach the loss (labels are masked) nor attention (masked or packed away).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(config: ModelConfig):
    """The transformers config of the model folder (no weights read)."""
    from transformers import AutoConfig

    path = ensure_model(config)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'} (model.path): {_first_line(exc)}") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def select_attn_implementation(requested: str, device: torch.device | str = "cpu", packed: bool = False) -> str:
    """The attention backend, by capability. `auto`: flash_attention_2 where flash-attn is installed and a CUDA device
    runs; otherwise, for packed batches (`packed=True`: training with data.packing), `varlen` (torch's FlashAttention
    varlen kernel on CUDA, SDPA per sequence on CPU: `cst_dist.attention`), and SDPA for padded batches and
    generation. Explicit requests are checked."""
    flash_available = importlib.util.find_spec("flash_attn") is not None and torch.device(device).type == "cuda"
    if requested == "flash_attention_2" and not flash_available:
        raise ModelLoadError(
            "model.attn_implementation=flash_attention_2 but flash-attn is not installed or no CUDA device is used; "
            "install the `gpu` extra or set model.attn_implementation=sdpa"
        )
    if requested == attention.VARLEN:
        if not attention.varlen_supported(device):
            raise ModelLoadError("model.attn_implementation=varlen needs torch.nn.attention.varlen on CUDA (torch "
                                 ">= 2.9); set model.attn_implementation=auto")
        return attention.VARLEN if packed else "sdpa"  # padded batches and generation have no cu_seq_lens
    if requested == "auto":
        if flash_available:
            return "flash_attention_2"
        return attention.VARLEN if packed and attention.varlen_supported(device) else "sdpa"
    return requested


def select_dtype(requested: str, device: torch.device | str = "cpu") -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[requested]


@dataclass(frozen=True)
class ModelSpec:
    """What a stage works out once about its model and passes on: where it is, its width, and how it runs here."""

    config: ModelConfig
    path: Path
    attn_implementation: str
    dtype: torch.dtype
    hidden_size: int


def resolve_model(config: ModelConfig, device: torch.device | str = "cpu", packed: bool = False) -> ModelSpec:
    """Check the folder (building the tiny model if configured), read its config once, pick backend and dtype
    (`packed`: the model will see packed batches, see `select_attn_implementation`)."""
    path = ensure_model(config)
    hidden_size = getattr(load_model_config(config), "hidden_size", 0)
    attn = select_attn_implementation(config.attn_implementation, device, packed)
    return ModelSpec(config, path, attn, select_dtype(config.dtype, device), hidden_size)


def load_model(spec: ModelSpec, **kwargs):
    """A causal LM from the local folder with the spec's backend and dtype; safetensors preferred, remote code only
    when the config allows it."""
    from transformers import AutoModelForCausalLM

    path = spec.path
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelLoadError(
            f"model folder {str(path)!r} (model.path) has no weights ({' or '.join(WEIGHT_PATTERNS)}); copy the "
            "model's weight files into it"
        )
    log.info("attention backend: %s", spec.attn_implementation)
    if spec.attn_implementation == attention.VARLEN:
        attention.register()
    try:
        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=spec.dtype,
            attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.config.trust_remote_code,
            use_safetensors=any(path.glob("*.safetensors")) or None,
            local_files_only=True,
            **kwargs,
        )
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot load the model in {str(path)!r} (model.path): {_first_line(exc)}") from None
