"""The ``kvrun`` command.  Commands parse options and call library functions.

Every user error ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import click

from .loaders.errors import KvrunError

MODEL_HELP = "a .gguf path or a known name (smollm2, gemma3-270m); default: smollm2"


def _fail(msg: str) -> None:
    click.echo(f"kvrun: error: {msg}", err=True)
    sys.exit(2)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn KvrunError (and a few OS errors) into one line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except KvrunError as e:
            _fail(str(e))
        except BrokenPipeError:
            # output piped into `head` and closed: not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except (OSError, ValueError, MemoryError) as e:
            _fail(f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)

    return wrapper


def _progress_bar(label: str) -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "b" not in bar:
            bar["b"] = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)
        b = bar["b"]
        b.update(done - b.n)
        if done >= total:
            b.close()

    return update


class _LazyBar:
    """A tqdm bar on stderr drawn at the first progress report, once the work is known and checked:
    input that fails its checks ends as one error line, with no bar drawn around it."""

    def __init__(self, **tqdm_kw: Any) -> None:
        self.kw, self.bar = tqdm_kw, None

    def update(self, done: int, total: int, postfix: str | None = None) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, **self.kw)
        self.bar.update(done - self.bar.n)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _resolve(model: str | None) -> Path:
    from .loaders.store import resolve

    return resolve(model, progress=_progress_bar("pulling model"))


class _OneLineErrors(click.Group):
    """Click's usage errors (a bad flag or value, a missing argument) as one ``kvrun: error:`` line
    naming the help to read, like every other error here, instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # click raises instead of printing; help and --version return 0
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `kvrun` (click >= 8.2): the help, as a request
                click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
                sys.exit(0)
            where = e.ctx.command_path if e.ctx is not None else "kvrun"
            _fail(f"{e.format_message()} (see '{where} --help')")
        except click.ClickException as e:
            _fail(e.format_message())
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvrun")
def main() -> None:
    """kvrun: run GGUF language models on the CPU with a compressible KV cache."""


# ---------------------------------------------------------------- info
def _quant_label(file_type: int, tensor_types: dict[str, int]) -> str:
    """The file's quantization as llama.cpp names it (``general.file_type``: Q4_K_M), else its commonest weight type.

    (A Q4_K_M file of a model whose rows are not a multiple of 256 holds more Q5_0 than Q4_K tensors.)"""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:  # absent (-1) or unknown
        pass
    return max(tensor_types, key=lambda k: tensor_types[k] if k not in ("F32", "F16") else -1)


RWKV_ARCHS = ("rwkv6", "rwkv7", "arwkv7", "rwkv6qwen2")


def rope_absence(cfg: Any, g: Any) -> str | None:
    """What carries position where a model's attention rotates nothing, as `kvrun info` says it (its config ``cfg``, its
    open file ``g``): its class's ``rope_absence`` (models/common.py's ``Model.ROPE_ABSENCE``); None where it uses rope,
    on every attention layer or on some, or for an architecture kvrun does not run."""
    from .models import MODEL_CLASSES

    cls = MODEL_CLASSES.get(cfg.arch)
    return None if cls is None else cls.rope_absence(cfg, g)


def cache_widths(cfg: Any, g: Any, bits: int = 16) -> tuple[int, ...]:
    """K+V values a token keeps in each layer's cache, as `kvrun info` counts them (its config ``cfg``, its open file
    ``g``): its class's ``cache_widths`` (models/common.py's ``Model.cache_widths``: MLA's latent is models/mla.py's),
    the file's geometry for an architecture kvrun does not run."""
    from .models import MODEL_CLASSES

    cls = MODEL_CLASSES.get(cfg.arch)
    return cfg.kv_values_by_layer() if cls is None else cls.cache_widths(cfg, g, bits)


def class_words(hook: str, cfg: Any, g: Any) -> str | None:
    """What the class that runs ``cfg.arch`` says through its ``hook`` (its config ``cfg``, its open file ``g``):
    models/common.py's ``Model.layer_passes`` or ``Model.rope_window``; None for an architecture kvrun does not run."""
    from .models import MODEL_CLASSES

    cls = MODEL_CLASSES.get(cfg.arch)
    return None if cls is None else getattr(cls, hook)(cfg, g)


def model_facts(path: Path, g: Any = None) -> dict[str, Any]:
    """Everything `kvrun info` prints, read from the header only (no weights touched); ``g``: the file, already open."""
    from .loaders.config import load_config
    from .loaders.gguf_file import GGUFFile
    from .loaders.chat_template import file_template
    from .loaders.quants import is_supported

    g = g if g is not None else GGUFFile(path)
    cfg = load_config(g)
    kinds = {"llama": "SentencePiece (spm)", "gpt2": "byte-level BPE", "bert": "WordPiece", "rwkv": "RWKV World (longest match)",
             "t5": "SentencePiece Unigram (ugm)", "gemma4": "Gemma 4 BPE (raw UTF-8, byte fallback)"}
    pooling = {1: "mean", 2: "cls", 3: "last"}.get(int(g.arch_get("pooling_type", 1) or 1), "mean")
    tok_model = str(g.get("tokenizer.ggml.model", "none"))
    types = Counter(t.type_name for t in g.tensors.values())
    n_params = sum(t.n_elements for t in g.tensors.values())
    shexp = next((t for name, t in g.tensors.items() if name.endswith(".ffn_gate_shexp.weight")), None)
    mamba = None  # Mamba 1 (every layer a selective-scan mixer, no heads): its geometry and the state a sequence keeps in
    if cfg.arch == "mamba":  # each layer (the scan's [d_inner, d_state] and the convolution's last d_conv - 1 inputs, float32)
        di, ds, dc = (int(g.arch_get(k, 0) or 0) for k in ("ssm.inner_size", "ssm.state_size", "ssm.conv_kernel"))
        mamba = {"d_inner": di, "d_state": ds, "d_conv": dc, "state_bytes_per_layer": 4 * di * ds + 4 * (dc - 1) * di}
    kda = None  # Kimi Linear's KDA layers: n_head heads of kda.head_dim (q, k, v alike), a state [hd, hd] a head, q/k/v's inputs
    if cfg.arch in ("kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next") and (hd := int(g.arch_get("kda.head_dim", 0) or 0)):  # (and Ling 3's)
        H, dc = cfg.n_head, cfg.ssm_d_conv
        kda = {"d_conv": dc, "d_inner": H * hd, "d_state": hd, "n_head": H, "n_group": H,
               "state_bytes_per_layer": 4 * H * hd * hd + 4 * (dc - 1) * 3 * H * hd}
    lightning = None  # MiniMax-01's lightning layers: n_head heads of head_dim, a state [hd, hd] a head, no convolution
    if cfg.arch == "minimax-01":
        H, hd = cfg.n_head, cfg.head_dim
        lightning = {"d_conv": 1, "d_inner": H * hd, "d_state": hd, "n_head": H, "n_group": H, "state_bytes_per_layer": 4 * H * hd * hd}
    return {
        "path": str(path),
        "name": cfg.name,
        "architecture": cfg.arch,
        "file_size": g.file_size,
        "n_params": n_params,
        "tensor_types": dict(types.most_common()),
        # (integer tensors are index tables read as they are, EAGLE-3's d2t, not weights a kernel multiplies)
        "unsupported_types": sorted({t.type_name for t in g.tensors.values() if not is_supported(t.qtype) and t.type_name not in ("I8", "I16", "I32", "I64")}),
        "file_type": _quant_label(cfg.file_type, dict(types)),
        "context_length": cfg.n_ctx_train,
        "n_layer": cfg.n_layer,
        "layer_passes": class_words("layer_passes", cfg, g),  # (the blocks, and the passes a token runs them in)
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_head_kv": cfg.n_head_kv,
        # where the head counts differ by layer (OpenELM): (fewest q, most q, fewest kv, most kv); n_head, n_head_kv the most
        "heads_by_layer": [min(q), max(q), min(cfg.kv_heads_per_layer), max(cfg.kv_heads_per_layer)]
        if cfg.kv_heads_per_layer and len(q := [int(n) for n in g.arch_get("attention.head_count")]) else None,
        "head_dim": cfg.head_dim,
        "head_dim_v": cfg.head_dim_v,
        "n_ff": cfg.n_ff,
        "n_expert": cfg.n_expert,
        "n_expert_used": cfg.n_expert_used,
        "n_ff_exp": cfg.n_ff_exp,
        # a shared expert every token runs beside its routed ones (Qwen2-MoE, DeepSeek-MoE, GraniteMoeShared): its width
        # (0: none), how many experts it holds (DeepSeek-MoE's 2, as one FFN), whether a sigmoid gate scales it (Qwen2-MoE's)
        "n_ff_shexp": shexp.shape[0] if shexp is not None else 0,
        "n_expert_shared": int(g.arch_get("expert_shared_count", 1) or 1) if shexp is not None else 0,
        "shexp_gated": any(name.endswith(".ffn_gate_inp_shexp.weight") for name in g.tensors),
        # gpt-oss's learned attention sinks: a logit per head that takes its share of each softmax and adds no value
        "attention_sinks": "blk.0.attn_sinks.weight" in g.tensors,
        "rope_theta": cfg.rope_theta,
        # (the window layers' own base, 0: the global one; a class that says how they rotate says it in rope_window)
        "rope_theta_swa": cfg.rope_theta_swa if (rope_window := class_words("rope_window", cfg, g)) is None else 0.0,
        "rope_window": rope_window,
        "rope_scaling": cfg.rope_scaling_type,
        "rope_neox": cfg.rope_neox,
        "rope_dim": cfg.rope_dim,
        "norm_eps": cfg.norm_eps,
        "sliding_window": cfg.sliding_window,
        "n_swa_layers": sum(cfg.swa_layers),
        "tokenizer": tok_model,
        "tokenizer_kind": kinds.get(tok_model, tok_model),
        "tokenizer_pre": g.get("tokenizer.ggml.pre"),
        "vocab_size": cfg.n_vocab,
        "bos_token_id": g.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.get("tokenizer.ggml.eos_token_id"),
        "has_chat_template": file_template(g) is not None,
        "kv_bytes_per_token": {str(b): sum(cache_widths(cfg, g, b)) * b / 8.0 for b in (16, 8, 4, 2)},  # (as the class lays it out)
        # an encoder (BERT): embeddings only, pooled so; None for a text model
        "embedding_pooling": pooling if cfg.arch in ("bert", "nomic-bert", "gemma-embedding", "jina-bert-v2", "jina-bert-v3", "nomic-bert-moe", "neo-bert", "modern-bert", "eurobert", "llama-embed", "t5encoder") else None,
        # Mamba-2's state-space layers (mamba2, granitehybrid): how many, their geometry, the state a sequence keeps
        # in each (the scan's and the convolution's last inputs, float32); Granite 4.0-H's attention without rope
        "n_ssm_layers": cfg.n_layer if cfg.ssm_parallel else sum(cfg.ssm_layers),
        "ssm_parallel": cfg.ssm_parallel,
        # (Qwen3.5's, Qwen3-Next's: Gated DeltaNet, d_inner its value heads' width, d_state a head's, n_group its key heads;
        # the state's and the convolution's sizes come out of the same formula)
        "ssm_kind": "Kimi Delta Attention" if kda else "lightning attention" if lightning else "Gated DeltaNet" if cfg.arch in ("qwen35", "qwen35moe", "qwen3next") else "Mamba 1" if cfg.arch == "jamba" else "Mamba-2",
        "ssm": kda or lightning or {"d_conv": cfg.ssm_d_conv, "d_inner": cfg.ssm_d_inner, "d_state": cfg.ssm_d_state, "n_head": cfg.ssm_dt_rank,
                "n_group": cfg.ssm_n_group, "state_bytes_per_layer": 4 * cfg.ssm_d_inner * cfg.ssm_d_state
                + 4 * (cfg.ssm_d_conv - 1) * (cfg.ssm_d_inner + 2 * cfg.ssm_n_group * cfg.ssm_d_state)}
        if any(cfg.ssm_layers) or cfg.ssm_parallel else None,
        # why the attention rotates nothing (None: rope on every attention layer, or on some: Llama 4's NoPE layers)
        "no_rope": (no_rope := rope_absence(cfg, g)),
        "rope_used": no_rope is None,
        # RWKV (attention-free): the WKV state a sequence keeps in each layer (float32 [head_size, head_size] a head) and
        # its token shifts' last rows (two; ARWKV-7's token_shift_count: one)
        "rwkv": {"head_size": hs, "n_head": cfg.n_embd // hs,
                 "state_bytes_per_layer": 4 * cfg.n_embd * hs + int(g.arch_get("token_shift_count", 2)) * 4 * cfg.n_embd}
        if cfg.arch in RWKV_ARCHS and (hs := int(g.arch_get("wkv.head_size", 64) or 64)) else None,
        "mamba": mamba,
    }


def _tiled_rows(c: Any) -> dict[str, Any]:
    """A tiling projector's rows (``c``: its MmprojConfig): a tile's (the encoder's n_tokens), the fewest and most tiles,
    and the fewest and most rows a picture takes with its tiles and the view of the whole after them, as
    models/idefics3_image.py, internvl_image.py, llama4_image.py and minicpmv_image.py cut pictures (MiniCPM-V's tiles
    are its slices); {} for a projector that does not tile."""
    R, S = c.n_tokens, c.image_size
    if c.projector_type == "idefics3" and c.longest_edge > 0:  # (every picture scaled to the longest edge: n tiles along
        n = -(-c.longest_edge // S)  # it, from 1 to n across it; a global view after them)
        return {"rows_per_tile": R, "min_tiles": n, "max_tiles": n * n, "rows_per_picture": [(n + 1) * R, (n * n + 1) * R]}
    if c.projector_type == "internvl":  # (a picture no larger than a tile: the thumbnail alone; else a grid, then it)
        return {"rows_per_tile": R, "min_tiles": c.min_tiles, "max_tiles": c.max_tiles, "rows_per_picture": [R, (c.max_tiles + 1) * R]}
    if c.projector_type == "llama4":  # (as InternVL, the overview after the tiles: of the grids up to 3 x 3, never 1 x 1)
        from .models.llama4_image import MAX_TILES_SIDE

        n = MAX_TILES_SIDE**2
        return {"rows_per_tile": R, "min_tiles": 2, "max_tiles": n, "rows_per_picture": [R, (n + 1) * R]}
    if c.projector_type == "resampler":  # (MiniCPM-V: an overview, and past one slice a grid of 2 to max_slice_nums
        from .models.minicpmv_image import MAX_SLICES  # slices; each part the resampler's queries, not the ViT's patches)

        Q, n = c.n_query, MAX_SLICES
        return {"rows_per_image": Q, "rows_per_tile": Q, "min_tiles": 2, "max_tiles": n, "rows_per_picture": [Q, (n + 1) * Q]}
    if c.projector_type == "step3vl":  # (Step3-VL: crops of libmtmd's fixed 504 pixels, as many as a picture needs,
        from .models.step3vl_image import CROP  # then the overview; models/step3vl_image.py)

        R = (CROP // (4 * c.patch_size)) ** 2
        return {"rows_per_tile": R, "min_tiles": 0, "max_tiles": None, "rows_per_picture": [c.n_tokens + 2, None]}
    if c.projector_type == "deepseekocr":  # (DeepSeek-OCR: rows of 640-pixel tiles, then the 1024-pixel global view, each
        from .runtime.vision_deepseekocr import MAX_TILES, MIN_TILES, TILE, chunk_rows, target_ratios  # grid row a newline)

        hi = max(chunk_rows(w, h) for w, h in target_ratios())
        return {"rows_per_image": chunk_rows(0, 0), "rows_per_tile": (TILE // 64) ** 2, "min_tiles": MIN_TILES, "max_tiles": MAX_TILES,
                "rows_per_picture": [chunk_rows(0, 0), hi]}  # fmt: skip
    if c.projector_type == "deepseekocr2":  # (DeepSeek-OCR 2: 768-pixel tiles, each an image of its own, then the 1024-pixel
        from .runtime.vision_deepseekocr2 import MAX_TILES, MIN_TILES, TILE, chunk_rows  # global view and its separator)

        return {"rows_per_image": chunk_rows(0, 0), "rows_per_tile": (TILE // 64) ** 2, "min_tiles": MIN_TILES, "max_tiles": MAX_TILES,
                "rows_per_picture": [chunk_rows(0, 0), chunk_rows(MAX_TILES, 1)]}  # (libmtmd's defaults; a file may set others)
    return {}


def _tiled_sizes(c: Any, t: dict[str, Any]) -> str:
    """`kvrun info`'s words for :func:`_tiled_rows`."""
    if c.projector_type == "step3vl":
        return (f"crops of 504x504 pixels ({t['rows_per_tile']} rows each) where a picture is longer than {c.image_size} pixels "
                f"or past 1.5:1 (one longer than {c.longest_edge} pixels scaled down to that first), then a {c.image_size}x"
                f"{c.image_size} overview in {c.patch_size}-pixel patches ({c.n_tokens} rows)")  # fmt: skip
    if c.projector_type == "deepseekocr2":
        lo, hi = t["rows_per_picture"]
        return (f"a 1024x1024 global view in 16-pixel patches ({lo} rows: its queries and the view separator) after, where a "
                f"picture is past 768 pixels, the grid of {t['min_tiles']} to {t['max_tiles']} 768x768 tiles nearest its aspect "
                f"({t['rows_per_tile']} rows each): {lo} to {hi} rows a picture")  # fmt: skip
    if c.projector_type == "deepseekocr":
        lo, hi = t["rows_per_picture"]
        return (f"a 1024x1024 global view in 16-pixel patches ({lo} rows, newlines and the view separator included) after, where "
                f"a picture is past 640 pixels, the grid of {t['min_tiles']} to {t['max_tiles']} 640x640 tiles nearest its aspect "
                f"({t['rows_per_tile']} rows each, and a newline a grid row): {lo} to {hi} rows a picture")  # fmt: skip
    lo, hi = t["rows_per_picture"]
    head = f"{c.image_size}x{c.image_size} tiles in {c.patch_size}-pixel patches, {t['rows_per_tile']} rows a tile; "
    if c.projector_type == "idefics3":
        n = -(-c.longest_edge // c.image_size)
        how = f"a picture is scaled to {c.longest_edge} pixels on its longest edge and cut into up to {n}x{n} tiles, then a global view"
    elif c.projector_type == "resampler":
        head = (f"slices of about {c.image_size}x{c.image_size} pixels in {c.patch_size}-pixel patches, {t['rows_per_tile']} rows a "
                "slice (the resampler's queries); ")  # fmt: skip
        how = (f"a picture no larger than a slice is its overview alone, a larger one its overview then the grid of "
               f"{t['min_tiles']} to {t['max_tiles']} slices nearest its aspect")  # fmt: skip
    elif c.projector_type == "llama4":
        how = (f"a picture no larger than a tile is its overview alone, a larger one cut into the grid of {t['min_tiles']} to "
               f"{t['max_tiles']} tiles (up to 3x3) that fits it best, then the overview")  # fmt: skip
    else:
        how = (f"a picture no larger than a tile is its thumbnail alone, a larger one cut into the grid of {c.min_tiles} to "
               f"{c.max_tiles} tiles that fits it best, then the thumbnail")  # fmt: skip
    return f"{head}{how}: {lo} to {hi} rows a picture"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the facts as JSON")
@friendly
def info(model: str | None, as_json: bool) -> None:
    """Architecture, size, quant types, geometry, tokenizer and KV cost of MODEL."""
    path = _resolve(model)
    from .loaders.gguf_file import GGUFFile

    g = GGUFFile(path)
    audio = False
    if g.architecture == "clip":  # (models/whisper_audio and what it imports: for a projector only)
        from .models.whisper_audio import is_audio_mmproj

        audio = is_audio_mmproj(g)
    if audio:  # an audio projector (Ultravox's): what it is, how to use it
        from .models.audio_towers import audio_tower

        tower = audio_tower(g)  # (Whisper's, Qwen3-Omni's, LFM2-Audio's FastConformer)
        a = tower.load_config(g)
        f = {"path": str(path), "projector": a.projector_type, "n_mel": a.n_mel, "n_layer": a.n_layer, "n_embd": a.n_embd,
             "n_head": a.n_head, "stack_factor": getattr(a, "stack_factor", 1), "rows_per_30s": a.rows_per_chunk,
             "n_text_embd": a.n_text_embd}  # fmt: skip
        click.echo(json.dumps(f, indent=2) if as_json else
                   f"audio projector ({path}): {a.projector_type}, a {a.n_layer}-layer {tower.name} {a.n_embd} wide ({a.n_head} heads) "
                   f"on {a.n_mel} mel bins, {a.rows_per_chunk} rows per 30 s into a text model {a.n_text_embd} wide; give it with "
                   "--mmproj and --audio beside that model")  # fmt: skip
        return
    if g.architecture == "clip":  # a vision projector (mmproj) is not a model either: what it is, how to use it
        from .loaders.mmproj import load_mmproj_config

        c = load_mmproj_config(g)
        f = {"path": str(path), "projector": c.projector_type, "image_size": c.image_size, "patch_size": c.patch_size,
             "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "rows_per_image": c.n_tokens, "n_text_embd": c.n_text_embd}
        f.update(tiled := _tiled_rows(c))  # (SmolVLM's, InternVL's, Llama 4's, MiniCPM-V's: rows_per_image is a tile's)
        if as_json:
            click.echo(json.dumps(f, indent=2))
        else:
            sizes = (_tiled_sizes(c, tiled) if tiled else
                     f"{c.image_size}x{c.image_size} images in {c.patch_size}-pixel patches, {c.n_tokens} rows an image"
                     if not c.max_pixels else  # (Qwen2-VL's: a picture's own size, in 2x2 blocks of patches)
                     f"pictures of any size in {c.patch_size}-pixel patches, {c.min_pixels // (c.n_merge * c.patch_size) ** 2} to "
                     f"{c.max_pixels // (c.n_merge * c.patch_size) ** 2} rows a picture")  # (n_merge x n_merge patches a row)
            heard = ""
            if g.get("clip.has_audio_encoder", False):  # (a two-sided projector: Qwen2.5-Omni's, Nemotron Nano VL's, Gemma 4 12B's)
                from .models.audio_towers import audio_tower

                tower = audio_tower(g)
                a = tower.load_config(g)
                heard = (f"; and audio: {a.projector_type}, a {a.n_layer}-layer {tower.name}, {a.rows_per_chunk} rows per 30 s "
                         "(--audio)")  # fmt: skip
            click.echo(f"multimodal projector ({path}): {c.projector_type}, a {c.n_layer}-layer vision encoder {c.n_embd} wide "
                       f"({c.n_head} heads), {sizes} into a text model {c.n_text_embd} wide{heard}; give it with --mmproj beside "
                       "that model")  # fmt: skip
        return
    if g.get("general.type") == "adapter":  # a LoRA adapter is not a model: say what it is and how to use it
        from .loaders.lora import LoraAdapter

        a = LoraAdapter.open(path)
        ranks = sorted({int(t[0].shape[0]) for t in a.pairs.values()})
        f = {"path": str(path), "adapter": "lora", "architecture": a.arch, "alpha": a.alpha, "ranks": ranks, "n_weights": len(a.pairs)}
        if as_json:
            click.echo(json.dumps(f, indent=2))
        else:
            click.echo(f"LoRA adapter for {a.arch} ({path}): {len(a.pairs)} weights, rank {'/'.join(map(str, ranks))}, "
                       f"alpha {a.alpha:g}; apply it with --lora {path} (or --lora-scaled {path} SCALE)")  # fmt: skip
        return
    f = model_facts(path, g)
    if as_json:
        click.echo(json.dumps(f, indent=2))
        return
    types = ", ".join(f"{k} x{v}" for k, v in f["tensor_types"].items())
    lines = [
        ("model", f"{f['name']} ({f['path']})"),
        ("architecture", f["architecture"]),
        ("parameters", f"{f['n_params'] / 1e6:.1f} M"),
        ("file size", _size(f["file_size"])),
        ("tensor types", f"{types}  ({f['file_type']})" + (f"; kvrun cannot run {', '.join(f['unsupported_types'])} yet" if f["unsupported_types"] else "")),
        ("context length", f["context_length"]),
        ("layers", f["layer_passes"] or f["n_layer"]),
        ("embedding", f["n_embd"]),
        ("heads (q / kv)", f"{f['n_head']} / {f['n_head_kv']}  (head_dim {f['head_dim']})" if not f["heads_by_layer"] else
                           "{}-{} / {}-{} by layer  (head_dim {})".format(*f["heads_by_layer"], f["head_dim"])),
        ("feed-forward", f"{f['n_expert_used']} of {f['n_expert']} experts a token, each {f['n_ff_exp']} wide" if f["n_expert"] else f["n_ff"]),
        ("shared expert", f"{f['n_ff_shexp']} wide" + (f" ({f['n_expert_shared']} experts as one)" if f["n_expert_shared"] > 1 else "") + ", on every token" + (", its output scaled by a sigmoid gate" if f["shexp_gated"] else "")),
        ("rope", f"theta {f['rope_theta']:g}" + (f", local {f['rope_theta_swa']:g}" if f["rope_theta_swa"] else "") + f", {'neox' if f['rope_neox'] else 'normal'}, scaling {f['rope_scaling']}"
                 + (f" ({f['rope_window']})" if f["rope_window"] else "")
                 + (f", partial: {f['rope_dim']} of {f['head_dim']} dims" if f["rope_dim"] < f["head_dim"] else "")),
        ("sliding window", f"{f['sliding_window']} tokens on {f['n_swa_layers']} of {f['n_layer']} layers" if f["sliding_window"] else "none"),
        ("attention sinks", "a learned logit per head, beside every softmax's keys"),
        ("tokenizer", f"{f['tokenizer_kind']}, {f['vocab_size']} tokens" + (f", pre {f['tokenizer_pre']}" if f["tokenizer_pre"] else "")),
        ("chat template", "in file" if f["has_chat_template"] else "built-in"),
        ("KV cache / token", "  ".join(f"{b}-bit {_size(v)}" for b, v in f["kv_bytes_per_token"].items())),
    ]
    if not f["n_ff_shexp"]:
        lines = [ln for ln in lines if ln[0] != "shared expert"]
    if not f["attention_sinks"]:
        lines = [ln for ln in lines if ln[0] != "attention sinks"]
    if f["ssm"]:  # (after the layers: which are Mamba-2's; a model of them alone has no attention, no FFN, no K/V)
        m = f["ssm"]
        which = "every layer's Mamba-2 mixer beside its attention" if f["ssm_parallel"] else f"{f['n_ssm_layers']} of {f['n_layer']} {f['ssm_kind']}"
        if f["ssm_kind"] == "Mamba 1":  # (Jamba's: no heads, no groups)
            geo = f"d_inner {m['d_inner']}, state {m['d_state']}, convolution {m['d_conv']}"
        elif f["ssm_kind"] == "Kimi Delta Attention":
            geo = f"{m['n_head']} heads, each {m['d_state']} wide, a decay per key channel, convolution {m['d_conv']}"
        elif f["ssm_kind"] == "lightning attention":  # (MiniMax-01's: a fixed decay a head, no convolution)
            geo = f"{m['n_head']} heads, each {m['d_state']} wide, a fixed decay a head"
        elif f["ssm_kind"] == "Gated DeltaNet":
            geo = f"{m['n_head']} value heads over {m['n_group']} key heads, each {m['d_state']} wide, convolution {m['d_conv']}"
        else:
            geo = (f"d_inner {m['d_inner']}: {m['n_head']} heads, state {m['d_state']}, "
                   f"{m['n_group']} group{'s' if m['n_group'] != 1 else ''}, convolution {m['d_conv']}")  # fmt: skip
        ssm = f"{which} ({geo}); {_size(m['state_bytes_per_layer'])} of state a layer"
        lines.insert(next(i for i, ln in enumerate(lines) if ln[0] == "layers") + 1, ("state-space layers", ssm))
        if f["n_ssm_layers"] == f["n_layer"] and not f["ssm_parallel"]:
            lines = [ln for ln in lines if ln[0] not in ("heads (q / kv)", "feed-forward", "rope", "sliding window", "KV cache / token")]
    if f["mamba"]:  # (no attention, no FFN: a selective-scan mixer a layer, its fixed state)
        m = f["mamba"]
        lines = [ln for ln in lines if ln[0] not in ("heads (q / kv)", "feed-forward", "rope", "sliding window", "KV cache / token")]
        lines.insert(next(i for i, ln in enumerate(lines) if ln[0] == "embedding") + 1,
                     ("state-space layers", f"every layer a Mamba 1 mixer (d_inner {m['d_inner']}, state {m['d_state']}, convolution "
                                            f"{m['d_conv']}); {_size(m['state_bytes_per_layer'])} of state a layer, whatever the context"))  # fmt: skip
    if f["rwkv"]:  # (no attention: no heads, rope, window or K/V; a fixed state a layer instead)
        r = f["rwkv"]
        lines = [ln for ln in lines if ln[0] not in ("heads (q / kv)", "rope", "sliding window", "KV cache / token")]
        lines.insert(next(i for i, ln in enumerate(lines) if ln[0] == "embedding") + 1,
                     ("recurrent state", f"{r['n_head']} WKV heads of {r['head_size']}; {_size(r['state_bytes_per_layer'])} a layer, "
                                         "whatever the context (no KV cache)"))  # fmt: skip
    if f["no_rope"]:  # (no theta or scaling to show: what carries position instead)
        lines = [(k, f"none ({f['no_rope']})" if k == "rope" else v) for k, v in lines]
    if f["embedding_pooling"]:  # an encoder: no chat, no KV cache; BERT no rope or window (EmbeddingGemma has both)
        gone = ("chat template", "KV cache / token") + (("rope", "sliding window") if f["architecture"] not in ("gemma-embedding", "modern-bert") else ())
        lines = [ln for ln in lines if ln[0] not in gone]
        lines.append(("use", f"embeddings only (kvrun embed, /v1/embeddings), {f['embedding_pooling']} pooling"))
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k:<{w}}  {v}")


# ---------------------------------------------------------------- tokenize
@main.command()
@click.argument("model")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help='print {"ids": [...], "pieces": [...]}')
@click.option("--no-bos", is_flag=True, help="do not add the BOS token")
@click.option("--no-parse-special", is_flag=True, help="treat special-token text as plain text")
@click.option("--ids", "ids_only", is_flag=True, help="print only the ids, as a Python list")
@friendly
def tokenize(model: str, text: str, as_json: bool, no_bos: bool, no_parse_special: bool, ids_only: bool) -> None:
    """Token ids and pieces of TEXT, as llama-tokenize prints them."""
    from .loaders.gguf_file import GGUFFile
    from .loaders.tokenizer import Tokenizer

    g = GGUFFile(_resolve(model))
    tok = Tokenizer.from_metadata(g.metadata)
    ids = tok.encode(text, add_bos=False if no_bos else None, parse_special=not no_parse_special)
    pieces = [tok.token_to_piece(i) for i in ids]
    if as_json:
        click.echo(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
    elif ids_only:
        click.echo(str(ids))
    else:
        for i, p in zip(ids, pieces):
            click.echo(f"{i:>6} -> '{p}'")


# ---------------------------------------------------------------- store
@main.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="fetch again even if present")
@friendly
def pull(name: str, force: bool) -> None:
    """Fetch a known model (smollm2, gemma3-270m) into the models directory."""
    from .loaders.store import pull as do_pull

    p = do_pull(name, progress=_progress_bar(name), force=force)
    click.echo(str(p))


@main.command("models")
@friendly
def models_cmd() -> None:
    """List the models in the models directory ($KVRUN_MODELS or ~/.cache/kvrun/models)."""
    from .loaders.store import KNOWN_MODELS, list_models, models_dir

    rows = list_models()
    click.echo(f"models directory: {models_dir()}")
    have = {n for n, _, _ in rows}
    for name, path, size in rows:
        click.echo(f"  {name:<16} {_size(size):>10}  {path}")
    for m in KNOWN_MODELS.values():
        if m.name not in have:
            click.echo(f"  {m.name:<16} {'-':>10}  not pulled (kvrun pull {m.name}): {m.description}")


@main.command()
@click.argument("inp", metavar="IN.gguf", type=click.Path(dir_okay=False))
@click.argument("out", metavar="OUT.gguf", type=click.Path(dir_okay=False))
@click.argument("qtype", metavar="TYPE")
@click.option("--allow-requantize", is_flag=True, help="accept an already quantized input (dequantized first: loses more)")
@click.option("--pure", is_flag=True, help="every quantized matrix TYPE's one type, not llama.cpp's mix")
@click.option("--output-tensor-type", metavar="T", default=None, help="type of output.weight (q8_0, q6_K, f16, ...)")
@click.option("--token-embedding-type", metavar="T", default=None, help="type of token_embd.weight")
@click.option("--imatrix", "imatrix", metavar="FILE", default=None, help="importance matrix (kvrun imatrix / llama-imatrix: GGUF or legacy .dat) to weight the rounding by")
@friendly
def quantize(inp: str, out: str, qtype: str, allow_requantize: bool, pure: bool, output_tensor_type: str | None,
             token_embedding_type: str | None, imatrix: str | None) -> None:  # fmt: skip
    """Quantize an F32/F16/BF16 GGUF as llama.cpp's llama-quantize does, tensor for tensor.  TYPE: Q8_0, Q6_K,
    Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, IQ4_NL, IQ4_XS, Q3_K_M, Q2_K, F16 or BF16."""
    from .runtime.quantize import quantize_model

    bar = _LazyBar(desc="quantize", unit="tensor")
    res = quantize_model(inp, out, qtype, allow_requantize, pure, output_tensor_type, token_embedding_type,
                         progress=lambda done, n, written: bar.update(done, n, f"{written / 1e6:.0f} MB written"),
                         imatrix=imatrix)  # fmt: skip
    bar.close()
    if res.fallbacks:
        eg = ", ".join(f"{n} {a.name} -> {b.name}" for n, a, b in res.fallbacks[:2])
        click.echo(f"kvrun: warning: {len(res.fallbacks)} of {res.n_tensors} tensors fell back to another type (rows not a "
                   f"multiple of the type's block): {eg}{', ...' if len(res.fallbacks) > 2 else ''}", err=True)  # fmt: skip
    click.echo(res.summary())


@main.command("imatrix")
@click.argument("model", metavar="MODEL.gguf", type=click.Path(dir_okay=False))
@click.option("-f", "--file", "text_file", required=True, type=click.Path(exists=True, dir_okay=False), help="calibration text")
@click.option("-o", "--output", "out", default="imatrix.gguf", show_default=True, type=click.Path(dir_okay=False), help="where to write it (llama.cpp's GGUF imatrix)")
@click.option("--ctx", "n_ctx", type=int, default=512, show_default=True, help="tokens a chunk")
@click.option("--chunks", "n_chunks", type=int, default=0, help="at most this many chunks (0: the whole text)")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads")
@friendly
def imatrix_cmd(model: str, text_file: str, out: str, n_ctx: int, n_chunks: int, threads: int | None) -> None:
    """Collect an importance matrix as llama.cpp's llama-imatrix does (the mean square of the activations entering
    every layer's weight columns, over the text's chunks), for kvrun quantize --imatrix."""
    from .runtime.imatrix import collect_imatrix

    text = Path(text_file).read_text(encoding="utf-8", errors="replace")
    bar = _LazyBar(desc="imatrix", unit="chunk")
    im = collect_imatrix(model, text, n_ctx, n_chunks, dataset=text_file, threads=threads,
                         progress=lambda done, n: bar.update(done, n, ""))  # fmt: skip
    bar.close()
    im.save(out)
    click.echo(f"{len(im.sums)} tensors over {im.chunk_count} chunks of {im.chunk_size} tokens: {out}")


# ---------------------------------------------------------------- generation options
def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("-c", "--ctx-size", "ctx_size", type=int, default=None, help="context length (default: 4096, or the model's own if shorter; 0: the model's)"),
        click.option("-b", "--batch-size", "n_batch", type=int, default=256, show_default=True, help="prompt tokens per forward pass"),
        click.option("-t", "--threads", type=int, default=None, help="CPU threads for kernels and BLAS (default: all cores, or one while decode measures one faster, e.g. beside a busy process)"),
        click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return lora_options(fn)


def draft_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-md / --model-draft and --draft-max (llama.cpp's): speculative decoding with a draft model."""
    fn = click.option("--draft-p-min", type=float, default=0.75, show_default=True, metavar="P",
                      help="the draft stops at a token the draft model gives a lower probability")(fn)  # fmt: skip
    fn = click.option("--draft-max", type=int, default=8, show_default=True, metavar="N", help="tokens the draft model drafts a step at most")(fn)
    return click.option("-md", "--model-draft", "model_draft", default=None, metavar="MODEL",
                        help="a small model of the same vocabulary that drafts tokens for greedy replies (--temp 0), "
                             "checked by the model in one forward each step (speculative decoding)")(fn)  # fmt: skip


def lora_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--lora FILE and --lora-scaled FILE SCALE (llama.cpp's): adapters merged into the weights at load."""
    fn = click.option("--lora-scaled", "lora_scaled", multiple=True, type=(str, float), metavar="FILE SCALE",
                      help="a LoRA adapter at a scale (repeatable)")(fn)  # fmt: skip
    return click.option("--lora", "lora", multiple=True, metavar="FILE", help="apply a LoRA adapter (GGUF, as llama.cpp's --lora; repeatable)")(fn)


def kv_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The compressed-cache flags, shared by run, chat, perplexity and bench."""
    opts = [
        click.option("--kv-preset", type=str, default=None, help="named KV setting: lossless, balanced, edge"),
        click.option("--kv-bits", type=int, default=None, help="KV width: 16, 8, 4, 3, 2"),
        click.option("--kv-bits-k", type=int, default=None, help="key width (overrides --kv-bits)"),
        click.option("--kv-bits-v", type=int, default=None, help="value width (overrides --kv-bits)"),
        click.option("--kv-group", type=int, default=None, help="values per quantization group (default 64 at 3 and 4 bits and at 2 bits with the warm tier, else 32)"),
        click.option("--kv-residual", type=int, default=None, help="recent tokens kept in fp16"),
        click.option("--kv-warm", type=int, default=None, help="newest quantized tokens whose keys keep --kv-warm-bits (default at 2 bits: a sliding-window layer's whole window, in global layers what fits 3.19 bits/value; 0: off)"),
        click.option("--kv-warm-bits", type=int, default=None, help="key width of the warm tier (default 4)"),
        click.option("--kv-rotate/--kv-no-rotate", default=None, help="Hadamard-rotate K/V before quantizing"),
        click.option("--kv-center/--kv-no-center", default=None, help="subtract the keys' mean before quantizing (exact)"),
        click.option("--kv-smooth/--kv-no-smooth", default=None, help="query-aware key channel scaling before quantizing (exact)"),
        click.option("--kv-mixed", type=str, default=None, help='importance-based widths "HI/LO", e.g. 8/2'),
        click.option("--kv-policy", type=str, default=None, help="eviction policy: streaming, h2o, tova, snapkv, keydiff, gkv"),
        click.option("--kv-budget", type=int, default=None, help="tokens kept per layer (evicting with h2o unless --kv-policy says)"),
        click.option("--kv-ratio", type=float, default=None, help="budget as a share of the context"),
        click.option("--kv-sinks", type=int, default=None, help="first tokens never evicted (default 4)"),
        click.option("--kv-merge", type=str, default=None, help="merge evicted tokens: mean, keepkv"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


DEFAULT_POLICY = "h2o"  # what --kv-budget/--kv-ratio evict with when --kv-policy is not given

_KV_FLAGS = {
    "kv_bits": "bits", "kv_bits_k": "bits_k", "kv_bits_v": "bits_v", "kv_group": "group", "kv_residual": "residual",
    "kv_rotate": "rotate", "kv_center": "center", "kv_smooth": "smooth", "kv_mixed": "mixed", "kv_policy": "policy", "kv_budget": "budget", "kv_ratio": "ratio",
    "kv_sinks": "sinks", "kv_merge": "merge", "kv_warm": "warm", "kv_warm_bits": "warm_bits",
}


def kv_config(kw: dict[str, Any]):
    """KVConfig from the --kv-* flags (None when none is given: the plain fp16 cache)."""
    from .cache.kvconfig import KVConfig

    preset = kw.pop("kv_preset", None)
    given = {field: kw.pop(flag) for flag, field in _KV_FLAGS.items() if flag in kw}
    given = {k: v for k, v in given.items() if v is not None}
    if preset is None and not given:
        return None
    if (given.get("budget") or given.get("ratio")) and "policy" not in given and preset is None:
        given["policy"] = DEFAULT_POLICY  # a budget alone means: evict with the default policy (0: no budget, nothing to evict)
    try:
        cfg = KVConfig.preset(preset) if preset else KVConfig()
        cfg = cfg.with_(**given) if given else cfg
    except (ValueError, TypeError) as e:
        raise KvrunError(str(e)) from None
    return cfg


def sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--temp", type=float, default=0.8, show_default=True, help="temperature (0: greedy)"),
        click.option("--top-k", type=int, default=40, show_default=True),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--min-p", type=float, default=0.05, show_default=True),
        click.option("--repeat-penalty", type=float, default=1.0, show_default=True),
        click.option("--presence-penalty", type=float, default=0.0, show_default=True),
        click.option("--frequency-penalty", type=float, default=0.0, show_default=True),
        click.option("--seed", type=int, default=None, help="random seed (same seed, same text; -1 or none: random)"),
        click.option("--stop", multiple=True, help="stop string (repeatable)"),
        click.option("--format", "out_format", type=click.Choice(["json"]), default=None,
                     help="json: the reply is constrained to one JSON object (as ollama run --format json)"),
        click.option("--grammar", default=None, metavar="GBNF", help="constrain the reply to a GBNF grammar (llama.cpp's format; start rule: root)"),
        click.option("--grammar-file", default=None, metavar="FILE", help="--grammar, read from a file"),
        click.option("-j", "--json-schema", default=None, metavar="JSON",
                     help='constrain the reply to the JSON a schema allows, e.g. \'{"type": "object", "properties": {"name": {"type": "string"}}}\''),
        click.option("--json-schema-file", default=None, metavar="FILE", help="--json-schema, read from a file"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


lookup_option = click.option(
    "--lookup", type=int, default=0, show_default=True, metavar="N",
    help="prompt lookup decoding: draft up to N tokens from earlier text, keep those greedy decoding agrees with "
         "(with --temp 0 and the fp16 cache: greedy decoding's text, but for near-ties a batched forward rounds otherwise; "
         "faster where the reply repeats its prompt, slower on free text)",
)  # fmt: skip


def _check_lookup(lookup: int, n_predict: int, stop: tuple[str, ...], sampling: dict[str, Any], kw: dict[str, Any]) -> Any:
    """The request of run's or chat's flags, checked before the model loads (--lookup's conditions in one line)."""
    from .runtime.api import _request

    try:
        req = _request(n_predict, stop, lookup=lookup, **sampling)
    except ValueError as e:
        raise KvrunError(f"--lookup: {e}" if lookup else str(e)) from None
    if lookup and kv_config(kw) is not None:
        raise KvrunError("--lookup needs the fp16 KV cache: drop the --kv-* flags, or --lookup")
    return req


_SAMPLING_FLAGS = {"temperature": "--temp", "top-p": "--top-p", "min-p": "--min-p", "top-k": "--top-k", "repeat penalty": "--repeat-penalty", "seed": "--seed"}


def _sampling(kw: dict[str, Any]) -> dict[str, Any]:
    """The sampling flags as ``SamplerConfig`` fields, checked (a bad value fails here, before the model loads)."""
    from .runtime.sampling import SamplerConfig

    s = dict(
        temperature=kw["temp"],
        top_k=kw["top_k"],
        top_p=kw["top_p"],
        min_p=kw["min_p"],
        repeat_penalty=kw["repeat_penalty"],
        presence_penalty=kw["presence_penalty"],
        frequency_penalty=kw["frequency_penalty"],
        seed=kw["seed"],
    )
    try:
        SamplerConfig(**{k: v for k, v in s.items() if v is not None}).validate()
    except ValueError as e:
        msg = str(e)
        for name, flag in _SAMPLING_FLAGS.items():
            if msg.startswith(name + " "):
                msg = flag + msg[len(name) :]
        raise KvrunError(msg) from None
    if kw.get("out_format") == "json":
        s["json_mode"] = True
    grammar = _constraint_flags(kw)
    if grammar is not None:
        if s.get("json_mode"):
            raise KvrunError("--format json and a grammar or JSON schema are two constraints: give one")
        s["grammar"] = grammar
    return s


def _constraint_flags(kw: dict[str, Any]) -> str | None:
    """The GBNF text of --grammar / --grammar-file / --json-schema / --json-schema-file (at most one), checked."""
    from .runtime.api import grammar_text
    from .runtime.gbnf import compiled

    given = [f for f in ("grammar", "grammar_file", "json_schema", "json_schema_file") if kw.get(f) is not None]
    if not given:
        return None
    flags = ", ".join("--" + f.replace("_", "-") for f in given)
    if len(given) > 1:
        raise KvrunError(f"{flags}: give one constraint")
    flag, value = "--" + given[0].replace("_", "-"), kw[given[0]]
    if given[0].endswith("_file"):
        try:
            with open(value, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise KvrunError(f"{flag}: cannot read {value}: {getattr(e, 'strerror', None) or e}") from None
    try:
        text = grammar_text(json_schema=value) if "schema" in given[0] else value
        compiled(text)
    except ValueError as e:
        raise KvrunError(f"{flag}: {e}") from None
    return text


def _engine(path: Any, text_generation: bool = False, decodes: bool = True, **kw: Any):
    """An Engine; on a cold kernel cache, one stderr line says why the first reply is slow.  ``text_generation``
    (``kvrun run``): a diffusion model is refused in one line, from the config the engine read, before anything prints.
    ``decodes``: the command runs decode steps, so on a cold cache the compile helper is started for them (not for
    perplexity or embeddings, whose prompt-only forwards would gain nothing from it but a busy core)."""
    from .runtime.engine import Engine

    eng = Engine(path, **kw)
    if text_generation:  # (the engine's header: the file is opened once, at the cost of loading a model then refused)
        from .runtime.diffusion import refuse_text_generation

        refuse_text_generation(eng.cfg.arch)
    if eng.kernels_cold:
        if decodes:
            from .runtime.prewarm import start

            start(eng)  # (a second process compiles the decode attention meanwhile: runtime/prewarm.py)
        click.echo(
            "kvrun: first run on this machine: compiling the CPU kernels (once; on 2 cores about 25 s, 45 with --kv-*; "
            "later starts load them from the cache)",
            err=True,
        )
    if eng.n_ctx > eng.cfg.n_ctx_train:  # as llama.cpp warns: positions past training are untrained ground
        click.echo(f"kvrun: warning: a context of {eng.n_ctx} tokens is past the {eng.cfg.n_ctx_train} the model was trained for; "
                   "text beyond that degrades", err=True)  # fmt: skip
    return eng


def _check_n_predict(n: int) -> None:
    """GenRequest's rule for max_tokens, said with the flag's name (before the model loads)."""
    from .runtime.engine import GenRequest

    try:
        GenRequest(max_tokens=n).validate()
    except ValueError as e:
        raise KvrunError(str(e).replace("max_tokens", "-n", 1)) from None


def _load(model: str | None, kw: dict[str, Any], text_generation: bool = False, decodes: bool = True):
    from .runtime.api import Model

    kv = kv_config(kw)
    path = _resolve(model)
    draft = _resolve(kw["model_draft"]) if kw.get("model_draft") else None
    return Model(_engine(path, text_generation=text_generation, decodes=decodes, device=kw["device"], n_ctx=kw["ctx_size"], n_batch=kw["n_batch"], threads=kw["threads"], kv=kv, lora=_lora(kw),
                         draft=draft, draft_max=kw.get("draft_max", 8), draft_p_min=kw.get("draft_p_min", 0.75)))  # fmt: skip


def _check_images(mmproj: str | None, images: tuple[str, ...], prompt_cache: str | None) -> None:
    """--image and --mmproj in one line each, before the model loads."""
    if images and mmproj is None:
        raise KvrunError("--image needs --mmproj FILE: the model's projector (mmproj-*.gguf), which turns images into its input")
    if mmproj is not None and not Path(mmproj).is_file():
        raise KvrunError(f"--mmproj: no file {mmproj}")
    for f in images:
        if not Path(f).is_file():
            raise KvrunError(f"--image: no file {f}")
    if mmproj is not None and prompt_cache is not None:
        raise KvrunError("--prompt-cache does not take images: drop one of --prompt-cache and --mmproj")


def _run_vision(m: Any, text: str, mmproj: str, images: list[str], req: Any, no_stats: bool, audios: list[str] | None = None) -> None:
    """`kvrun run --mmproj --image` (or ``--audio``): the prompt laid out with its media, prefilled, the reply streamed."""
    from .runtime.engine import GenStats
    from .runtime.vision import Vision

    vis = Vision(m.engine, mmproj)
    if getattr(vis, "takes_images", False):  # (Qwen2.5-Omni's projector takes both: pictures take the markers first, then clips)
        images, audios = [], images + list(audios or [])
    elif getattr(vis, "takes_audio", False) and images or not getattr(vis, "takes_audio", False) and audios:
        raise KvrunError(f"{mmproj} is an {'audio' if images else 'image'} projector: give it {'--audio' if images else '--image'} files")
    segs = vis.segments(text, audios if getattr(vis, "takes_audio", False) else images)
    stats, cache = GenStats(), m.new_cache()
    click.echo(text, nl=False)
    try:
        for piece in vis.generate_text(cache, segs, req, stats):
            click.echo(piece, nl=False)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
    click.echo("")
    if not no_stats:
        click.echo(_stats_line(stats, cache, m.engine) + f" load {m.engine.load_time:.2f} s", err=True)


def _lora(kw: dict[str, Any]) -> list[tuple[str, float]]:
    """--lora FILE / --lora-scaled FILE SCALE as (path, scale) pairs, each file checked to exist."""
    pairs = [(f, 1.0) for f in kw.get("lora") or ()] + [(f, s) for f, s in kw.get("lora_scaled") or ()]
    for f, _ in pairs:
        if not Path(f).is_file():
            raise KvrunError(f"--lora: no file {f}")
    return pairs


def _stats_line(stats: Any, cache: Any = None, engine: Any = None) -> str:
    s = f"[prompt {stats.n_prompt} tok, {stats.prompt_tps:.1f} tok/s | gen {stats.n_gen} tok, {stats.gen_tps:.1f} tok/s"
    if stats.n_drafted:
        s += f" | drafts: kept {stats.n_accepted} of {stats.n_drafted} drafted"
    if cache is not None:
        held = max((layer.n_tokens() for layer in cache.layers), default=0)
        s += f" | kv {_size(cache.nbytes())} holding {held} of {cache.offset} tokens"
        if engine is not None:
            kv = engine.kv
            budget = kv.budget_tokens(engine.n_ctx) if kv is not None and kv.policy else engine.n_ctx
            s += f", budget {budget} | cache {kv if kv is not None else 'fp16'}"
    return s + "]"


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", default=None, help="prompt text")
@click.option("-f", "--file", "prompt_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True), default=None,
              help="read the prompt from a file (-: standard input, also read when piped and no -p/-f is given)")  # fmt: skip
@click.option("-n", "--n-predict", "n_predict", type=int, default=128, show_default=True, help="tokens to generate (-1: until the text ends or the context fills)")
@click.option("--ignore-eos", is_flag=True, help="keep generating past end-of-sequence")
@click.option("--no-stats", is_flag=True, help="do not print timings")
@lookup_option
@click.option("--prompt-cache", "prompt_cache", type=click.Path(dir_okay=False), default=None,
              help="reuse the KV cache saved in this file for the prefix the prompt shares with it, and save the prompt's there (as llama-cli)")  # fmt: skip
@click.option("--mmproj", type=click.Path(dir_okay=False), default=None,
              help="the model's multimodal projector (mmproj-*.gguf), to pass images or audio (as llama-mtmd-cli)")  # fmt: skip
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="an image for the prompt (repeatable; needs --mmproj): at each <__media__> in the prompt, else before it")  # fmt: skip
@click.option("--audio", "audios", multiple=True, type=click.Path(dir_okay=False),
              help="a 16 kHz WAV clip for the prompt (repeatable; needs an audio --mmproj: Ultravox's, Qwen2-Audio's, Qwen2.5-Omni's, Qwen3-Omni's, Voxtral's, GLM-ASR's, Music Flamingo's, LFM2-Audio's): at each <__media__>, else before it")  # fmt: skip
@draft_options
@engine_options
@kv_options
@sampling_options
@friendly
def run(model: str | None, prompt: str | None, prompt_file: str | None, n_predict: int, ignore_eos: bool, no_stats: bool, lookup: int,
        prompt_cache: str | None, stop: tuple[str, ...], mmproj: str | None = None, images: tuple[str, ...] = (), audios: tuple[str, ...] = (),
        **kw: Any) -> None:  # fmt: skip
    """Complete a prompt and stream the text (as llama-cli -p)."""
    if audios and mmproj is None:
        raise KvrunError("--audio needs --mmproj FILE: the model's audio projector (mmproj-*.gguf), which turns audio into its input")
    for f in audios:
        if not Path(f).is_file():
            raise KvrunError(f"--audio: no file {f}")
    _check_images(mmproj, images, prompt_cache)
    if prompt is None and prompt_file is None:
        if _interactive():
            raise KvrunError("give a prompt with -p TEXT or -f FILE (or pipe it in)")
        prompt_file = "-"  # `echo text | kvrun run`
    _check_n_predict(n_predict)
    sampling = _sampling(kw)
    if prompt is not None:
        text = prompt
    elif prompt_file == "-":
        text = sys.stdin.read()
        if not text.strip():
            raise KvrunError("the prompt read from standard input is empty; give one with -p TEXT or -f FILE")
    else:
        text = Path(prompt_file).read_text(encoding="utf-8")
    req = _check_lookup(lookup, n_predict, stop, sampling, kw)
    req.ignore_eos = ignore_eos
    m = _load(model, kw, text_generation=True)  # (a diffusion model: one line pointing at `kvrun diffusion`)
    if mmproj is not None:  # images in the prompt (runtime/vision.py)
        return _run_vision(m, text, mmproj, list(images), req, no_stats, list(audios))
    ids = m.tokenize(text)
    if len(ids) > m.engine.n_ctx:  # say so before echoing the prompt
        raise KvrunError(f"the prompt is {len(ids)} tokens, the context {m.engine.n_ctx}; raise --ctx-size or shorten the prompt")
    from .runtime.engine import GenStats

    stats = GenStats()
    feed, t_cache, reused = ids, 0.0, 0
    if prompt_cache is not None:  # all but the prompt's last token from (or into) the file
        from .runtime.sessionfile import prompt_cache as cached_prefix

        t0 = time.perf_counter()
        cache, feed, reused = cached_prefix(prompt_cache, m.engine, ids)
        t_cache = time.perf_counter() - t0
    else:
        cache = m.new_cache()
    click.echo(text, nl=False)
    try:
        for piece in m.engine.generate_text(cache, feed, req, stats):
            click.echo(piece, nl=False)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
    click.echo("")
    stats.n_prompt, stats.t_prompt = len(ids) - reused, stats.t_prompt + t_cache  # the prompt's evaluated tokens, all told
    if not no_stats:
        if prompt_cache is not None:
            click.echo(f"(prompt cache {prompt_cache}: {reused} of the prompt's {len(ids)} tokens reused)", err=True)
        click.echo(_stats_line(stats, cache, m.engine) + f" load {m.engine.load_time:.2f} s", err=True)


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, help="prompt text")
@click.option("--diffusion-steps", "steps", type=int, default=128, show_default=True, help="denoising steps")
@click.option("-ub", "--max-length", "max_length", type=int, default=512, show_default=True,
              help="the whole sequence, prompt included (llama-diffusion-cli's -ub): the prompt then masks up to it")  # fmt: skip
@click.option("--diffusion-eps", "eps", type=float, default=0.0, help="Dream's timestep schedule (e.g. 0.001); or:")
@click.option("--diffusion-block-length", "block_length", type=int, default=0, help="LLaDA's blocks of this many positions (e.g. 32)")
@click.option("--diffusion-algorithm", "algorithm", default="confidence", show_default=True,
              help="which masks a step fills: origin, entropy, margin, random, confidence (or 0-4, llama.cpp's numbers)")  # fmt: skip
@click.option("--diffusion-alg-temp", "alg_temp", type=float, default=0.0, show_default=True, help="draw the positions (> 0) instead of the most confident")
@click.option("--diffusion-cfg-scale", "cfg_scale", type=float, default=0.0, show_default=True,
              help="classifier-free guidance (> 0: each step also runs the model with the prompt masked)")  # fmt: skip
@click.option("--diffusion-visual", "visual", is_flag=True, help="redraw the text at every step (on stderr)")
@click.option("--temp", "temperature", type=float, default=0.0, show_default=True, help="temperature (0: each position's most probable token)")
@click.option("--top-k", type=int, default=40, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--seed", type=int, default=None, help="random seed (-1 or none: random)")
@click.option("--no-chat-template", is_flag=True, help="denoise after the prompt as it is, not as the chat template's user turn")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True)
@friendly
def diffusion(model: str | None, prompt: str, visual: bool, no_chat_template: bool, threads: int | None, device: str, **params: Any) -> None:
    """Denoise text with a diffusion language model: Dream, LLaDA, LLaDA-MoE, RND1 (as llama-diffusion-cli)."""
    from .runtime.api import Model
    from .runtime.diffusion import DiffusionParams, check_diffusion_model, diffusion_text, progress_line, visual_frame

    prm = DiffusionParams(**params)
    prm.validate(0)  # (a bad flag fails before the model loads; the prompt's length is checked once tokenized)
    m = Model(_engine(_resolve(model), n_ctx=prm.max_length, n_batch=prm.max_length, threads=threads, device=device))
    check_diffusion_model(m.engine)

    def show(step: int, total: int, tokens: Any, n_prompt: int, mask_id: int) -> None:
        if visual:
            click.echo(visual_frame(step, total, tokens, n_prompt, mask_id, lambda t: m.tokenizer.token_to_piece(t, special=False)), nl=False, err=True)
        else:
            click.echo("\r" + progress_line(step, total), nl=False, err=True)

    text = diffusion_text(m, prompt, prm, not no_chat_template, show)
    click.echo("", err=True)
    click.echo(text)


@main.command()
@click.argument("model", required=False)
@click.option("-s", "--system", default=None, help="system prompt")
@click.option("-n", "--n-predict", "n_predict", type=int, default=512, show_default=True, help="max tokens per reply (-1: no limit)")
@click.option("--chat-template-kwargs", "template_kwargs", default=None, metavar="JSON",
              help='variables for the chat template, as llama-server\'s, e.g. \'{"enable_thinking": false}\' (Qwen3 without reasoning)')
@lookup_option
@click.option("--session", "session_file", type=click.Path(dir_okay=False), default=None,
              help="resume the chat saved in this file, KV cache and all (if it exists), and save it there on leaving; /save saves it now")  # fmt: skip
@click.option("--mmproj", type=click.Path(dir_okay=False), default=None,
              help="the model's multimodal projector (mmproj-*.gguf): /image PATH (or /audio PATH) attaches a picture (a clip) to the next message")  # fmt: skip
@draft_options
@engine_options
@kv_options
@sampling_options
@friendly
def chat(model: str | None, system: str | None, n_predict: int, template_kwargs: str | None, lookup: int, session_file: str | None,
         stop: tuple[str, ...], mmproj: str | None = None, **kw: Any) -> None:  # fmt: skip
    """Interactive multi-turn chat with the model's chat template.

    /reset clears the conversation, /save [FILE] saves it, /exit (or Ctrl-D) leaves,
    /help lists the commands; Ctrl-C stops a reply.  --session FILE resumes a saved chat.
    """
    _check_n_predict(n_predict)
    _check_lookup(lookup, n_predict, stop, _sampling(kw), kw)  # a bad sampling flag fails now, not at the first reply
    kw["lookup"] = lookup
    tkw = _template_kwargs(template_kwargs)
    if session_file is not None and not os.access(os.path.dirname(os.path.abspath(session_file)), os.W_OK):
        raise KvrunError(f"--session {session_file}: its folder cannot be written; the chat could not be saved there")
    _check_images(mmproj, (), None)
    m = _load(model, kw)
    m.chat_template_kwargs = tkw
    if mmproj is not None:  # pictures in the chat (/image PATH; runtime/vision_chat.py)
        from .runtime.vision import Vision

        m.vision = Vision(m.engine, mmproj)
    resume = session_file is not None and os.path.exists(session_file)
    sess = m.load_session(session_file) if resume else m.session(system=system)
    interactive = _interactive()
    click.echo(f"kvrun chat: {m.config.name} ({m.config.arch}), ctx {m.engine.n_ctx}. /help, /reset, /exit; Ctrl-C stops a reply.", err=True)
    if resume:
        turns = sum(x["role"] == "user" for x in sess.messages)
        click.echo(f"kvrun chat: resumed {session_file}: {turns} turns, {sess.cache.offset} tokens in the KV cache", err=True)
        if system is not None and system != sess.system:
            click.echo("kvrun: note: the resumed chat keeps its own system prompt; -s applies to a new one", err=True)
    from .loaders.chat_template import file_template

    if file_template(m.engine.gguf) is None:
        # e.g. the Gemma 3 270M file `kvrun pull` fetches: a base model, which (in llama.cpp too) continues the text
        click.echo(f"kvrun: note: the file has no chat template (a base model, not a chat one?); using {m.config.arch}'s "
                   "built-in one, and replies may not follow the conversation", err=True)  # fmt: skip
    # the kernels load (or, on a cold cache, compile) while the user types the first message
    warm = threading.Thread(target=_warm_up_quietly, args=(m.engine,), daemon=True) if interactive and m.engine.backend.name == "cpu" else None
    if warm is not None:
        warm.start()
    try:
        _chat_loop(m, sess, interactive, warm, n_predict, stop, kw, session_file)
        if session_file is not None:  # on leaving (/exit, Ctrl-D, end of input)
            _save_session(sess, session_file)
    finally:
        if warm is not None:  # not mid-kernel at interpreter exit; but a first run's compile (tens of
            warm.join(timeout=3.0)  # seconds, in Python and LLVM) is not waited for when the user leaves at once


@main.command()
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", type=int, default=8080, show_default=True, help="port to listen on (0: any free one)")
@click.option("--alias", default=None, help="model name the API reports (default: the file's name)")
@click.option("--chat-template-kwargs", "template_kwargs", default=None, metavar="JSON",
              help='variables for the chat template, e.g. \'{"enable_thinking": false}\'; a request\'s own chat_template_kwargs go over them')
@click.option("--api-key", default=None, envvar="KVRUN_API_KEY",
              help="require 'Authorization: Bearer KEY' on every request but /health (as llama-server's; env KVRUN_API_KEY)")
@click.option("-np", "--parallel", type=int, default=1, show_default=True, envvar="KVRUN_PARALLEL",
              help="requests generated at once, each with a KV cache of the whole --ctx-size, their tokens batched "
                   "(as llama-server's --parallel, Ollama's OLLAMA_NUM_PARALLEL; env KVRUN_PARALLEL)")
@click.option("--slot-save-path", type=click.Path(file_okay=False), default=None,
              help="directory of slot files: POST /slots/ID?action=save|restore keeps a slot's conversation and KV cache there")
@click.option("--mmproj", type=click.Path(dir_okay=False), default=None,
              help="the model's multimodal projector (mmproj-*.gguf): chat requests may then carry images (or audio)")  # fmt: skip
@draft_options
@engine_options
@kv_options
@friendly
def serve(model: str | None, host: str, port: int, alias: str | None, template_kwargs: str | None, api_key: str | None,
          parallel: int, slot_save_path: str | None, mmproj: str | None = None, **kw: Any) -> None:  # fmt: skip
    """OpenAI-compatible HTTP server, as llama-server: /v1/chat/completions, /v1/completions, /v1/models, /health;
    and Ollama's /api/chat, /api/generate, /api/tags, /api/show, for apps written for Ollama.

    Up to --parallel requests are generated at once, in slots that each keep a KV cache (compressed
    as the --kv-* flags say) and reuse the prefix a new request shares with what the slot holds."""
    from .runtime.server import make_server
    from .runtime.slots import MAX_PARALLEL

    if not 0 <= port <= 65535:
        raise KvrunError(f"--port must be in 0..65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise KvrunError("--api-key is empty; give a key, or leave the flag out for no authentication")
    if not 1 <= parallel <= MAX_PARALLEL:  # (before the model loads)
        raise KvrunError(f"--parallel must be in 1..{MAX_PARALLEL} (requests generated at once), got {parallel}")
    if slot_save_path is not None and not os.path.isdir(slot_save_path):
        raise KvrunError(f"--slot-save-path {slot_save_path}: no such directory; create it first")
    tkw = _template_kwargs(template_kwargs)
    _check_images(mmproj, (), None)
    path = _resolve(model)
    m = _load(str(path), kw)
    m.chat_template_kwargs = tkw
    if mmproj is not None:  # image parts in chat requests (runtime/vision_chat.py)
        from .runtime.vision import Vision

        m.vision = Vision(m.engine, mmproj)
    httpd = make_server(m, host, port, alias or Path(path).stem, api_key=api_key, parallel=parallel,
                        slot_save_path=slot_save_path)
    m.engine.warm_up()  # the kernels load (or compile) before the first request, not during it
    h, p = httpd.server_address[:2]
    if m.engine.model.encoder:
        click.echo(f"kvrun serve: {m.config.arch} embedding model; listening on http://{h}:{p} "
                   "(OpenAI API: /v1/embeddings, /v1/models, /health; Ollama API: /api/embed, /api/tags); Ctrl-C stops", err=True)  # fmt: skip
    else:
        kv_slot = httpd.RequestHandlerClass.app.slots.slots[0].session.kv_bytes()  # (as allocated; pages fill as tokens come)
        slots = f", {parallel} slots of {_size(kv_slot)} KV each" if parallel > 1 else f", KV {_size(kv_slot)}"
        click.echo(f"kvrun serve: {m.config.arch}, ctx {m.engine.n_ctx}, cache {m.engine.kv or 'fp16'}{slots}; listening on http://{h}:{p} "
                   "(OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health; Ollama API: /api/chat, /api/generate, /api/tags; "
                   "Anthropic API: /v1/messages); Ctrl-C stops", err=True)  # fmt: skip
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        click.echo("kvrun serve: stopped", err=True)
    finally:
        httpd.server_close()


def _template_kwargs(text: str | None) -> dict[str, Any]:
    """--chat-template-kwargs: a JSON object, or a one-line error."""
    if text is None:
        return {}
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise KvrunError(f"--chat-template-kwargs is not JSON ({e.msg}); write an object, e.g. '{{\"enable_thinking\": false}}'") from None
    if not isinstance(v, dict):
        raise KvrunError(f"--chat-template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}', got {text}")
    return v


def _interactive() -> bool:
    """Whether a person types the chat (a terminal), not a script piped in."""
    return sys.stdin.isatty()


def _warm_up_quietly(engine: Any) -> None:
    """``engine.warm_up()``; a failure there is left for the first reply to meet and report."""
    try:
        engine.warm_up()
    except Exception:  # noqa: BLE001 (the same error comes back, reported, on the first reply)
        pass


def _save_session(sess: Any, path: str) -> None:
    n = sess.save(path)
    click.echo(f"(chat saved to {path}, {_size(n)}; resume it with --session {path})", err=True)


CHAT_HELP = """/reset         forget the conversation (the system prompt stays)
/image PATH    attach a picture to the next message (a chat started with --mmproj)
/audio PATH    attach a 16 kHz WAV clip to the next message (a chat started with an audio --mmproj)
/save [FILE]   save the chat and its KV cache (to --session's file when FILE is not given)
/exit          leave (also /quit, /bye, Ctrl-D)
/help          this list
Ctrl-C stops a reply; the stats line after each reply shows the KV cache held."""


def _chat_loop(m: Any, sess: Any, interactive: bool, warm: threading.Thread | None, n_predict: int, stop: tuple[str, ...], kw: dict[str, Any],
               session_file: str | None = None) -> None:  # fmt: skip
    """Read a line, answer it, until /exit or end of input; ``warm`` is joined before the first reply."""
    from .runtime.reasoning import ThinkSplitter

    attached: list[Any] = []  # pictures /image attached to the next message (decoded: a bad file is said at once)
    while True:
        try:
            if interactive:
                line = click.prompt("", prompt_suffix="> ", default="", show_default=False)
            else:
                line = sys.stdin.readline()
                if not line:
                    break
                line = line.rstrip("\n")
        except (EOFError, click.exceptions.Abort):
            break
        if not line.strip():
            continue
        cmd = line.strip()
        if cmd in ("/exit", "/quit", "/bye"):
            break
        if cmd == "/reset":
            sess.reset()
            click.echo("(conversation cleared)", err=True)
            continue
        if cmd in ("/help", "/?"):
            click.echo(CHAT_HELP, err=True)
            continue
        if cmd == "/save" or cmd.startswith("/save "):
            path = cmd[len("/save") :].strip() or session_file
            if not path:
                click.echo("kvrun: /save needs a file: /save FILE, or start the chat with --session FILE", err=True)
                continue
            try:
                _save_session(sess, path)
            except KvrunError as e:
                click.echo(f"kvrun: {e}", err=True)
            continue
        if cmd == "/image" or cmd.startswith("/image "):  # (llama-mtmd-cli's: the picture goes before the next message's text)
            path = cmd[len("/image") :].strip()
            if m.vision is None or not path:
                click.echo("kvrun: /image needs a chat started with --mmproj FILE" if m.vision is None else "kvrun: /image PATH", err=True)
                continue
            from .runtime.vision_chat import decode_image

            try:
                attached.append(decode_image(path))
            except KvrunError as e:
                click.echo(f"kvrun: {e}", err=True)
                continue
            click.echo(f"({path} attached to the next message)", err=True)
            continue
        if cmd == "/audio" or cmd.startswith("/audio "):  # (a clip before the next message's text, as /image's picture)
            path = cmd[len("/audio") :].strip()
            if not getattr(m.vision, "takes_audio", False) or not path:
                click.echo("kvrun: /audio PATH" if path == "" and m.vision is not None else "kvrun: /audio needs a chat started with an audio --mmproj FILE", err=True)
                continue
            from .runtime.audio import decode_audio

            try:
                attached.append(decode_audio(path))
            except KvrunError as e:
                click.echo(f"kvrun: {e}", err=True)
                continue
            click.echo(f"({path} attached to the next message)", err=True)
            continue
        if re.fullmatch(r"/[A-Za-z?]+", cmd):  # a one-word slash line is a command, not a message: a typo is not sent
            click.echo(f"kvrun: unknown command {cmd}; /help lists them", err=True)
            continue
        if warm is not None:
            warm.join()
        shifts = sess.n_shifts
        # a thinking model's thoughts (<think>...</think>, gpt-oss's analysis channel) shown dim, their tags
        # left out; click drops the styling where stdout is not a terminal
        think = ThinkSplitter()
        images, attached = attached, []
        try:
            for piece in sess.stream(line, images=images, max_tokens=n_predict, stop=stop, lookup=kw.get("lookup", 0), **_sampling(kw)):
                if sess.n_shifts != shifts:
                    click.echo("(context full: the oldest turns were dropped)", err=True)
                    shifts = sess.n_shifts
                _echo_parts(think.push(piece))
            _echo_parts(think.flush())
        except KeyboardInterrupt:
            click.echo(" [stopped]", nl=False)
        except KvrunError as e:
            click.echo("")
            click.echo(f"kvrun: {e}", err=True)
            continue
        click.echo("")
        click.echo(_stats_line(sess.last_stats, sess.cache, m.engine), err=True)


def _echo_parts(parts: list[tuple[str, str]]) -> None:
    """A reply's pieces as ThinkSplitter parts them: the thinking dim, the answer plain."""
    for kind, text in parts:
        click.echo(click.style(text, dim=True) if kind == "reasoning" else text, nl=False)
    sys.stdout.flush()


# ---------------------------------------------------------------- embed
@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", "texts", multiple=True, help="a text to embed (repeatable; none: one text a line from stdin)")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), default=None,
              help="how token states become one vector (default: an embedding model's own, else mean)")
@click.option("--no-normalize", is_flag=True, help="do not L2-normalise the vectors")
@click.option("--json", "as_json", is_flag=True, help='print {"embeddings": [[...], ...]} (else one line of numbers a text)')
@engine_options
@friendly
def embed(model: str | None, texts: tuple[str, ...], pooling: str | None, no_normalize: bool, as_json: bool, **kw: Any) -> None:
    """Embeddings of texts, as llama-embedding: an embedding model's (BERT, nomic-bert) or any model's."""
    if not texts:
        if _interactive():
            raise KvrunError("give texts with -p TEXT (repeatable), or pipe them in one a line")
        texts = tuple(line.rstrip("\n") for line in sys.stdin if line.strip())
        if not texts:
            raise KvrunError("no text read from standard input; give texts with -p TEXT")
    m = _load(model, {**kw, "kv_preset": None}, decodes=False)
    try:
        vecs = m.embed(list(texts), pooling=pooling, normalize=not no_normalize)
    except ValueError as e:
        raise KvrunError(str(e)) from None
    if as_json:
        click.echo(json.dumps({"model": m.config.name, "embeddings": vecs.tolist()}))
    else:
        for v in vecs:
            click.echo(" ".join(f"{x:.6f}" for x in v))


# ---------------------------------------------------------------- rerank
@main.command()
@click.argument("model")
@click.argument("query")
@click.argument("documents", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help='print {"results": [{"index", "relevance_score", "document"}, ...]}')
@engine_options
@friendly
def rerank(model: str, query: str, documents: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Score DOCUMENTS' relevance to QUERY with a reranker (bge-reranker, Qwen3-Reranker), as llama-server's
    /v1/rerank: one line a document, highest score first (score, its index among DOCUMENTS, the text)."""
    from .runtime.rerank import ranked

    m = _load(model, {**kw, "kv_preset": None}, decodes=False)
    try:
        scores = m.rerank(query, list(documents))
    except ValueError as e:
        raise KvrunError(str(e)) from None
    order = ranked(scores)
    if as_json:
        click.echo(json.dumps({"model": m.config.name, "results": [{"index": i, "relevance_score": scores[i], "document": documents[i]}
                                                                    for i in order]}))  # fmt: skip
    else:
        for i in order:
            click.echo(f"{scores[i]:.6f}\t{i}\t{documents[i]}")


# ---------------------------------------------------------------- bench
@main.command()
@click.argument("model", required=False)
@click.option("-p", "--n-prompt", "n_prompt", type=int, default=512, show_default=True, help="prompt tokens (pp test); 0 skips")
@click.option("-n", "--n-gen", "n_gen", type=int, default=128, show_default=True, help="generated tokens (tg test); 0 skips")
@click.option("-r", "--repetitions", type=int, default=3, show_default=True)
@click.option("-d", "--n-depth", "n_depth", type=int, default=0, show_default=True, help="tokens already in the cache when each test starts (llama-bench -d)")
@click.option("-np", "--parallel", "parallel", default="1", show_default=True, metavar="N[,N...]",
              help="sequences generating at once, batched (tgN xB: all their tokens a second; kvrun serve --parallel)")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@engine_options
@kv_options
@friendly
def bench(model: str | None, n_prompt: int, n_gen: int, repetitions: int, n_depth: int, parallel: str, as_json: bool, **kw: Any) -> None:
    """Prompt processing (ppN) and token generation (tgN) speed, as llama-bench; with --parallel, several
    sequences generating at once (tgN xB), as llama.cpp's batched-bench.

    The context is sized to the test (depth + the longer of -p/-n), as
    llama-bench does, so peak RSS is that of the test, not of --ctx-size."""
    from .runtime.bench import bench_pp, bench_tg_parallel, peak_rss_bytes, rss_parts

    if repetitions < 1:
        raise KvrunError(f"-r must be >= 1, got {repetitions}")
    if min(n_prompt, n_gen, n_depth) < 0:
        raise KvrunError("-p, -n and -d must be >= 0")
    if n_prompt == n_gen == 0:
        raise KvrunError("-p and -n are both 0: nothing to measure (e.g. -p 512 -n 128)")
    try:
        widths = [int(x) for x in parallel.split(",")]
    except ValueError:
        widths = [0]
    if not widths or min(widths) < 1 or max(widths) > 64:
        raise KvrunError(f"--parallel takes sequence counts in 1..64, comma-separated (e.g. 1,2,4,8), got {parallel!r}")
    if kw["n_batch"] < 1 or (kw["ctx_size"] or 0) < 0:  # (the test sizes both, but a bad value is still a mistake to say)
        raise KvrunError("--batch-size must be >= 1" if kw["n_batch"] < 1 else "--ctx-size must be >= 0")
    path = _resolve(model)
    n_batch = max(kw["n_batch"], n_prompt, max(widths)) if n_prompt else max(kw["n_batch"], max(widths))
    n_ctx = n_depth + max(n_prompt, n_gen) + 8
    t0 = time.perf_counter()
    eng = _engine(path, device=kw["device"], n_ctx=n_ctx, n_batch=n_batch, threads=kw["threads"], kv=kv_config(kw), lora=_lora(kw))
    load_s = time.perf_counter() - t0
    from .runtime.engine import set_threads

    threads = set_threads(None)
    results = []
    if n_prompt:
        results.append(bench_pp(eng, n_prompt, repetitions, depth=n_depth))
    if n_gen:
        results += [bench_tg_parallel(eng, n_gen, b, repetitions, depth=n_depth) for b in widths]
    facts = model_facts(path)
    label = f"{eng.cfg.arch} {facts['n_params'] / 1e6:.0f}M {facts['file_type']}"
    rss, parts = peak_rss_bytes(), rss_parts()
    if as_json:
        click.echo(json.dumps({
            "model": label, "path": str(path), "size": facts["file_size"], "params": facts["n_params"],
            "backend": eng.backend.name, "prefill_products": eng.prefill_products, "threads": threads, "load_s": load_s, "peak_rss": rss,
            "rss_anon": parts.get("anon"), "rss_file": parts.get("file"), "n_depth": n_depth, "kv": str(eng.kv) if eng.kv else "fp16",
            "results": [{"test": r.test, "tok_s": r.mean, "sd": r.sd, "samples": r.samples, "graph_replays": r.replayed} for r in results],
        }, indent=2))
        return
    click.echo("| model                          |       size |     params | backend    | threads |            test |                  t/s |")
    click.echo("| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |")
    for r in results:
        click.echo(
            f"| {label:<30} | {_size(facts['file_size']):>10} | {facts['n_params'] / 1e6:>8.2f} M | {eng.backend.name.upper():<10} "
            f"| {threads:>7} | {r.test:>15} | {r.mean:>12.2f} ± {r.sd:>5.2f} |"
        )
    for r in results:
        if r.replayed is not None:  # the GPU: were the decode steps replayed, or launched one by one from Python?
            click.echo(f"{r.test}: {r.replayed} of {r.n_tokens * len(r.samples)} decode steps replayed from CUDA graphs")
    split = f"; now {_size(parts['anon'])} anonymous + {_size(parts['file'])} mapped files" if parts else ""
    click.echo(f"load {load_s:.2f} s, peak RSS {_size(rss)} (model file {_size(facts['file_size'])}{split}), kv cache {eng.kv if eng.kv else 'fp16'}")
    if eng.prefill_products:
        click.echo(f"prefill products: {eng.prefill_products}")


# ---------------------------------------------------------------- perplexity
@main.command()
@click.argument("model", required=False)
@click.option("-f", "--file", "text_file", type=click.Path(exists=True, dir_okay=False), required=True, help="text to score")
@click.option("--ctx", "n_ctx", type=int, default=512, show_default=True, help="window length")
@click.option("--chunks", type=int, default=0, help="score at most this many windows (0: all)")
@click.option("-b", "--batch-size", "n_batch", type=int, default=None, help="tokens per forward pass (default: 512; 1 with a compressed --kv-* cache)")
@click.option("--json", "as_json", is_flag=True, help="print the final figure as JSON")
@click.option("--kl-divergence-base", "kld_base", type=click.Path(dir_okay=False), default=None, help="write the scored log-probabilities to this file (llama-perplexity's format); with --kl-divergence, read them")
@click.option("--kl-divergence", "kld", is_flag=True, help="compare this model's distributions with --kl-divergence-base's (KL divergence, Δp, same top token; the file's text and window length)")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: chosen from measured decode speed)")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True)
@lora_options
@kv_options
@friendly
def perplexity(model: str | None, text_file: str, n_ctx: int, chunks: int, n_batch: int | None, as_json: bool, kld_base: str | None, kld: bool, threads: int | None, device: str, **kw: Any) -> None:
    """Perplexity of a text over non-overlapping windows (as llama-perplexity).

    With a compressed KV cache the windows are decoded token by token by
    default: a prompt chunk attends to its own tokens at full precision
    before they are stored, so batched windows would hide what quantization
    and eviction do to a long generation."""

    from .runtime.perplexity import perplexity as ppl_fn

    if n_ctx < 16:
        raise KvrunError(f"--ctx must be at least 16, got {n_ctx}")
    if n_batch is not None and n_batch < 1:
        raise KvrunError(f"--batch-size must be >= 1, got {n_batch}")
    path = _resolve(model)
    base = None
    if kld:  # the window length is the base file's, as llama-perplexity's
        from .runtime.kld import BaseFile

        if not kld_base:
            raise KvrunError("--kl-divergence compares with a base file: give it with --kl-divergence-base FILE")
        base = BaseFile.open(kld_base)
        n_ctx = base.n_ctx
    kv = kv_config(kw)
    if n_batch is None:
        n_batch = 1 if kv is not None and kv.is_compressed else 512
    eng = _engine(path, decodes=False, device=device, n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), threads=threads, kv=kv, lora=_lora(kw))
    text = Path(text_file).read_text(encoding="utf-8", errors="replace")
    tokens = eng.tokenizer.encode(text, add_bos=True if eng.tokenizer.add_bos else False)
    bar = _LazyBar(desc="perplexity", unit="win", disable=as_json)

    def progress(done: int, total: int, ppl: float) -> None:
        bar.update(done, total, postfix=f"ppl={ppl:.4f}" if done else None)

    if base is not None:
        from .runtime.kld import check_base, format_statistics, kl_divergence

        check_base(base, eng.cfg.n_vocab, tokens)
        kres = kl_divergence(eng, base, progress=lambda d, t, _r: bar.update(d, t), max_chunks=chunks)
        bar.close()
        stats = kres.statistics()
        click.echo(json.dumps(stats) if as_json else format_statistics(stats))
        return
    writer = None
    if kld_base and len(tokens) >= n_ctx:
        from .runtime.kld import BaseWriter

        n_chunk = min(len(tokens) // n_ctx, chunks) if chunks else len(tokens) // n_ctx
        writer = BaseWriter(kld_base, tokens, n_ctx, eng.cfg.n_vocab, n_chunk)
    t0 = time.perf_counter()
    try:
        res = ppl_fn(eng, tokens, n_ctx, progress=progress, max_chunks=chunks, on_window=writer.window if writer else None)
    finally:
        if writer:
            writer.close()
    bar.close()
    dt = time.perf_counter() - t0
    if as_json:
        click.echo(json.dumps({"ppl": res.ppl, "ppl_se": res.ppl_se, "n_tokens": res.n_tokens, "n_chunks": res.n_chunks, "ctx": n_ctx, "seconds": dt}))
    else:
        click.echo(f"[{']['.join(f'{p:.4f}' for p in res.chunk_ppl)}]")
        click.echo(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_se:.5f} over {res.n_tokens} tokens in {res.n_chunks} windows of {n_ctx} ({dt:.1f} s)")



# ---------------------------------------------------------------- kv-eval / needle
DEFAULT_KV_CONFIGS = "16; 8; 4; 2; 2,policy=streaming,ratio=0.25; 2,policy=h2o,ratio=0.25; 2,policy=snapkv,ratio=0.25,merge=keepkv"


def _parse_configs(spec: str) -> list[Any]:
    from .cache.kvconfig import KVConfig

    out = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        try:
            out.append(KVConfig.parse(part))
        except (ValueError, TypeError) as e:
            raise KvrunError(f"--configs {part!r}: {e}") from None
    if not out:
        raise KvrunError('--configs is empty; give e.g. "16; 4; 2; 2,policy=h2o,ratio=0.25"')
    return out


@main.command("kv-eval")
@click.argument("model", required=False)
@click.option("-f", "--file", "text_file", type=click.Path(exists=True, dir_okay=False), required=True, help="text to decode")
@click.option("--ctx", "n_ctx", type=int, default=2048, show_default=True, help="tokens decoded (context reached)")
@click.option("--configs", default=DEFAULT_KV_CONFIGS, show_default=True, help='";"-separated KV settings, each "BITS[,key=value...]" or a preset')
@click.option("--score-from", type=float, default=0.5, show_default=True, help="share of positions skipped before scoring")
@click.option("--windows", type=int, default=1, show_default=True, help="consecutive windows of --ctx tokens, each from empty caches, scored together (narrower ±)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per configuration, in a list")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: chosen from measured decode speed)")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True)
@friendly
def kv_eval_cmd(model: str | None, text_file: str, n_ctx: int, configs: str, score_from: float, windows: int, as_json: bool, threads: int | None, device: str) -> None:
    """Quality, size and speed of KV cache settings against the fp16 cache.

    Decodes the text token by token with every setting in lock step, so eviction
    and quantization act as in a long generation.
    """

    from .runtime.kveval import format_table, kv_eval

    if n_ctx < 64:
        raise KvrunError(f"--ctx must be at least 64, got {n_ctx}")
    if not 0.0 <= score_from < 1.0:
        raise KvrunError(f"--score-from must be in [0, 1), got {score_from}")
    if windows < 1:
        raise KvrunError(f"--windows must be at least 1, got {windows}")
    cfgs = _parse_configs(configs)
    for c in cfgs:
        try:
            c.validate(n_ctx)
        except ValueError as e:
            raise KvrunError(f"--configs {c}: {e}") from None
    eng = _engine(_resolve(model), device=device, n_ctx=n_ctx, n_batch=1, threads=threads)
    text = Path(text_file).read_text(encoding="utf-8", errors="replace")
    tokens = eng.tokenizer.encode(text, add_bos=True if eng.tokenizer.add_bos else False)
    bar = _LazyBar(desc=f"kv-eval ({len(cfgs)} configs + fp16)", unit="tok", disable=as_json)
    res = kv_eval(eng, tokens, cfgs, n_ctx, progress=bar.update, score_from=score_from, windows=windows)
    bar.close()
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        span = f"{windows} windows of ctx {n_ctx}" if windows > 1 else f"ctx {n_ctx}"
        click.echo(f"{Path(str(eng.path)).name}, {span}, fp16 cache: ppl {res[0]['ppl_ref']:.4f}, {res[0]['tok_s_ref']:.2f} tok/s")
        click.echo(format_table(res))


@main.command()
@click.argument("model", required=False)
@click.option("--ctx", "n_ctx", type=int, default=2048, show_default=True, help="prompt length (filler + key + question)")
@click.option("--depths", default="10,50,90", show_default=True, help="where the key sits, percent of the prompt")
@click.option("--trials", type=int, default=3, show_default=True, help="keys tried per depth")
@click.option("--configs", default="16", show_default=True, help='";"-separated KV settings (as kv-eval)')
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: chosen from measured decode speed)")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True)
@friendly
def needle(model: str | None, n_ctx: int, depths: str, trials: int, configs: str, seed: int, as_json: bool, threads: int | None, device: str) -> None:
    """Passkey retrieval: a 5-digit key hidden in filler text at each depth."""
    from tqdm import tqdm

    from .runtime.needle import build_prompt, needle_test

    try:
        depth_list = [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise KvrunError(f"--depths {depths!r}: give percentages, e.g. 10,50,90") from None
    if not depth_list or any(not 0 <= d <= 100 for d in depth_list):
        raise KvrunError(f"--depths {depths!r}: give percentages between 0 and 100, e.g. 10,50,90")
    if trials < 1:
        raise KvrunError(f"--trials must be at least 1, got {trials}")
    cfgs = _parse_configs(configs)
    for c in cfgs:
        try:
            c.validate(n_ctx + 16)
        except ValueError as e:
            raise KvrunError(f"--configs {c}: {e}") from None
    eng = _engine(_resolve(model), device=device, n_ctx=n_ctx + 16, n_batch=256, threads=threads)
    try:  # a context too small for the prompt fails before the progress bar is drawn
        build_prompt(eng, n_ctx, 0, "00000")
    except ValueError as e:
        raise KvrunError(str(e)) from None
    bar = tqdm(total=len(cfgs) * len(depth_list) * trials, desc="needle", unit="trial", file=sys.stderr, disable=as_json)
    rows = []
    for c in cfgs:
        try:
            res = needle_test(
                eng, n_ctx, depth_list, trials, make_cache=lambda c=c: eng.cache_for(c, eng.n_ctx, eng.n_batch), seed=seed, progress=lambda: bar.update(1)
            )
        except ValueError as e:
            raise KvrunError(str(e)) from None
        rows.append({"config": str(c), "depths": {r.depth: r.accuracy for r in res}, "accuracy": sum(r.correct for r in res) / sum(r.trials for r in res)})
    bar.close()
    if as_json:
        click.echo(json.dumps(rows))
        return
    head = f"{'config':<44} " + " ".join(f"{f'{d}%':>6}" for d in depth_list) + f" {'all':>6}"
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        click.echo(f"{r['config']:<44} " + " ".join(f"{r['depths'][d]:>6.2f}" for d in depth_list) + f" {r['accuracy']:>6.2f}")


if __name__ == "__main__":  # pragma: no cover
    main()
