"""The tiny random-weight pipelines of tools/make_tiny_models.py load offline and run."""
import torch

from tools.make_tiny_models import byte_characters, byte_level_clip_tokenizer, main as make_tiny


def test_byte_level_tokenizer_covers_every_byte():
    chars = byte_characters()
    assert len(chars) == len(set(chars)) == 256
    assert chars[ord("a")] == "a" and chars[0] == chr(256)  # printable kept, control bytes moved
    tokenizer = byte_level_clip_tokenizer()
    assert len(tokenizer) == 514
    ids = tokenizer("a cat").input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert len(ids) == 2 + len("acat")  # one token per byte (spaces split words)


def test_tiny_sd3_round_trip_and_sampling(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    path = make_tiny(["--out", str(tmp_path), "--models", "sd3"])["sd3"]
    assert (path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)
    fresh = make_tiny.__globals__["tiny_sd3_pipeline"](0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        loaded, built = getattr(pipe, name).state_dict(), getattr(fresh, name).state_dict()
        assert loaded.keys() == built.keys()
        assert all(torch.equal(loaded[k], built[k]) for k in loaded), name
    images = pipe("a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=2.0,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
