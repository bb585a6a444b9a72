"""Architectures, looked up by the GGUF ``general.architecture`` value.

The registry names each class by its module and imports that module when the class is first asked for, never the
others: `kvrun info` asks one class its hooks (``rope_absence``, ``cache_widths``) without importing a hundred model
modules and their kernels, and a run imports its own model's alone.  ``_CLASSES`` must agree with each class's own
``archs`` (tests/test_info_hooks.py holds them together): a new architecture's class goes in both.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..loaders.errors import UnsupportedModelError

if TYPE_CHECKING:
    from .common import Model

#: "module.Class" (of this package) -> the architectures it runs, in the order they were registered
_CLASSES: dict[str, tuple[str, ...]] = {
    "llama.LlamaModel": ("llama", "mistral"),
    "smollm3.SmolLM3Model": ("smollm3",),
    "granite.GraniteModel": ("granite",),
    "granitemoe.GraniteMoeModel": ("granitemoe",),
    "granite_swa.GraniteSwaModel": ("granite_swa",),
    "graniteswitch.GraniteSwitchModel": ("graniteswitch",),
    "qwen2.Qwen2Model": ("qwen2",),
    "qwen2moe.Qwen2MoeModel": ("qwen2moe",),
    "deepseek.DeepseekModel": ("deepseek",),
    "deepseek2.Deepseek2Model": ("deepseek2",),
    "qwen3.Qwen3Model": ("qwen3",),
    "qwen3moe.Qwen3MoeModel": ("qwen3moe",),
    "qwen35.Qwen35Model": ("qwen35", "qwen35moe", "qwen3next"),
    "phi3.Phi3Model": ("phi3",),
    "gemma.GemmaModel": ("gemma",),
    "gemma2.Gemma2Model": ("gemma2",),
    "gemma3.Gemma3Model": ("gemma3",),
    "gemma3n.Gemma3nModel": ("gemma3n",),
    "gemma_embedding.GemmaEmbeddingModel": ("gemma-embedding",),
    "olmo2.Olmo2Model": ("olmo2",),
    "olmoe.OlmoeModel": ("olmoe",),
    "exaone.ExaoneModel": ("exaone",),
    "exaone4.Exaone4Model": ("exaone4",),
    "bert.BertModel": ("bert", "nomic-bert"),
    "lfm2.Lfm2Model": ("lfm2", "lfm2moe"),
    "phi2.Phi2Model": ("phi2",),
    "stablelm.StableLMModel": ("stablelm",),
    "gptoss.GptOssModel": ("gpt-oss",),
    "ernie4_5.Ernie45Model": ("ernie4_5",),
    "ernie4_5_moe.Ernie45MoeModel": ("ernie4_5-moe",),
    "cohere2.Cohere2Model": ("cohere2",),
    "maple.MapleModel": ("maple",),
    "spark2_5.Spark25Model": ("spark2_5",),
    "hrm_text.HrmTextModel": ("hrm_text",),
    "cohere2moe.Cohere2MoeModel": ("cohere2moe",),
    "arcee.ArceeModel": ("arcee",),
    "mamba2.Mamba2Model": ("mamba2",),
    "granitehybrid.GraniteHybridModel": ("granitehybrid",),
    "falcon_h1.FalconH1Model": ("falcon-h1",),
    "nemotron_h.NemotronHModel": ("nemotron_h",),
    "mistral3.Mistral3Model": ("mistral3",),
    "hunyuan_dense.HunyuanDenseModel": ("hunyuan-dense",),
    "minicpm.MiniCPMModel": ("minicpm",),
    "rwkv7.RWKV7Model": ("rwkv7",),
    "bitnet.BitnetModel": ("bitnet",),
    "glm4.Glm4Model": ("glm4",),
    "glm4.Glm4MoeModel": ("glm4moe",),
    "smallthinker.SmallThinkerModel": ("smallthinker",),
    "bailingmoe2.BailingMoe2Model": ("bailingmoe2",),
    "seed_oss.SeedOssModel": ("seed_oss",),
    "apertus.ApertusModel": ("apertus",),
    "command_r.CommandRModel": ("command-r",),
    "gpt2.GPT2Model": ("gpt2",),
    "starcoder2.StarCoder2Model": ("starcoder2",),
    "gptneox.GPTNeoXModel": ("gptneox",),
    "rwkv6.RWKV6Model": ("rwkv6",),
    "llama4.Llama4Model": ("llama4",),
    "internlm2.InternLM2Model": ("internlm2",),
    "olmo.OlmoModel": ("olmo",),
    "nemotron.NemotronModel": ("nemotron",),
    "openelm.OpenELMModel": ("openelm",),
    "qwen2vl.Qwen2VLModel": ("qwen2vl",),
    "qwen3vl.Qwen3VLModel": ("qwen3vl",),
    "qwen3vl.Qwen3VLMoeModel": ("qwen3vlmoe",),
    "falcon.FalconModel": ("falcon",),
    "chatglm.ChatGLMModel": ("chatglm",),
    "jina_bert.JinaBertV2Model": ("jina-bert-v2",),
    "jina_bert.JinaBertV3Model": ("jina-bert-v3",),
    "nomic_bert_moe.NomicBertMoeModel": ("nomic-bert-moe",),
    "neo_bert.NeoBertModel": ("neo-bert",),
    "mamba.MambaModel": ("mamba",),
    "minicpm3.MiniCPM3Model": ("minicpm3",),
    "afmoe.AfmoeModel": ("afmoe",),
    "muse_glimmer.MuseGlimmerModel": ("muse-glimmer",),
    "laguna.LagunaModel": ("laguna",),
    "hy_v3.HyV3Model": ("hy_v3",),
    "hy_v4.HyV4Model": ("hy_v4",),
    "exaone_moe.ExaoneMoeModel": ("exaone-moe",),
    "pangu_embedded.PanguEmbeddedModel": ("pangu-embedded",),
    "arwkv7.ARWKV7Model": ("arwkv7",),
    "rwkv6qwen2.RWKV6Qwen2Model": ("rwkv6qwen2",),
    "gemma4.Gemma4Model": ("gemma4",),
    "gemma4_assistant.Gemma4AssistantModel": ("gemma4-assistant",),
    "eagle3.Eagle3Model": ("eagle3",),
    "starcoder.StarCoderModel": ("starcoder",),
    "bloom.BloomModel": ("bloom",),
    "mpt.MptModel": ("mpt",),
    "jamba.JambaModel": ("jamba",),
    "plamo2.Plamo2Model": ("plamo2",),
    "deci.DeciModel": ("deci",),
    "minimax_m2.MiniMaxM2Model": ("minimax-m2",),
    "minimax_m3.MiniMaxM3Model": ("minimax-m3",),
    "minimax_01.MiniMax01Model": ("minimax-01",),
    "mimo2.Mimo2Model": ("mimo2",),
    "step35.Step35Model": ("step35",),
    "mistral4.Mistral4Model": ("mistral4",),
    "qwen.QwenModel": ("qwen",),
    "baichuan.BaichuanModel": ("baichuan",),
    "orion.OrionModel": ("orion",),
    "xverse.XverseModel": ("xverse",),
    "plamo3.Plamo3Model": ("plamo3",),
    "maincoder.MaincoderModel": ("maincoder",),
    "jais2.Jais2Model": ("jais2",),
    "jais.JaisModel": ("jais",),
    "codeshell.CodeShellModel": ("codeshell",),
    "refact.RefactModel": ("refact",),
    "plm.PLMModel": ("plm",),
    "plamo.PlamoModel": ("plamo",),
    "chameleon.ChameleonModel": ("chameleon",),
    "bailingmoe.BailingMoeModel": ("bailingmoe",),
    "hunyuan_moe.HunyuanMoeModel": ("hunyuan-moe",),
    "dots1.Dots1Model": ("dots1",),
    "phimoe.PhiMoeModel": ("phimoe",),
    "grovemoe.GroveMoeModel": ("grovemoe",),
    "rnd1.Rnd1Model": ("rnd1",),
    "dream.DreamModel": ("dream",),
    "llada.LladaModel": ("llada",),
    "llada_moe.LladaMoeModel": ("llada-moe",),
    "modern_bert.ModernBertModel": ("modern-bert",),
    "eurobert.EuroBertModel": ("eurobert",),
    "llama_embed.LlamaEmbedModel": ("llama-embed",),
    "t5encoder.T5EncoderModel": ("t5encoder",),
    "dbrx.DbrxModel": ("dbrx",),
    "arctic.ArcticModel": ("arctic",),
    "grok.GrokModel": ("grok",),
    "nemotron_h_moe.NemotronHMoeModel": ("nemotron_h_moe",),
    "t5.T5Model": ("t5",),
    "kimi_linear.KimiLinearModel": ("kimi-linear",),
    "bailingmoe3.Bailingmoe3Model": ("bailingmoe3",),
    "kimi_k3.KimiK3Model": ("kimi-k3",),
    "glm5_next.Glm5NextModel": ("glm5-next",),
    "cogvlm.CogVLMModel": ("cogvlm",),
    "deepseek2_ocr.Deepseek2OCRModel": ("deepseek2-ocr",),
    "glm_dsa.GlmDsaModel": ("glm-dsa",),
    "dots3note.Dots3NoteModel": ("dots3note",),
    "deepseek32.Deepseek32Model": ("deepseek32",),
    "hunyuan_vl.HunyuanVLModel": ("hunyuan_vl",),
    "paddleocr.PaddleOCRModel": ("paddleocr",),
    "mellum.MellumModel": ("mellum",),
    "nanbeige.NanbeigeModel": ("nanbeige",),
    "talkie.TalkieModel": ("talkie",),
}
_WHERE: dict[str, str] = {arch: where for where, archs in _CLASSES.items() for arch in archs}


class _Registry(Mapping):
    """``arch -> class``, each class imported on first use (``in``, ``len`` and iteration import nothing)."""

    def __getitem__(self, arch: str) -> type[Model]:
        module, name = _WHERE[arch].rsplit(".", 1)
        return getattr(importlib.import_module(f".{module}", __name__), name)

    def __contains__(self, arch: object) -> bool:
        return arch in _WHERE

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


MODEL_CLASSES: Mapping[str, type[Model]] = _Registry()


def model_class(arch: str) -> type[Model]:
    """The class that runs ``arch``; a one-line error listing the supported ones otherwise."""
    try:
        return MODEL_CLASSES[arch]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported; kvrun runs {', '.join(sorted(MODEL_CLASSES))}"
        ) from None


def __getattr__(name: str) -> Any:  # (``from kvrun.models import Model``: the base class, imported when asked for)
    if name == "Model":
        from .common import Model

        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Model", "MODEL_CLASSES", "model_class"]
