"""The model zoo: every conf/model config by the model-config contract of docs/design.md, documented
parameter counts, Shake-Shake's randomness, ResNeXt's cardinality and depth."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from src.config import build as build_from_config
from src.errors import ConfigError
from src.models import count_parameters
from src.models.blocks import Bottleneck, ShakeBlock, _ShakeMix
from src.models.common import Dropout
from tests.helpers import ROOT

MODEL_DIR = ROOT / "conf" / "model"
MODELS = sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))

# Parameters for num_classes=7, in_channels=1 (FER2013) with the CIFAR stem, as docs/models.md's model
# table documents them: a change to an architecture shows here.
PARAMETERS = {
    "lenet": 61_451,
    "alexnet": 58_277_575,
    "vgg11": 9_750_983,
    "vgg13": 9_935_687,
    "vgg16": 15_246_663,
    "vgg19": 20_557_639,
    "googlenet": 5_979_175,
    "resnet18": 11_171_271,
    "resnet10_cpu": 1_227_623,
    "resnet34": 21_279_431,
    "resnet50": 23_513_543,
    "resnext3": 610_759,
    "resnext4": 1_963_207,
    "resnext5": 3_576_007,
    "se_resnext3": 697_895,
    "resnext29_32x4d": 4_771_527,
    "wrn16_8": 10_959_543,
    "wrn28_10": 36_476_983,
    "shake_shake26_2x32d": 2_922_487,
    "tv_resnet18": 11_171_271,
    "tv_resnet50": 23_513_543,
    "tv_resnext50_32x4d": 22_985_415,
    "tv_wide_resnet50_2": 66_839_751,
    "tv_densenet121": 6_952_199,
    "timm": 3_375_487,  # convnext_atto, the name in timm.yaml
    "timm_convnext_atto": 3_375_487,
    "timm_mobilenetv3_small": 1_524_743,
    "timm_regnetx_002": 2_317_799,
    "timm_vit_tiny": 5_371_399,
}

# Keys a model config keeps at the class default: `python -m src.train model=NAME model.KEY=value` needs
# KEY in the file (Hydra refuses to override a key the config lacks: "Key 'KEY' is not in struct").
# Each is overridden by docs/models.md, an experiment config, hparams_search=fer_optuna or a test.
_EVERY_MODEL = {"dropout"}  # docs/models.md: every model takes model.dropout; fer_optuna searches it
_STRIDED_STEM = _EVERY_MODEL | {"stem"}  # docs/models.md: model.stem=auto|cifar|imagenet; experiment=report003_cifar
_RESNET = _STRIDED_STEM | {"stem_stride", "zero_init_residual"}  # docs/models.md; experiment=fer2013_cpu (stem_stride)
KEPT_FOR_OVERRIDES = {
    "lenet": _EVERY_MODEL,
    "alexnet": _STRIDED_STEM,
    "googlenet": _STRIDED_STEM | {"aux_heads", "aux_weight"},  # docs/models.md: model.aux_heads, model.aux_weight
    **dict.fromkeys(["vgg11", "vgg13", "vgg16", "vgg19"],
                    _EVERY_MODEL | {"depth", "pool_size", "classifier_width"}),  # docs/models.md: model.depth, the head
    "resnet18": _RESNET | {"layers", "widths"},  # widths: experiment=fer2013_cpu; layers: tests/test_trust.py
    "resnet10_cpu": _RESNET,
    **dict.fromkeys(["resnet34", "resnet50", "resnext3", "resnext4", "resnext5", "se_resnext3", "resnext29_32x4d",
                     "shake_shake26_2x32d"], _RESNET),
    **dict.fromkeys(["wrn16_8", "wrn28_10"], _RESNET | {"block_dropout"}),  # docs/models.md: model.block_dropout
    **dict.fromkeys(["tv_resnet18", "tv_resnet50", "tv_resnext50_32x4d", "tv_wide_resnet50_2", "tv_densenet121"],
                    _STRIDED_STEM | {"pretrained"}),  # docs/models.md: model.pretrained=true
    "timm": _EVERY_MODEL | {"pretrained"},  # docs/models.md: model=timm model.name=... model.pretrained=true
    **dict.fromkeys(["timm_convnext_atto", "timm_mobilenetv3_small", "timm_regnetx_002", "timm_vit_tiny"],
                    _EVERY_MODEL),
}


def load(name: str):
    return OmegaConf.load(MODEL_DIR / f"{name}.yaml")


def build(name: str, num_classes: int = 7, in_channels: int = 1, **kwargs) -> nn.Module:
    """The model-config contract (docs/design.md): instantiate(OmegaConf.load(path), num_classes=K, in_channels=C)."""
    return instantiate(load(name), num_classes=num_classes, in_channels=in_channels, **kwargs)


def build_or_raise(name: str, **kwargs) -> nn.Module:
    """As the runner builds models: a ConfigError from the constructor comes out as itself."""
    return build_from_config(load(name), num_classes=7, in_channels=1, **kwargs)


def check_forward_backward(model: nn.Module, shape: tuple, num_classes: int) -> None:
    """Finite (N, num_classes) logits in train and eval mode, finite gradients for every parameter."""
    x = torch.randn(*shape)
    for training in (True, False):
        model.train(training)
        with torch.set_grad_enabled(training):
            out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (shape[0], num_classes)
        assert torch.isfinite(logits).all()
        if training:
            logits.float().square().mean().backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            model.zero_grad(set_to_none=True)


def test_every_model_has_a_documented_parameter_count():
    assert sorted(PARAMETERS) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name):
    assert count_parameters(build(name)) == PARAMETERS[name]


# The two widest networks take seconds per pass on a CPU: they run with -m slow.
HEAVY = ("tv_wide_resnet50_2", "wrn28_10", "timm_vit_tiny")  # the ViT: 3,136 tokens of 4 px at 224 px
BY_WEIGHT = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS]


@pytest.mark.parametrize("name", BY_WEIGHT)
@pytest.mark.parametrize("shape", [(2, 1, 48, 48), (2, 3, 32, 32)], ids=["48x48x1", "32x32x3"])
def test_forward_backward_small_inputs(name, shape):
    check_forward_backward(build(name, num_classes=5, in_channels=shape[1]), shape, 5)


# At 224 px a deeper twin of a config (the same class and blocks, more of them) takes seconds and goes
# through no code its shallower twin does not: those run with -m slow, as CI does.
DEEPER_TWINS = ("vgg13", "vgg16", "vgg19", "resnet34", "resnext4", "resnext5")
AT_224 = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY + DEEPER_TWINS else n for n in MODELS]


@pytest.mark.parametrize("name", AT_224)
def test_forward_224(name):
    """At 224 px, built as training at that size builds it (stem=auto then picks the ImageNet stem)."""
    kwargs = {"input_size": 224} if "input_size" in load(name) else {}
    model = build(name, num_classes=5, in_channels=3, **kwargs)
    check_forward_backward(model, (1, 3, 224, 224), 5)


@pytest.mark.parametrize("name", [n for n in MODELS if "input_size" in load(n) and load(n).get("stem") == "auto"])
def test_stem_auto_follows_input_size(name):
    """stem=auto: a stride-1 first conv for small inputs, the strided ImageNet stem for large ones."""
    def first_conv(model: nn.Module) -> nn.Conv2d:
        return next(m for m in model.modules() if isinstance(m, nn.Conv2d))

    assert first_conv(build(name, input_size=48)).stride == (1, 1)
    assert first_conv(build(name, input_size=224)).stride[0] > 1


def test_stem_stride_2_halves_the_stages_resolution():
    model = build("resnet18", input_size=48, stem_stride=2)
    assert model.stem(torch.randn(2, 1, 44, 44)).shape[-2:] == (22, 22)
    check_forward_backward(model, (2, 1, 44, 44), 7)
    with pytest.raises(ConfigError, match="model.stem_stride=2"):
        build_or_raise("resnet18", input_size=224, stem_stride=2)  # the ImageNet stem has its own strides


def test_head_dropout_is_configurable():
    model = build("resnet18", dropout=0.3)
    assert model.head[0].p == 0.3
    with pytest.raises(ConfigError, match="model.dropout=1.5"):
        build_or_raise("resnet18", dropout=1.5)


@pytest.mark.parametrize("p", [0.2, 0.4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_keeps_each_element_with_probability_1_minus_p(p, channels_last):
    # The CPU fast path draws its own mask: the keep rate, the scale, independence from the memory layout
    # and the gradient must be those of nn.Dropout.
    x = torch.rand(16, 32, 24, 24) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    torch.manual_seed(0)
    out = Dropout(p).train()(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(out[kept], x[kept] / (1 - p))
    # No structure along any axis: the keep rate per channel and per row is the same everywhere.
    for dims in ((0, 2, 3), (0, 1, 3)):
        assert (kept.float().mean(dim=dims) - (1 - p)).abs().max() < 0.03
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    out.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))


def test_dropout_is_seeded_and_an_identity_in_eval():
    x = torch.randn(4, 8, 6, 6)
    masks = []
    for _ in range(2):
        torch.manual_seed(3)
        masks.append(Dropout(0.5).train()(x) != 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], Dropout(0.5).train()(x) != 0)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_zero_init_residual_makes_blocks_start_as_identity():
    for name in ("resnet18", "wrn16_8", "shake_shake26_2x32d"):
        model = build(name, zero_init_residual=True).eval()
        with torch.no_grad():
            h = model.stages[0][0](model.stem(torch.randn(2, 1, 16, 16)))
            out = model.stages[0][1](h)  # a block with an identity shortcut
        expected = torch.relu(h) if name == "resnet18" else h  # post-activation blocks end with ReLU
        assert torch.allclose(out, expected, atol=1e-6), name


# -- ResNeXt --------------------------------------------------------------------------------------------------


def test_resnext3_grouped_convs_have_32_channels_per_group():
    model = build("resnext3")
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups > 1]
    assert grouped, "no grouped convolutions"
    assert {m.in_channels // m.groups for m in grouped} == {32}
    assert sorted({m.groups for m in grouped}) == [2, 4, 8]  # 64, 128, 256 channels


def test_resnext29_has_cardinality_32():
    model = build("resnext29_32x4d")
    bottlenecks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(bottlenecks) == 9
    assert {b.residual[3].groups for b in bottlenecks} == {32}
    assert [b.residual[3].in_channels // 32 for b in bottlenecks[::3]] == [4, 8, 16]  # 4d, 8d, 16d


@pytest.mark.parametrize(("stages", "channels"), [(2, 128), (3, 256), (4, 512), (5, 512)])
def test_num_stages_changes_depth_and_final_channels(stages, channels):
    model = build("resnext3", num_stages=stages)
    assert len(model.stages) == stages
    assert model.head[-1].in_features == channels
    assert len([m for m in model.modules() if isinstance(m, Bottleneck)]) == 2 * stages


def test_resnext3_dropout_after_the_last_two_blocks_of_each_stage():
    model = build("resnext3")
    for stage in model.stages:
        kinds = [type(m).__name__ for m in stage]
        assert kinds == ["Bottleneck", "Dropout", "Bottleneck", "Dropout"]
        assert [m.p for m in stage if isinstance(m, nn.Dropout)] == [0.2, 0.4]


def test_se_resnext3_has_squeeze_excitation_in_every_block():
    model = build("se_resnext3")
    assert all(not isinstance(b.se, nn.Identity) for b in model.modules() if isinstance(b, Bottleneck))
    assert not any(not isinstance(b.se, nn.Identity) for b in build("resnext3").modules()
                   if isinstance(b, Bottleneck))


def test_block_options_are_checked():
    with pytest.raises(ConfigError, match="model.se_reduction=4 is not supported by model.block=preact"):
        build_or_raise("wrn16_8", se_reduction=4)
    with pytest.raises(ConfigError, match="num_stages=0"):
        build_or_raise("resnext3", num_stages=0)


# -- Shake-Shake ----------------------------------------------------------------------------------------------


def test_shake_shake_is_random_in_training_and_deterministic_in_eval():
    model = build("shake_shake26_2x32d", in_channels=3)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_shake_mix_uses_alpha_forward_and_beta_backward():
    a, b = torch.randn(3, 2, 4, 4, requires_grad=True), torch.randn(3, 2, 4, 4, requires_grad=True)
    alpha, beta = torch.rand(3, 1, 1, 1), torch.rand(3, 1, 1, 1)
    out = _ShakeMix.apply(a, b, alpha, beta)
    assert torch.allclose(out, alpha * a + (1 - alpha) * b)
    out.sum().backward()
    assert torch.allclose(a.grad, beta.expand_as(a)) and torch.allclose(b.grad, (1 - beta).expand_as(b))


def test_shake_block_draws_independent_alpha_and_beta_per_sample():
    block = ShakeBlock(8, 8, 1, 8, 1).train()
    x = torch.randn(6, 8, 5, 5)
    branch_grads = []

    def keep_gradient(module, inputs, output) -> None:
        output.register_hook(branch_grads.append)

    block.branches[0].register_forward_hook(keep_gradient)
    torch.manual_seed(1)
    out = block(x)
    out.sum().backward()
    torch.manual_seed(1)  # the block's draws, in its order: alpha then beta
    alpha, beta = torch.rand(6, 1, 1, 1), torch.rand(6, 1, 1, 1)
    a, b = block.branches[0](x), block.branches[1](x)
    assert torch.allclose(out, x + alpha * a + (1 - alpha) * b, atol=1e-5)
    grad_a = branch_grads[0]
    assert torch.allclose(grad_a, beta.expand_as(grad_a))  # the backward mix is beta, not alpha
    assert not torch.allclose(grad_a, alpha.expand_as(grad_a))
    assert len(set(beta.flatten().tolist())) == 6  # one draw per sample


def test_model_table_command_lists_every_model():
    from src.models.__main__ import table

    text = table(["lenet", "resnext3"])
    assert "| `lenet` | 61,451 |" in text and "| `resnext3` | 610,759 |" in text


def test_model_configs_are_self_contained():
    """docs/design.md, the model-config contract: each file instantiates alone, so none may rely on a Hydra
    defaults list."""
    for path in Path(MODEL_DIR).glob("*.yaml"):
        assert "defaults" not in OmegaConf.load(path), path.name


def test_model_configs_set_only_what_differs_from_the_class_defaults():
    """A conf/model file sets the keys whose values differ from its class's defaults, and the
    KEPT_FOR_OVERRIDES keys (which must be there, at any value); input_size passes the dataset's image
    size wherever the class takes one."""
    assert sorted(KEPT_FOR_OVERRIDES) == MODELS
    redundant = []
    for name in MODELS:
        cfg = OmegaConf.to_container(load(name), resolve=False)
        parameters = inspect.signature(get_class(cfg.pop("_target_"))).parameters
        kept = KEPT_FOR_OVERRIDES[name]
        assert kept <= cfg.keys(), f"{name}.yaml lacks {sorted(kept - cfg.keys())}, which users override"
        if "input_size" in parameters:
            assert cfg.get("input_size") == "${oc.select:data.image_size,null}", name
        for key, value in cfg.items():
            assert key in parameters, f"{name}.yaml: {key} is not an argument of its class"
            default = parameters[key].default
            default = list(default) if isinstance(default, tuple) else default
            if key not in kept and value == default:  # input_size's "${...}" string equals no default
                redundant.append(f"{name}.{key}={value}")
    assert not redundant, f"set to the class default (remove, or list in KEPT_FOR_OVERRIDES): {redundant}"
