"""ToyFlowPolicy (the Policy interface on the shipped toy generator) and ToyAlignmentReward."""
from __future__ import annotations

import pytest
import torch

from treegrpo.policies.toy import ToyFlowPolicy
from treegrpo.registry import POLICIES, REWARDS, build
from treegrpo.rewards.toy import ToyAlignmentReward
from treegrpo.toy.prompts import ShapeSpec, sample_specs, spec_to_prompt
from treegrpo.toy.render import render_specs

PROMPTS = [
    "a small red circle on a blue background at the top",
    "a large white triangle on a green background on the left",
    "a large yellow square on a purple background in the center",
]


@pytest.fixture(scope="module")
def policy():
    return ToyFlowPolicy()


@pytest.fixture(scope="module")
def reward():
    return ToyAlignmentReward()


def test_conditioning_and_schedule(policy):
    assert policy.latent_shape == (3, 32, 32)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["tokens"].shape == (3, 12, 64) and cond["pooled"].shape == (3, 64)
    assert not cond["tokens"].requires_grad
    null = policy.null_condition(4)
    assert null["tokens"].shape == (4, 12, 64) and null["pooled"].shape == (4, 64)
    empty = policy.encode_prompts([""])
    assert torch.equal(null["pooled"][3], empty["pooled"][0])
    assert not torch.allclose(null["pooled"][0], cond["pooled"][0])
    levels = policy.noise_levels(4)
    assert levels.dtype == torch.float32 and levels.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = ToyFlowPolicy(sigma_shift=3.0).noise_levels(4)
    assert torch.allclose(shifted, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))  # 3s / (1 + 2s)
    with pytest.raises(ValueError, match="sigma_shift must be > 0"):
        ToyFlowPolicy(sigma_shift=0.0)


def test_predict_counts_nfe_and_applies_cfg(policy):
    torch.manual_seed(0)
    cond = policy.encode_prompts(PROMPTS)
    x, level = torch.randn(3, 3, 32, 32), torch.full((3,), 0.6)
    policy.nfe = 0
    with torch.no_grad():
        plain = policy.predict(x, level, cond)
        assert plain.shape == (3, 3, 32, 32) and policy.nfe == 3
        guided = policy.predict(x, level, cond, guidance_scale=4.0)
        assert policy.nfe == 3 + 6
        uncond = policy.model_output(x, level, policy.null_condition(3))
    assert torch.allclose(guided, uncond + 4.0 * (plain - uncond), atol=1e-4)
    assert policy.nfe == 9  # model_output itself is not counted


def test_decode_maps_and_clamps(policy):
    latents = torch.tensor([-1.0, 0.0, 1.0, 3.0, -2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert policy.decode(latents)[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]


def test_sample_images_shapes_nfe_and_determinism(policy):
    policy.nfe = 0
    a = policy.sample_images(PROMPTS, num_steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert policy.nfe == 3 * 4
    b = policy.sample_images(
        PROMPTS, num_steps=4, generator=torch.Generator().manual_seed(1), guidance_scale=2.0
    )
    assert policy.nfe == 12 + 2 * 3 * 4
    c = policy.sample_images(PROMPTS, num_steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_trainable_parts_gradients_and_reference():
    policy = ToyFlowPolicy(keep_reference=True)
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
    assert not any(p.requires_grad for p in policy.reference_denoiser.parameters())
    trainable = policy.trainable_parameters()
    assert len(trainable) == len(list(policy.denoiser.parameters()))
    assert all(p.requires_grad for p in trainable)
    cond = policy.encode_prompts(PROMPTS[:2])
    out = policy.model_output(torch.randn(2, 3, 32, 32), torch.tensor([0.5, 0.9]), cond)
    out.square().mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in policy.reference_denoiser.parameters())
    with torch.no_grad():
        for p in trainable:
            p.add_(0.01)
    x, level = torch.randn(2, 3, 32, 32), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        trained = policy.model_output(x, level, cond)
        with policy.reference() as reference:
            assert reference is policy.reference_denoiser
            frozen = policy.model_output(x, level, cond, model=reference)
        assert policy.denoiser is not policy.reference_denoiser  # nothing was swapped
        reloaded = ToyFlowPolicy().model_output(x, level, cond)
    assert torch.allclose(frozen, reloaded, atol=1e-5) and not torch.allclose(trained, frozen)
    assert policy.denoiser is not policy.reference_denoiser
    state = policy.trainable_state_dict()
    fresh = ToyFlowPolicy()
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(fresh.model_output(x, level, cond), trained, atol=1e-5)


def test_no_reference_without_keep_reference(policy):
    with pytest.raises(RuntimeError, match="keep_reference=True"):
        with policy.reference():
            pass


def test_missing_weights_and_registry(tmp_path):
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(FileNotFoundError, match=r"gone\.safetensors.*run `python tools/pretrain_toy\.py`"):
        ToyFlowPolicy(weights=missing)
    built = build(POLICIES, dict(type="ToyFlowPolicy", sigma_shift=2.0))
    assert isinstance(built, ToyFlowPolicy) and built.sigma_shift == 2.0
    assert isinstance(build(REWARDS, dict(type="ToyAlignmentReward")), ToyAlignmentReward)
    lazy = ToyAlignmentReward(checkpoint=tmp_path / "no_classifier.safetensors")  # loads lazily
    with pytest.raises(FileNotFoundError, match=r"no_classifier\.safetensors.*pretrain_toy\.py"):
        lazy(torch.rand(1, 3, 32, 32), PROMPTS[:1])


OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "left"}


def test_reward_prefers_the_prompted_render(reward):
    specs = sample_specs(16, torch.Generator().manual_seed(7))
    # a spec that differs from each one in every attribute (shape, colours, size, position)
    wrong = [
        ShapeSpec(
            {"circle": "square", "square": "triangle", "triangle": "circle"}[s.shape],
            s.background, s.colour, "large" if s.size == "small" else "small",
            OPPOSITE[s.position],
        )
        for s in specs
    ]
    images = render_specs(specs, generator=torch.Generator().manual_seed(8))
    right_score = reward(images, [spec_to_prompt(s) for s in specs])
    wrong_score = reward(images, [spec_to_prompt(s) for s in wrong])
    assert right_score.shape == (16,) and right_score.dtype == torch.float32
    assert ((0 <= wrong_score) & (wrong_score <= 1) & (0 <= right_score) & (right_score <= 1)).all()
    assert (right_score > 0.9).all() and (wrong_score < 0.1).all()
    per_attribute = reward.attribute_scores(images, [spec_to_prompt(s) for s in specs])
    assert set(per_attribute) == {"shape", "colour", "background", "size", "position"}
    mean = torch.stack(list(per_attribute.values()), dim=1).mean(dim=1)
    assert torch.allclose(mean, right_score)
    with pytest.raises(ValueError, match="got 16 images but 1 prompts"):
        reward(images, PROMPTS[:1])
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        reward(images[:1], ["a small red hexagon on a blue background at the top"])


def test_shipped_generator_is_imperfect_but_draws_the_prompt(policy, reward):
    """The RL job needs headroom: the shipped generator must score well above chance (about
    0.27 for random attribute guesses) and clearly below a perfect 1.0."""
    specs = sample_specs(48, torch.Generator().manual_seed(3))
    prompts = [spec_to_prompt(s) for s in specs]
    images = policy.sample_images(prompts, num_steps=10, generator=torch.Generator().manual_seed(4))
    score = reward(images, prompts).mean().item()
    assert 0.45 < score < 0.95, f"shipped generator alignment {score:.3f}: retrain tools/pretrain_toy.py"



def test_strict_reward_is_the_product_of_attribute_probabilities(reward):
    """reduction='product' (the task with headroom) multiplies the per-attribute probabilities:
    ~1 on clean renders, and one wrong attribute is enough to score near 0."""
    strict = ToyAlignmentReward(reduction="product")
    specs = sample_specs(12, torch.Generator().manual_seed(5))
    images = render_specs(specs, generator=torch.Generator().manual_seed(6))
    prompts = [spec_to_prompt(s) for s in specs]
    probs = torch.stack(list(reward.attribute_scores(images, prompts).values()), dim=1)
    expected = probs[:, 0] * probs[:, 1] * probs[:, 2] * probs[:, 3] * probs[:, 4]
    assert torch.allclose(strict(images, prompts), expected)
    assert (strict(images, prompts) > 0.85).all()
    one_wrong = [spec_to_prompt(ShapeSpec(s.shape, s.colour, s.background, s.size, OPPOSITE[s.position]))
                 for s in specs]  # only the position is wrong
    assert (strict(images, one_wrong) < 0.1).all() and (reward(images, one_wrong) > 0.75).all()
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'product'\], got 'min'"):
        ToyAlignmentReward(reduction="min")
    hard = ToyAlignmentReward(attributes=["shape", "position"])  # mean of the two chosen attributes
    assert torch.allclose(hard(images, prompts), (probs[:, 0] + probs[:, 4]) / 2)
    assert (hard(images, one_wrong) < 0.6).all()  # the position is one of the two scored
    for bad in ([], ["shape", "shape"], ["hue"]):
        with pytest.raises(ValueError, match="attributes must be a non-empty list of distinct names"):
            ToyAlignmentReward(attributes=bad)


def test_shipped_generator_leaves_headroom_on_the_strict_task(policy):
    """The strict task must leave most of the reachable maximum (~1 on clean renders) to learn."""
    specs = sample_specs(48, torch.Generator().manual_seed(3))
    prompts = [spec_to_prompt(s) for s in specs]
    images = policy.sample_images(prompts, num_steps=10, generator=torch.Generator().manual_seed(4))
    score = ToyAlignmentReward(reduction="product")(images, prompts).mean().item()
    assert 0.03 < score < 0.5, f"shipped generator strict alignment {score:.3f}"

def test_policy_accepts_subclasses_of_its_kernel_and_refuses_others():
    from treegrpo.kernels import DDIMKernel, FlowMatchingKernel
    from treegrpo.policies import ToyFlowPolicy

    class MyFlowKernel(FlowMatchingKernel):  # e.g. a plugin's variant
        pass

    policy = ToyFlowPolicy()
    policy.check_kernel(MyFlowKernel(eta=0.5))
    with pytest.raises(ValueError, match="needs kernel type 'FlowMatchingKernel'.*'DDIMKernel'"):
        policy.check_kernel(DDIMKernel(eta=1.0))
