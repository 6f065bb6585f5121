"""The flow-matching families (SD3/3.5, FLUX.1 schnell and dev, Wan 2.x) through the backend:
tiny random pipelines saved to disk and loaded by `model.path`, bit-exact with the plain
pipeline given the same `latents=` (packed for FLUX); each family's prompt embedding; the
settings a flow family refuses in one line before anything loads; the GPU options; and a
pipeline that joins the `flow` family by registration alone.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

from find_ray.backends import PipelineBackend, check_model, families
from find_ray.backends.flow import FlowBackend, FluxBackend
from find_ray.backends.loading import load_pipeline
from find_ray.config import ModelConfig
from find_ray.errors import ConfigError, ModelPathError
from tests.tiny_pipelines import pack, tiny_folders

PROMPTS = ["a red circle", "two blue squares"]
FLOW = {  # TINY key -> (family, backend, sizes: FLUX's default is 1024 px, Wan's 480x832x81)
    "sd3": ("sd3", "SD3Backend", {}),
    "flux": ("flux", "FluxBackend", {"height": 16, "width": 16}),
    "flux-schnell": ("flux", "FluxBackend", {"height": 16, "width": 16}),
    "wan": ("wan", "WanBackend", {"height": 32, "width": 32, "num_frames": 5}),
}
LATENT = {"sd3": (16, 8, 8), "flux": (16, 8, 8), "flux-schnell": (16, 8, 8), "wan": (16, 2, 4, 4)}
OUTPUT = {"sd3": (3, 16, 16), "flux": (3, 16, 16), "flux-schnell": (3, 16, 16)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folders(tmp_path_factory)


def flow_config(tiny, key: str, **options) -> ModelConfig:
    family, _, sizes = FLOW[key]
    settings = {"family": family, "steps": 2, "guidance": 3.0, **sizes, **options}
    return ModelConfig(path=str(tiny(key)), **settings)


def flow_backend(tiny, key: str, **options):
    return PipelineBackend.from_config(flow_config(tiny, key, **options))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("key", list(FLOW))
def test_latent_injection_equals_the_plain_pipeline(tiny, key):
    family, backend_name, sizes = FLOW[key]
    backend = flow_backend(tiny, key)
    assert type(backend).__name__ == backend_name and backend.latent_shape == LATENT[key]
    z = torch.randn((2, *backend.latent_shape), generator=seeded(0))
    ours = backend.generate(z, PROMPTS, seed=7)
    schnell = {"max_sequence_length": 256} if key == "flux-schnell" else {}  # its model card
    output = DiffusionPipeline.from_pretrained(tiny(key))(
        PROMPTS,
        latents=pack(z) if family == "flux" else z,
        num_inference_steps=2,
        guidance_scale=3.0,
        output_type="pt",
        **sizes,
        **schnell,
    )
    expected = output.frames if family == "wan" else output.images
    assert ours.shape == (2, *OUTPUT.get(key, (5, 3, 32, 32)))
    assert torch.equal(ours, expected)
    assert ours.min() >= 0 and ours.max() <= 1
    assert not torch.equal(ours, backend.generate(torch.randn_like(z), PROMPTS, seed=7))
    assert torch.equal(ours, backend.generate(z, PROMPTS, seed=99))  # an ODE: no sampler noise


def test_flux_packs_with_the_pipelines_own_packing(tiny):
    backend = flow_backend(tiny, "flux")
    z = torch.randn(2, *backend.latent_shape)
    assert torch.equal(backend._pipeline_latents(z), pack(z))
    assert backend._pipeline_latents(z).shape == (2, 16, 64)  # (8/2)*(8/2) tokens of 4*16


def test_flux_dev_guidance_is_its_embedding_schnell_has_none(tiny):
    """dev: the guidance scale goes into the transformer (one pass a step, not CFG's two);
    schnell: no guidance input, and the 256 T5 tokens of its model card."""
    for key, embeds in (("flux", True), ("flux-schnell", False)):
        backend = flow_backend(tiny, key)
        guidance, batches = [], []

        def hook(_module, _args, kwargs, guidance=guidance, batches=batches):
            guidance.append(kwargs["guidance"])
            batches.append(len(kwargs["hidden_states"]))

        backend.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
        backend.generate(torch.randn(2, *backend.latent_shape), PROMPTS, guidance=3.5)
        assert batches == [2, 2]  # two steps, one pass each for the batch of two
        if embeds:
            assert all(torch.equal(g, torch.full((2,), 3.5)) for g in guidance)
            assert "max_sequence_length" not in backend.call_args
        else:
            assert guidance == [None, None]
            assert backend.call_args["max_sequence_length"] == 256


def test_prompt_embeddings_come_from_each_familys_encoder(tiny):
    """SD3: both CLIP encoders' projected pooled outputs, concatenated; FLUX: CLIP's pooled
    output; Wan: umT5's token states averaged over the prompt's own tokens."""
    sd3, flux, wan = (flow_backend(tiny, key) for key in ("sd3", "flux", "wan"))
    ids = sd3.pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        pooled = [sd3.pipe.text_encoder(ids).text_embeds, sd3.pipe.text_encoder_2(ids).text_embeds]
        clip = flux.pipe.text_encoder(ids).pooler_output
        alone = [
            wan.pipe.text_encoder(**wan.pipe.tokenizer(p, return_tensors="pt")) for p in PROMPTS
        ]
    torch.testing.assert_close(sd3.encode_prompts(PROMPTS), torch.cat(pooled, dim=-1))
    torch.testing.assert_close(flux.encode_prompts(PROMPTS), clip)
    means = torch.stack([o.last_hidden_state[0].mean(0) for o in alone])
    torch.testing.assert_close(wan.encode_prompts(PROMPTS), means)  # padding changes nothing
    for backend, dim in ((sd3, 32), (flux, 16), (wan, 32)):
        emb = backend.encode_prompts(PROMPTS)
        assert emb.shape == (2, dim) and not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize(
    ("key", "option", "says"),
    [
        ("sd3", {"eta": 0.5}, "config key 'model.eta': 0.5, but flow-matching models"),
        ("flux", {"scheduler": "ddim"}, "config key 'model.scheduler': 'ddim' is a noise-pre"),
        ("flux", {"height": 24}, "config key 'model.height': flux (pixels) needs a multiple of 16"),
        ("wan", {"width": 40}, "config key 'model.width': wan (pixels) needs a multiple of 16"),
        ("wan", {"num_frames": 16}, "config key 'model.num_frames': wan (num_frames - 1) needs"),
    ],
)
def test_settings_a_flow_family_cannot_take_fail_in_one_line(tiny, key, option, says):
    """From model_index.json and the config alone (check_model: before any actor starts),
    and again when the pipeline loads."""
    cfg = flow_config(tiny, key, family="auto", **option)
    for fails in (check_model, PipelineBackend.from_config):
        with pytest.raises(ConfigError) as e:
            fails(cfg)
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_loaded_geometry_is_checked_too(tiny):
    """A size the released models' 16-pixel tokens allow, checked against this folder's own
    VAE (2x here) and patches, and an eta passed to one call."""
    pipe = load_pipeline(str(tiny("flux")))
    with pytest.raises(ConfigError, match=r"'model.width': FluxPipeline \(pixels\) needs a multi"):
        FluxBackend(pipe, 2, 0.0, 0.0, height=16, width=18)
    backend = FluxBackend(pipe, 2, 0.0, 0.0, height=16, width=20)
    assert backend.latent_shape == (16, 8, 10)
    with pytest.raises(ConfigError, match="'model.eta'"):
        backend.generate(torch.randn(1, *backend.latent_shape), PROMPTS[:1], eta=0.3)


def test_a_packed_or_misshapen_z_fails_in_one_line(tiny):
    backend = flow_backend(tiny, "flux")
    packed = pack(torch.randn(2, *backend.latent_shape))
    with pytest.raises(ValueError) as e:
        backend.generate(packed, PROMPTS)
    assert "(2, 16, 64) looks packed" in str(e.value) and "(16, 8, 8)" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"does not fit 2 prompts x \(16, 8, 8\)"):
        backend.generate(torch.randn(2, 16, 4, 4), PROMPTS)


@pytest.mark.parametrize("key", list(FLOW))
def test_check_model_reads_the_family_from_model_index(tiny, key):
    family, frames = FLOW[key][0], FLOW[key][2].get("num_frames", 16)
    assert check_model(ModelConfig(path=str(tiny(key)), num_frames=frames)) == family
    assert check_model(flow_config(tiny, key)) == family


@pytest.mark.parametrize(("family", "holds"), [("flux", "sd3"), ("sd3", "wan"), ("wan", "flux")])
def test_family_mismatch_is_one_line(tiny, family, holds):
    cfg = ModelConfig(path=str(tiny(holds)), family=family)
    for fails in (check_model, PipelineBackend.from_config):
        with pytest.raises(ModelPathError) as e:
            fails(cfg)
        assert f"model.family {family!r} but {tiny(holds)} holds a " in str(e.value)
        assert "\n" not in str(e.value)


def test_gpu_options_on_a_flow_pipeline(tiny):
    """bf16 weights with Wan's VAE kept in float32 (as its model card loads it), VAE tiling
    and slicing, and the transformer compiled where there is no unet."""
    backend = flow_backend(
        tiny, "wan", dtype="bfloat16", vae_tiling=True, vae_slicing=True, compile=True
    )
    pipe = backend.pipe
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert pipe.transformer._compiled_call_impl is not None  # compiled on first call
    plain = flow_backend(tiny, "wan", dtype="bfloat16")
    assert not plain.pipe.vae.use_tiling and plain.pipe.transformer._compiled_call_impl is None
    video = plain.generate(torch.randn(1, *plain.latent_shape), PROMPTS[:1])
    assert video.dtype == torch.float32 and video.shape == (1, 5, 3, 32, 32)
    assert torch.isfinite(video).all()


class RegisteredFlowPipeline(StableDiffusion3Pipeline):
    """A flow-matching pipeline diffusers does not know by name (as the project's own are)."""


def test_a_flow_pipeline_joins_by_registration(tiny, tmp_path, monkeypatch):
    """AUTO_FAMILY (and, for a class diffusers cannot import, PROJECT_PIPELINES) is all a new
    flow-matching pipeline called like SD3's needs: FlowBackend drives it, bit-exact."""
    components = DiffusionPipeline.from_pretrained(tiny("sd3")).components
    RegisteredFlowPipeline(**components).save_pretrained(tmp_path / "pipe")
    cfg = ModelConfig(path=str(tmp_path / "pipe"), steps=2, guidance=3.0)
    with pytest.raises(ModelPathError, match="holds a RegisteredFlowPipeline; supported: "):
        check_model(cfg)
    monkeypatch.setitem(families.AUTO_FAMILY, "RegisteredFlowPipeline", "flow")
    monkeypatch.setitem(families.PROJECT_PIPELINES, "RegisteredFlowPipeline", __name__)
    assert check_model(cfg) == "flow"
    backend = PipelineBackend.from_config(cfg)
    assert type(backend) is FlowBackend and type(backend.pipe) is RegisteredFlowPipeline
    z = torch.randn((2, *backend.latent_shape), generator=seeded(1))
    plain = RegisteredFlowPipeline(**components)
    expected = plain(
        PROMPTS, latents=z, num_inference_steps=2, guidance_scale=3.0, output_type="pt"
    )
    assert torch.equal(backend.generate(z, PROMPTS), expected.images)
    ids = plain.tokenizer(PROMPTS, padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        pooled = plain.text_encoder(ids.input_ids).text_embeds
    torch.testing.assert_close(backend.encode_prompts(PROMPTS), pooled)
    with pytest.raises(ConfigError, match="'model.eta'"):
        check_model(ModelConfig(path=cfg.path, eta=1.0))


@pytest.mark.parametrize(("key", "passes_per_step"), [("sd3", 2), ("flux", 1), ("flux-schnell", 1)])
def test_the_denoiser_calls_counted_are_the_calls_made(tiny, key, passes_per_step):
    """Guidance 3 doubles SD3's passes (CFG); FLUX.1 dev takes it as an embedding (one pass)."""
    from find_ray.backends import model_denoiser_calls

    backend = flow_backend(tiny, key)
    calls: list[int] = []
    hook = backend.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["hidden_states"].shape[0]),
        with_kwargs=True,
    )
    backend.generate(torch.randn((1, *backend.latent_shape), generator=seeded(0)), PROMPTS[:1])
    hook.remove()
    assert sum(calls) == model_denoiser_calls(flow_config(tiny, key)) == 2 * passes_per_step
