"""What `kvrun info` asks the model's class, and what it imports to ask it.

The KV cost `kvrun info` prints comes from the class that will run the file (models/common.py ``Model.cache_widths``:
the config's geometry by default, MLA's latent cache models/mla.py's ``LatentCache``), so it counts what that class's
``layer_specs`` lay out, ``KVRUN_MLA`` included, and the loaders repeat no model's decision.  The registry
(models/__init__.py) imports a class's module when the class is first asked for: `kvrun info` of a text model imports its
own model's module (and what that imports), not every architecture's nor the audio encoder's (models/whisper_audio.py),
and for Llama's and Gemma 3's none of the CPU's Numba kernels (models/common.py, moe.py and gemma3.py import them where
they run them; many other model modules still import theirs at the top).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cli import main
from kvrun.loaders.config import SUPPORTED_ARCHITECTURES, load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import _CLASSES, MODEL_CLASSES, model_class
from kvrun.ops import get_backend

#: the multi-head latent attention fixtures (deepseek2's class and its subclasses; Kimi Linear's forward is its own)
MLA_FIXTURES = ("deepseek2", "deepseek2-v3", "minicpm3", "plm", "mistral4", "glm-dsa", "kimi-linear")


def info_line(output: str, key: str) -> str:
    """The value `kvrun info` prints on its line ``key`` (the key, then two spaces or more)."""
    return next(ln[len(key):].strip() for ln in output.splitlines() if ln.startswith(key + "  "))


def held_per_token(path: Path) -> float:
    """The K and V bytes a token takes in the plain fp16 cache the runtime allocates for the model at ``path``
    (``Engine.new_cache``): each layer cache's K and V arrays over its slots (a window layer's ring has fewer), the
    positions' bookkeeping aside; what `kvrun info`'s 16-bit KV cost must say."""
    from kvrun.runtime.engine import Engine

    cache = Engine(path, n_ctx=64, n_batch=16).new_cache()
    return sum((L.k.nbytes + (0 if L.spec.v_in_k else L.v.nbytes)) / L.capacity for L in cache.layers)


def _modules(code: str, prefix: str = "kvrun.models") -> set[str]:
    """The modules named ``prefix...`` a fresh interpreter holds after running ``code``."""
    probe = code + f"\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(eval(r.stdout.strip().splitlines()[-1]))


def test_the_registry_names_every_class_by_its_own_archs():
    """Each entry's module holds its class, whose ``archs`` are the entry's; every architecture the loaders accept has one."""
    for where, archs in _CLASSES.items():
        cls = MODEL_CLASSES[archs[0]]
        assert f"{cls.__module__.removeprefix('kvrun.models.')}.{cls.__name__}" == where and cls.archs == archs, where
    assert set(SUPPORTED_ARCHITECTURES) <= set(MODEL_CLASSES)
    assert len(MODEL_CLASSES) == sum(len(a) for a in _CLASSES.values())  # (no architecture named twice)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_info_imports_its_own_models_module_and_no_kernels(tmp_path, arch):
    """`kvrun info` of a tiny llama or Gemma 3: no other architecture's module, not the audio encoder's (an mmproj's
    alone), and none of the CPU's Numba kernels (their modules import the kernels where they run them)."""
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch)
    run = f"from kvrun.cli import main\ntry:\n    main(['info', {str(path)!r}])\nexcept SystemExit:\n    pass"
    every = _modules(run, "")
    with_info, own = {m for m in every if m.startswith("kvrun.models")}, _modules(f"import kvrun.models.{arch}")
    assert f"kvrun.models.{arch}" in with_info and with_info <= own | {"kvrun.models"}, with_info - own
    assert "kvrun.models.whisper_audio" not in with_info and "kvrun.models.gemma3n" not in with_info
    assert not [m for m in every if m.startswith(("numba", "kvrun.ops.cpu"))]
    assert _modules("import kvrun.models") == {"kvrun.models"}  # (the registry itself imports no model)


@pytest.mark.parametrize("mode", ["latent", "expanded"])
def test_info_counts_what_the_class_caches(tmp_path, monkeypatch, mode):
    """The MLA fixtures' KV cost: the latent (``n_rot + kv_lora_rank`` a layer, V read through K's rows) or, with ``KVRUN_MLA=expanded``
    and for Kimi Linear, every head's K and V, as many layers as ``layer_specs`` lays out (GLM-DSA's: its trunk's,
    not its NextN layer), while the config stays the file's whatever the environment says."""
    if mode == "expanded":
        monkeypatch.setenv("KVRUN_MLA", "expanded")
    for name in MLA_FIXTURES:
        path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
        g = GGUFFile(path)
        cfg = load_config(g)
        model = model_class(cfg.arch)(g, cfg, get_backend("cpu"), 32, 8)
        specs = [(il, s) for il, s in enumerate(model.layer_specs()) if not (cfg.ssm_layers and cfg.ssm_layers[il])]  # (Kimi's
        held = [0] * len(model.layer_specs())  # KDA layers keep a state, no K/V)
        held_q = list(held)  # (the compressed cache keeps V apart, v_in_k or not)
        for il, s in specs:
            held[il] = s.n_head_kv * (s.head_dim + (0 if s.v_in_k else s.head_dim_v))
            held_q[il] = s.n_head_kv * (s.head_dim + s.head_dim_v)
        assert type(model).cache_widths(cfg, g) == tuple(held) and type(model).cache_widths(cfg, g, 4) == tuple(held_q), name
        assert (sum(held) < sum(cfg.kv_values_by_layer())) == (mode == "latent" and name != "kimi-linear"), name
        facts = json.loads(CliRunner().invoke(main, ["info", "--json", str(path)]).output)
        assert facts["kv_bytes_per_token"] == {str(b): sum(held if b == 16 else held_q) * b / 8 for b in (16, 8, 4, 2)}, name


def test_the_default_hook_is_the_configs_geometry(tmp_path):
    """A model without a cache of its own form (a tiny llama, OpenELM's per-layer heads, a hybrid's state-space layers
    that keep no K/V): the class says what the config's geometry says, and that is what its layers lay out."""
    for name in ("llama", "openelm", "granitehybrid"):
        path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
        g = GGUFFile(path)
        cfg = load_config(g)
        widths = model_class(cfg.arch).cache_widths(cfg, g)
        assert widths == cfg.kv_values_by_layer() and len(widths) == cfg.n_layer, name
        assert sum(widths) * 2 == cfg.kv_bytes_per_token(16), name
