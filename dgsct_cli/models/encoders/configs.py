"""The built-in encoder families' recipe sections (``model.visual``, ``model.audio``,
``model.text``) and which family uses which, in a module without torch, so that a recipe is
resolved and checked without importing it (``dgsct recipes show``). The tower modules build from
these configs; a plug-in family keeps its configs where it likes and registers them with
:func:`~.base.register_family`, which records them here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...schema import Annotated, OneOf, Range
from .timm_catalog import timm_catalog

# timm.data's IMAGENET_DEFAULT_MEAN / _STD, spelled out: importing timm imports torch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- Swin-V2 (timm) ----------------------------------------------------------------------------


@dataclass
class SwinV2Config:
    """Recipe section ``model.visual`` of the ``swinv2-htsat`` family."""

    name: str = "swinv2_large_window12_192.ms_in22k"
    weights: str | None = None  # local .safetensors/.bin/.pth, or "hub" to let timm download
    img_size: Annotated[int, Range(16)] = 192
    drop_path_rate: Annotated[float, Range(0, 1, open_high=True)] = 0.1
    fused_attention: bool = True  # scaled_dot_product_attention for the cosine window attention
    args: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (tiny configs)

    def __post_init__(self) -> None:
        check_timm_settings(self.name, self.args)


# timm passes ``args`` to SwinTransformerV2 unchecked (an unknown keyword, a negative width and a
# head count that does not divide a stage's width each build another model or fail deep inside).
_SET_BY_THE_CONFIG = ("img_size", "drop_path_rate", "num_classes")
_POSITIVE_INTS = ("embed_dim", "patch_size", "in_chans")
_POSITIVE_INT_LISTS = ("depths", "num_heads")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_timm_settings(name: str, args: dict[str, Any]) -> None:
    """``model.visual.name`` is a timm Swin-V2 model and ``model.visual.args`` holds settings of
    timm's ``SwinTransformerV2`` with sane values; messages start with the key."""
    catalog = timm_catalog()
    arch = catalog.architecture(name)
    if arch not in catalog.architectures:
        known = ", ".join(catalog.swin_v2[:6])
        raise ValueError(f"name: {name!r} is not a timm model (Swin-V2 models include {known}, ...)")
    if arch not in catalog.swin_v2:
        raise ValueError(f"name: {name!r} is not a Swin Transformer V2 model")
    allowed = [p for p in catalog.swin_v2_settings if p not in ("device", "dtype", *_SET_BY_THE_CONFIG)]
    for key, value in args.items():
        if key in _SET_BY_THE_CONFIG:
            raise ValueError(f"args.{key}: set model.visual.{key} instead")
        if key not in allowed:
            raise ValueError(
                f"args.{key}: not a setting of timm's SwinTransformerV2 (its settings: {', '.join(allowed)})"
            )
        if key in _POSITIVE_INTS and not _positive_int(value):
            raise ValueError(f"args.{key}: {value!r} is out of range (allowed: a whole number >= 1)")
        if key in _POSITIVE_INT_LISTS and (
            not isinstance(value, list) or not value or not all(_positive_int(v) for v in value)
        ):
            raise ValueError(f"args.{key}: {value!r} is out of range (allowed: a list of whole numbers >= 1)")
        if key == "window_size" and not (
            _positive_int(value)
            or (isinstance(value, list) and value and all(_positive_int(v) for v in value))
        ):
            raise ValueError(f"args.window_size: {value!r} is out of range (allowed: a whole number >= 1)")
        if key == "mlp_ratio" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ):
            raise ValueError(f"args.mlp_ratio: {value!r} is out of range (allowed: > 0)")
    depths, heads = args.get("depths"), args.get("num_heads")
    if depths is not None and heads is not None and len(depths) != len(heads):
        raise ValueError(f"args.num_heads: {len(heads)} values for {len(depths)} stages (args.depths)")
    embed_dim = args.get("embed_dim")
    if embed_dim is not None and heads is not None:
        for i, h in enumerate(heads):
            if (embed_dim * 2**i) % h:
                raise ValueError(
                    f"args.num_heads[{i}] = {h} does not divide stage {i + 1}'s width {embed_dim * 2**i} "
                    f"(embed_dim {embed_dim} x {2**i})"
                )


# -- HTS-AT ------------------------------------------------------------------------------------


@dataclass
class HTSATConfig:
    """Recipe section ``model.audio`` (defaults: HTS-AT AudioSet, as DG-SCT uses it)."""

    weights: str | None = None  # HTSAT_AudioSet_Saved_1.ckpt (Lightning) or our own file
    sample_rate: Annotated[int, Range(1000)] = 32000
    n_fft: Annotated[int, Range(16)] = 1024
    hop_length: Annotated[int, Range(1)] = 320
    mel_bins: Annotated[int, Range(1)] = 64
    fmin: Annotated[float, Range(0)] = 50.0
    fmax: Annotated[float, Range(0, open_low=True)] = 14000.0
    # "computed": STFT window and Slaney mel matrix computed from the fields above (not weights);
    # "weights": STFT kernels and mel matrix are tensors of the model, read from the weight file
    # (CLAP; AVS-S4, which fine-tunes them), initialised to the computed ones.
    front_end: Annotated[str, OneOf("computed", "weights")] = "computed"
    spec_size: Annotated[int, Range(4)] = 256
    patch_size: Annotated[int, Range(1)] = 4
    embed_dim: Annotated[int, Range(1)] = 96
    depths: Annotated[list[int], Range(1)] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: Annotated[list[int], Range(1)] = field(default_factory=lambda: [4, 8, 16, 32])
    window_size: Annotated[int, Range(1)] = 8
    drop_path_rate: Annotated[float, Range(0, 1, open_high=True)] = 0.1
    final_norm: bool = False  # LayerNorm after the last stage (CLAP uses it; DG-SCT's core does not)
    spec_augment: bool = True  # SpecAugment in training (time 64 x2, freq 8 x2)
    time_mask: Annotated[int, Range(0)] = 64
    freq_mask: Annotated[int, Range(0)] = 8

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have the same length")
        for i, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**i  # timm would silently use width // heads channels per head
            if width % heads:
                raise ValueError(
                    f"num_heads[{i}] = {heads} does not divide stage {i + 1}'s width {width} "
                    f"(embed_dim {self.embed_dim} x {2**i})"
                )
        if self.spec_size % self.mel_bins:
            raise ValueError(f"spec_size ({self.spec_size}) must be a multiple of mel_bins ({self.mel_bins})")
        if self.fmax <= self.fmin:
            raise ValueError(f"fmax ({self.fmax}) must be above fmin ({self.fmin})")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def max_frames(self) -> int:
        """STFT frames the time axis is resized to (1024 for HTS-AT)."""
        return self.spec_size * self.freq_ratio

    @property
    def max_samples(self) -> int:
        """Longest waveform (samples) whose centred STFT has at most ``max_frames`` frames."""
        return (self.max_frames - 1) * self.hop_length + self.hop_length - 1


# -- CLAP --------------------------------------------------------------------------------------


@dataclass
class CLAPAudioConfig(HTSATConfig):
    """Recipe section ``model.audio`` of the ``clip-clap`` family: CLAP's HTS-AT-tiny, fed 32-kHz
    audio with hop 320 (the release's constructor arguments), front end from the file."""

    weights: str | None = None  # 630k-audioset-fusion-best.pt or 630k-fusion-best.pt (LAION layout)
    front_end: Annotated[str, OneOf("computed", "weights")] = "weights"
    final_norm: bool = True
    projection_dim: Annotated[int, Range(1)] = 512


# RoBERTa-base, the CLAP text branch's shape (transformers' RobertaConfig fields).
ROBERTA_BASE: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}


@dataclass
class ClipClapTextConfig:
    """Recipe section ``model.text`` of the ``clip-clap`` family: the CLAP text branch's shape and
    the roberta-base tokenizer files (``vocab.json`` + ``merges.txt``) the user supplies."""

    tokenizer: str | None = None  # folder with roberta-base vocab.json and merges.txt
    roberta: dict[str, Any] = field(default_factory=dict)  # overrides of ROBERTA_BASE (tiny tests)
    projection_dim: Annotated[int, Range(1)] = 512

    def __post_init__(self) -> None:
        check_roberta_settings(self.roberta)


# RobertaConfig takes any keyword (an unknown one is kept and ignored): the settings it reads.
ROBERTA_SETTINGS = (
    *ROBERTA_BASE,
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "position_embedding_type",
)


_ROBERTA_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def check_roberta_settings(values: dict[str, Any]) -> None:
    """``model.text.roberta``: known RobertaConfig settings, positive sizes, heads dividing the width."""
    import difflib

    for key, value in values.items():
        if key not in ROBERTA_SETTINGS:
            close = difflib.get_close_matches(str(key), ROBERTA_SETTINGS, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"roberta: unknown setting '{key}'{hint}; RoBERTa's settings: {', '.join(ROBERTA_SETTINGS)}"
            )
        if key in _ROBERTA_SIZES and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"roberta: {key}: {value!r} is out of range (allowed: a whole number >= 1)")
    merged = {**ROBERTA_BASE, **values}
    if merged["hidden_size"] % merged["num_attention_heads"]:
        raise ValueError(
            f"roberta: num_attention_heads {merged['num_attention_heads']} does not divide "
            f"hidden_size {merged['hidden_size']}"
        )


# -- CLIP --------------------------------------------------------------------------------------


@dataclass
class CLIPConfig:
    """Recipe section ``model.visual`` of the ``clip-clap`` family (defaults: ViT-B/32, 224 px).

    ``weights`` names the OpenAI file, which also holds the CLIP text tower (``model.text``)."""

    weights: str | None = None  # ViT-B-32.pt (TorchScript archive) or an OpenAI-layout state dict
    img_size: Annotated[int, Range(16)] = 224
    patch_size: Annotated[int, Range(1)] = 32
    width: Annotated[int, Range(64)] = 768
    layers: Annotated[int, Range(1)] = 12
    embed_dim: Annotated[int, Range(1)] = 512
    # The release normalises CLIP's frames with ImageNet statistics, not CLIP's own
    # (few-shot dataloader.py:196-202); CLIP's are (0.4815, 0.4578, 0.4082) / (0.2686, 0.2613, 0.2758).
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Annotated[list[float], Range(0, open_low=True)] = field(default_factory=lambda: list(IMAGENET_STD))
    # The CLIP text tower's shape (the OpenAI file holds both towers).
    text_width: Annotated[int, Range(64)] = 512
    text_layers: Annotated[int, Range(1)] = 12
    context_length: Annotated[int, Range(1)] = 77
    vocab_size: Annotated[int, Range(1)] = 49408

    def __post_init__(self) -> None:
        if self.width % 64 or self.text_width % 64:
            raise ValueError("width and text_width must be multiples of 64 (CLIP uses 64-wide heads)")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")


# -- LAVisH's spectrogram image ----------------------------------------------------------------


@dataclass
class SpectrogramImageConfig:
    """Recipe section ``model.audio`` of the ``swinv2-shared`` family (defaults: LAVisH's AVE)."""

    sample_rate: Annotated[int, Range(1000)] = 16000  # the rate LAVisH's wav files have
    mel_bins: Annotated[int, Range(1)] = 192  # image width; must equal model.visual.img_size
    frames: Annotated[int, Range(1)] = 192  # image height (cut or zero-padded); = img_size
    frame_length_ms: Annotated[float, Range(0, open_low=True)] = 25.0
    frame_shift_ms: Annotated[float, Range(0, open_low=True)] = 5.2
    window: Annotated[str, OneOf("hanning", "hamming", "povey", "rectangular", "blackman")] = "hanning"
    # LAVisH's AVE statistics of the 192-bin filterbank (dataloader.py:84-85), applied as
    # (fbank - mean) / (2 * std) (dataloader.py:174).
    norm_mean: float = -4.984795570373535
    norm_std: Annotated[float, Range(0, open_low=True)] = 3.7079780101776123


# -- which family uses which ------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyConfigs:
    """The config types of one encoder family's towers (None: the family has no such tower)."""

    visual: type
    audio: type
    text: type | None = None


# The built-in families (models/encoders/swinv2_htsat.py, swinv2_shared.py, clip_clap.py register
# the same types); register_family adds a plug-in family's.
FAMILY_CONFIGS: dict[str, FamilyConfigs] = {
    "swinv2-htsat": FamilyConfigs(SwinV2Config, HTSATConfig),
    "swinv2-shared": FamilyConfigs(SwinV2Config, SpectrogramImageConfig),
    "clip-clap": FamilyConfigs(CLIPConfig, CLAPAudioConfig, ClipClapTextConfig),
}


def family_configs(name: str) -> FamilyConfigs:
    """The config types of family ``name``; a name not built in loads the family registry (which
    imports torch) and raises ``ValueError`` naming the families there are."""
    if name not in FAMILY_CONFIGS:
        from .base import get_family

        get_family(name)  # registers plug-in families; raises for an unknown name
    return FAMILY_CONFIGS[name]
