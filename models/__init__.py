"""Architectures, looked up by the GGUF ``general.architecture`` value."""

from __future__ import annotations

from ..loaders.errors import UnsupportedModelError
from .afmoe import AfmoeModel
from .apertus import ApertusModel
from .arcee import ArceeModel
from .arwkv7 import ARWKV7Model
from .bailingmoe import BailingMoeModel
from .bailingmoe2 import BailingMoe2Model
from .bert import BertModel
from .bitnet import BitnetModel
from .bloom import BloomModel
from .chatglm import ChatGLMModel
from .cohere2 import Cohere2Model
from .command_r import CommandRModel
from .common import Model
from .deepseek import DeepseekModel
from .deepseek2 import Deepseek2Model
from .deci import DeciModel
from .dots1 import Dots1Model
from .ernie4_5 import Ernie45Model
from .ernie4_5_moe import Ernie45MoeModel
from .exaone import ExaoneModel
from .exaone4 import Exaone4Model
from .exaone_moe import ExaoneMoeModel
from .falcon import FalconModel
from .falcon_h1 import FalconH1Model
from .gemma import GemmaModel
from .gemma2 import Gemma2Model
from .gemma3 import Gemma3Model
from .gemma3n import Gemma3nModel
from .gemma4 import Gemma4Model
from .gemma_embedding import GemmaEmbeddingModel
from .glm4 import Glm4Model, Glm4MoeModel
from .gpt2 import GPT2Model
from .gptneox import GPTNeoXModel
from .gptoss import GptOssModel
from .granite import GraniteModel
from .granitehybrid import GraniteHybridModel
from .granitemoe import GraniteMoeModel
from .grovemoe import GroveMoeModel
from .hunyuan_dense import HunyuanDenseModel
from .hunyuan_moe import HunyuanMoeModel
from .internlm2 import InternLM2Model
from .jamba import JambaModel
from .jina_bert import JinaBertV2Model, JinaBertV3Model
from .lfm2 import Lfm2Model
from .llama import LlamaModel
from .llama4 import Llama4Model
from .mamba import MambaModel
from .mamba2 import Mamba2Model
from .minicpm import MiniCPMModel
from .minicpm3 import MiniCPM3Model
from .mimo2 import Mimo2Model
from .minimax_m2 import MiniMaxM2Model
from .mistral3 import Mistral3Model
from .mistral4 import Mistral4Model
from .mpt import MptModel
from .nemotron import NemotronModel
from .nemotron_h import NemotronHModel
from .neo_bert import NeoBertModel
from .modern_bert import ModernBertModel
from .eurobert import EuroBertModel
from .llama_embed import LlamaEmbedModel
from .t5encoder import T5EncoderModel
from .t5 import T5Model
from .kimi_linear import KimiLinearModel
from .nomic_bert_moe import NomicBertMoeModel
from .olmo import OlmoModel
from .olmo2 import Olmo2Model
from .olmoe import OlmoeModel
from .openelm import OpenELMModel
from .pangu_embedded import PanguEmbeddedModel
from .phi2 import Phi2Model
from .plamo2 import Plamo2Model
from .phi3 import Phi3Model
from .phimoe import PhiMoeModel
from .qwen2 import Qwen2Model
from .qwen2moe import Qwen2MoeModel
from .qwen2vl import Qwen2VLModel
from .qwen3 import Qwen3Model
from .qwen35 import Qwen35Model
from .qwen3moe import Qwen3MoeModel
from .qwen3vl import Qwen3VLModel, Qwen3VLMoeModel
from .rnd1 import Rnd1Model
from .dream import DreamModel  # (diffusion language models: models/diffusion_lm.py)
from .llada import LladaModel
from .llada_moe import LladaMoeModel
from .rwkv6 import RWKV6Model
from .rwkv6qwen2 import RWKV6Qwen2Model
from .rwkv7 import RWKV7Model
from .seed_oss import SeedOssModel
from .smallthinker import SmallThinkerModel
from .smollm3 import SmolLM3Model
from .stablelm import StableLMModel
from .starcoder import StarCoderModel
from .step35 import Step35Model
from .starcoder2 import StarCoder2Model
from .baichuan import BaichuanModel  # (the Llama block's kin: qwen, baichuan, orion, xverse, plamo3, maincoder, jais2)
from .jais2 import Jais2Model
from .jais import JaisModel  # (older and niche decoders: jais, codeshell, refact, plm, plamo, chameleon)
from .codeshell import CodeShellModel
from .refact import RefactModel
from .plm import PLMModel
from .plamo import PlamoModel
from .chameleon import ChameleonModel
from .maincoder import MaincoderModel
from .orion import OrionModel
from .plamo3 import Plamo3Model
from .qwen import QwenModel
from .xverse import XverseModel
from .arctic import ArcticModel
from .dbrx import DbrxModel
from .grok import GrokModel
from .nemotron_h_moe import NemotronHMoeModel
from .cogvlm import CogVLMModel  # (text sides of VL/OCR models: cogvlm, deepseek2-ocr, glm-dsa, hunyuan_vl, paddleocr)
from .deepseek2_ocr import Deepseek2OCRModel
from .glm_dsa import GlmDsaModel
from .hunyuan_vl import HunyuanVLModel
from .paddleocr import PaddleOCRModel

MODEL_CLASSES: dict[str, type[Model]] = {}
for _cls in (LlamaModel, SmolLM3Model, GraniteModel, GraniteMoeModel, Qwen2Model, Qwen2MoeModel, DeepseekModel, Deepseek2Model,
             Qwen3Model, Qwen3MoeModel, Qwen35Model, Phi3Model, GemmaModel, Gemma2Model, Gemma3Model, Gemma3nModel, GemmaEmbeddingModel,
             Olmo2Model, OlmoeModel, ExaoneModel, Exaone4Model, BertModel, Lfm2Model, Phi2Model, StableLMModel, GptOssModel, Ernie45Model,
             Ernie45MoeModel, Cohere2Model, ArceeModel, Mamba2Model, GraniteHybridModel, FalconH1Model, NemotronHModel, Mistral3Model,
             HunyuanDenseModel, MiniCPMModel, RWKV7Model, BitnetModel, Glm4Model, Glm4MoeModel, SmallThinkerModel, BailingMoe2Model,
             SeedOssModel, ApertusModel, CommandRModel, GPT2Model, StarCoder2Model, GPTNeoXModel, RWKV6Model, Llama4Model,
             InternLM2Model, OlmoModel, NemotronModel, OpenELMModel, Qwen2VLModel, Qwen3VLModel, Qwen3VLMoeModel, FalconModel, ChatGLMModel,
             JinaBertV2Model, JinaBertV3Model, NomicBertMoeModel, NeoBertModel, MambaModel, MiniCPM3Model, AfmoeModel, ExaoneMoeModel,
             PanguEmbeddedModel, ARWKV7Model, RWKV6Qwen2Model, Gemma4Model,
             StarCoderModel, BloomModel, MptModel, JambaModel, Plamo2Model, DeciModel,
             MiniMaxM2Model, Mimo2Model, Step35Model, Mistral4Model,
             QwenModel, BaichuanModel, OrionModel, XverseModel, Plamo3Model, MaincoderModel, Jais2Model,
             JaisModel, CodeShellModel, RefactModel, PLMModel, PlamoModel, ChameleonModel,
             BailingMoeModel, HunyuanMoeModel, Dots1Model, PhiMoeModel, GroveMoeModel, Rnd1Model, DreamModel, LladaModel, LladaMoeModel,
             ModernBertModel, EuroBertModel, LlamaEmbedModel, T5EncoderModel,
             DbrxModel, ArcticModel, GrokModel, NemotronHMoeModel, T5Model,
             KimiLinearModel,
             CogVLMModel, Deepseek2OCRModel, GlmDsaModel, HunyuanVLModel, PaddleOCRModel):  # fmt: skip
    for _arch in _cls.archs:
        MODEL_CLASSES[_arch] = _cls


def model_class(arch: str) -> type[Model]:
    """The class that runs ``arch``; a one-line error listing the supported ones otherwise."""
    try:
        return MODEL_CLASSES[arch]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported; kvrun runs {', '.join(sorted(MODEL_CLASSES))}"
        ) from None


__all__ = ["Model", "MODEL_CLASSES", "model_class"]
