import pytest
import torch

from find_ray.backends import PipelineBackend, load_pipeline
from find_ray.errors import ModelPathError
from find_ray.shapes.pipeline import ShapesPipeline
from tests.tiny_pipelines import save_tiny


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    return save_tiny("sd", tmp_path_factory.mktemp("tiny-sd"))


def test_sd_backend_equals_plain_pipeline_with_same_latents(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    backend = PipelineBackend(load_pipeline(str(tiny_sd_dir)), steps=3, guidance=5.0, eta=0.0)
    assert backend.latent_shape == (4, 8, 8)
    prompts = ["a red circle", "two blue squares"]
    z = torch.randn((2, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    ours = backend.generate(z, prompts)
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None)
    expected = plain(
        prompts, latents=z, num_inference_steps=3, guidance_scale=5.0, output_type="pt"
    ).images
    assert ours.shape == (2, 3, 16, 16)
    assert torch.equal(ours, expected)
    other = backend.generate(torch.randn_like(z), prompts)
    assert not torch.equal(ours, other)  # the noise really is what drives the output


def test_shapes_backend_equals_plain_pipeline_with_same_latents(tiny_shapes_dir):
    backend = PipelineBackend(load_pipeline(str(tiny_shapes_dir)), steps=4, guidance=3.0, eta=0.0)
    assert isinstance(backend.pipe, ShapesPipeline)
    assert backend.latent_shape == (3, 32, 32)
    z = torch.randn((3, *backend.latent_shape))
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    plain = ShapesPipeline.from_pretrained(tiny_shapes_dir)
    expected = plain(
        prompts, num_inference_steps=4, guidance_scale=3.0, latents=z, output_type="pt"
    ).images
    assert torch.equal(backend.generate(z, prompts), expected)


def test_eta_noise_is_seeded(tiny_shapes_dir):
    backend = PipelineBackend(load_pipeline(str(tiny_shapes_dir)), steps=4, guidance=1.0, eta=1.0)
    z = torch.randn((2, *backend.latent_shape))
    a = backend.generate(z, ["a red circle"] * 2, seed=5)
    assert torch.equal(a, backend.generate(z, ["a red circle"] * 2, seed=5))
    assert not torch.equal(a, backend.generate(z, ["a red circle"] * 2, seed=6))


def test_prompt_embeddings_differ_by_prompt(tiny_shapes_dir):
    backend = PipelineBackend(load_pipeline(str(tiny_shapes_dir)), steps=2, guidance=1.0, eta=0.0)
    e = backend.encode_prompts(["a red circle", "a blue circle"])
    assert e.shape == (2, 16) and not torch.allclose(e[0], e[1])


def test_generate_rejects_wrong_noise_shape(tiny_shapes_dir):
    backend = PipelineBackend(load_pipeline(str(tiny_shapes_dir)), steps=2, guidance=1.0, eta=0.0)
    with pytest.raises(ValueError, match="does not fit"):
        backend.generate(torch.randn(2, 3, 16, 16), ["a red circle"] * 2)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match="model_index.json"):
        load_pipeline(str(tmp_path / "nowhere"))
