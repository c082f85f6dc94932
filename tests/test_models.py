"""The paper's networks: exact parameter counts, Table 1 multiply-adds, torchvision's
state_dicts, and every option. Counting happens on the meta device (no weights allocated)."""

import pytest
import torch
import torch.nn as nn
import torchvision

from orchestrator.errors import SpecError
from orchestrator.models import (
    arch_info,
    build_model,
    count_macs,
    count_parameters,
    default_input_size,
    list_archs,
)
from orchestrator.models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut
from orchestrator.models.complexity import layer_output_shapes, macs_with_stride_in_v1

TORCHVISION_PARAMS = {  # torchvision 0.29 at 1000 classes
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
TABLE6_PARAMS = {  # option A, 10 classes
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962,
    "cifar_resnet1202": 19_421_274,
}
TABLE1_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are small: a second thread gains little and, on a busy 2-core machine,
    # spin-waits (the suite took 3x the CPU time with 2 threads under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def on_meta(arch: str, num_classes: int = 1000, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, num_classes, **options)


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def projections(model: nn.Module) -> list[nn.Module]:
    return [b.downsample for b in blocks(model) if isinstance(b.downsample, nn.Sequential)]


def zero_pads(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, params", TORCHVISION_PARAMS.items())
def test_imagenet_parameter_counts_equal_torchvision(arch, params):
    assert count_parameters(on_meta(arch)) == params


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet101"])
def test_imagenet_state_dict_keys_and_shapes_equal_torchvision(arch):
    with torch.device("meta"):
        theirs = getattr(torchvision.models, arch)()
    ours = on_meta(arch)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("arch, params", TABLE6_PARAMS.items())
def test_cifar_parameter_counts_equal_table_6(arch, params):
    assert count_parameters(on_meta(arch, 10)) == params
    assert count_parameters(on_meta(arch, 10, shortcut="A")) == params


@pytest.mark.parametrize("arch, gmacs", TABLE1_GMACS.items())
def test_macs_match_table_1(arch, gmacs):
    paper = on_meta(arch, stride_in="v1")  # the paper strides the first 1x1
    macs = count_macs(paper, 224)
    assert macs == pytest.approx(gmacs * 1e9, rel=0.05)
    if arch in ("resnet50", "resnet101", "resnet152"):
        assert count_macs(on_meta(arch), 224) > macs  # v1.5 strides the 3x3: more MACs


def test_counting_on_meta_equals_counting_real_weights():
    model = build_model("cifar_resnet8", 10, shortcut="B")
    assert count_macs(model, 32) == count_macs(on_meta("cifar_resnet8", 10, shortcut="B"), 32)
    assert count_parameters(model) == count_parameters(on_meta("cifar_resnet8", 10, shortcut="B"))


def test_count_macs_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )
    model.train()
    assert count_macs(model, 4) == 8 * 4 * 4 * 3 * 9 + 8 * 2 * 2 * 4 * 9 + 10 * 32
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


@pytest.mark.parametrize("arch", ["resnet50", "plain101"])
@pytest.mark.parametrize("size", [224, 97])
def test_v1_macs_derived_from_a_v1_5_pass_equal_a_v1_build(arch, size):
    v15, v1 = on_meta(arch), on_meta(arch, stride_in="v1")
    assert macs_with_stride_in_v1(v15, layer_output_shapes(v15, size)) == count_macs(v1, size)


def test_cifar_macs():
    # 3x3 convs only: each stage costs the same (half the resolution, twice the channels).
    assert count_macs(on_meta("cifar_resnet20", 10), 32) == 40_551_040
    assert count_macs(on_meta("cifar_plain20", 10), 32) == 40_551_040  # option A adds no MACs


# --- torchvision compatibility -------------------------------------------------------------


def test_torchvision_resnet50_state_dict_loads_and_gives_the_same_outputs():
    torch.manual_seed(0)
    theirs = torchvision.models.resnet50().eval()
    ours = build_model("resnet50", 1000).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


# --- families and options --------------------------------------------------------------------

SHAPE_CASES = [
    ("resnet18", {"shortcut": "A"}),
    ("resnet18", {}),
    ("resnet18", {"shortcut": "C"}),
    ("resnet50", {}),
    ("resnet50", {"shortcut": "A", "stride_in": "v1"}),
    ("plain18", {}),
    ("plain50", {"stride_in": "v1"}),
    ("cifar_resnet8", {}),
    ("cifar_resnet20", {"shortcut": "B"}),
    ("cifar_resnet20", {"shortcut": "C"}),
    ("cifar_plain20", {}),
    ("cifar_resnet14", {"zero_init_residual": True}),
]


@pytest.mark.parametrize("arch, options", SHAPE_CASES)
def test_output_shapes(arch, options):
    model = build_model(arch, 7, **options).eval()
    x = torch.randn(2, 3, 32, 32) if arch_info(arch).family == "cifar" else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], 7) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "arch, options",
    [
        ("resnet18", {"shortcut": "A"}),
        ("resnet50", {"shortcut": "A", "stride_in": "v1"}),
        ("cifar_resnet20", {}),
    ],
)
def test_channels_last_gives_the_same_outputs(arch, options):
    torch.manual_seed(0)
    model = build_model(arch, 10, **options).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x.to(memory_format=torch.channels_last)), expected, atol=1e-4)


def test_in_channels():
    model = build_model("cifar_resnet8", 10, in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_option_a_shortcuts_add_no_parameters():
    for residual, plain in [("resnet34", "plain34"), ("resnet50", "plain50"), ("cifar_resnet20", "cifar_plain20")]:
        model = on_meta(residual, shortcut="A")
        assert count_parameters(model) == count_parameters(on_meta(plain))
        assert not projections(model)
    assert len(zero_pads(on_meta("resnet34", shortcut="A"))) == 3  # first block of layer2..4
    assert len(zero_pads(on_meta("resnet50", shortcut="A"))) == 4  # and layer1's: 64 -> 256 channels


def test_option_a_pads_zero_channels_on_a_subsample():
    x = torch.randn(2, 4, 5, 5)
    y = ZeroPadShortcut(8, 2)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


@pytest.mark.parametrize("arch, where_shape_changes", [("resnet34", 3), ("resnet50", 4), ("cifar_resnet20", 2)])
def test_option_b_projects_where_the_shape_changes_and_c_everywhere(arch, where_shape_changes):
    a, b, c = (on_meta(arch, shortcut=s) for s in "ABC")
    assert len(projections(b)) == where_shape_changes
    assert len(projections(c)) == len(blocks(c))
    assert count_parameters(a) < count_parameters(b) < count_parameters(c)


def test_imagenet_default_is_b_and_cifar_default_is_a():
    assert len(projections(on_meta("resnet18"))) == 3
    assert not projections(on_meta("cifar_resnet20", 10)) and len(zero_pads(on_meta("cifar_resnet20", 10))) == 2


@pytest.mark.parametrize("arch", ["plain18", "plain50", "plain152", "cifar_plain20"])
def test_plain_nets_have_no_shortcuts(arch):
    model = on_meta(arch)
    assert all(not b.residual and b.downsample is None for b in blocks(model))
    assert not zero_pads(model)
    assert not any("downsample" in key for key in model.state_dict())


def test_plain_block_adds_nothing_back():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, shortcut=None).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        branch = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        assert torch.equal(block(x), branch)


@pytest.mark.parametrize("arch", ["resnet50", "plain101"])
def test_stride_in_moves_the_stride_and_keeps_the_parameters(arch):
    v1, v15 = on_meta(arch, stride_in="v1"), on_meta(arch)
    assert count_parameters(v1) == count_parameters(v15)
    for layer in ("layer2", "layer3", "layer4"):
        assert getattr(v1, layer)[0].conv1.stride == (2, 2) and getattr(v1, layer)[0].conv2.stride == (1, 1)
        assert getattr(v15, layer)[0].conv1.stride == (1, 1) and getattr(v15, layer)[0].conv2.stride == (2, 2)
    assert count_macs(v1, 224) < count_macs(v15, 224)


def test_stride_in_matches_torchvisions_v1_5():
    with torch.device("meta"):
        theirs = torchvision.models.resnet50()
    ours = on_meta("resnet50")
    assert [m.stride for m in ours.modules() if isinstance(m, nn.Conv2d)] == [
        m.stride for m in theirs.modules() if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize(
    "arch, options",
    [
        ("resnet18", {}),
        ("resnet50", {"shortcut": "C"}),
        ("cifar_resnet20", {"shortcut": "B"}),
    ],
)
def test_zero_init_residual_zeroes_exactly_the_last_bn_of_each_branch(arch, options):
    model = build_model(arch, 10, zero_init_residual=True, **options)
    last = {id(b.last_bn) for b in blocks(model)}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    zeroed = [m for m in bns if not m.weight.any()]
    assert {id(m) for m in zeroed} == last and len(zeroed) == len(blocks(model))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns if id(m) not in last)


def test_zero_init_residual_is_off_by_default():
    assert all(m.weight.all() for m in build_model("cifar_resnet20", 10).modules() if isinstance(m, nn.BatchNorm2d))


def test_initialization_as_torchvision():
    torch.manual_seed(0)
    model = build_model("resnet50", 1000)
    conv = model.layer3[0].conv2  # 256 -> 256, 3x3: fan_out 2304
    assert conv.weight.mean().item() == pytest.approx(0, abs=1e-3)
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.02)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.weight.eq(1).all() and m.bias.eq(0).all() for m in bns)


def test_gradients_reach_the_first_conv_of_resnet110():
    torch.manual_seed(0)
    model = build_model("cifar_resnet110", 10)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    nn.functional.cross_entropy(model(x), labels).backward()
    grad = model.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- names and errors -------------------------------------------------------------------------


def test_list_archs():
    assert list_archs() == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "plain18",
        "plain34",
        "plain50",
        "plain101",
        "plain152",
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet44",
        "cifar_resnet56",
        "cifar_resnet110",
        "cifar_resnet1202",
        "cifar_plain20",
        "cifar_plain32",
        "cifar_plain44",
        "cifar_plain56",
        "cifar_plain110",
        "cifar_plain1202",
    ]


def test_families_and_input_sizes():
    assert {arch_info(a).family for a in ("cifar_resnet20", "cifar_plain8", "cifar_resnet164")} == {"cifar"}
    assert {arch_info(a).family for a in ("resnet50", "plain18")} == {"imagenet"}
    assert default_input_size("resnet152") == 224 and default_input_size("cifar_plain56") == 32
    assert count_parameters(on_meta("cifar_resnet164", 10)) > TABLE6_PARAMS["cifar_resnet110"]  # any 6n+2


@pytest.mark.parametrize("arch", ["resnet19", "resnet", "cifar_resnet", "ResNet50", "vgg16", 50, None])
def test_unknown_arch_lists_the_known_names(arch):
    with pytest.raises(SpecError) as err:
        build_model(arch, 10)
    message = str(err.value)
    assert "unknown arch" in message and "\n" not in message
    for name in ("resnet18", "resnet152", "plain18", "plain152", "cifar_resnet{6n+2}", "cifar_plain{6n+2}"):
        assert name in message


def test_unknown_arch_suggests_a_close_name():
    with pytest.raises(SpecError, match="did you mean resnet18"):
        build_model("resnet81", 10)


@pytest.mark.parametrize("arch", ["cifar_resnet21", "cifar_plain2", "cifar_resnet0", "cifar_resnet27"])
def test_cifar_depth_must_be_6n_plus_2(arch):
    with pytest.raises(SpecError, match=r"6n\+2") as err:
        build_model(arch, 10)
    assert "20, 32, 44, 56, 110" in str(err.value)
    with pytest.raises(SpecError):
        arch_info(arch)


@pytest.mark.parametrize(
    "arch, options, fragments",
    [
        ("resnet50", {"shortcut": "D"}, ["option shortcut", "A, B, C", "'D'"]),
        ("cifar_resnet20", {"shortcut": "a"}, ["option shortcut", "A, B, C"]),
        ("resnet50", {"stride_in": "v2"}, ["option stride_in", "v1, v1.5"]),
        ("resnet50", {"stride_in": 1.5}, ["option stride_in", "v1, v1.5"]),
        ("resnet18", {"zero_init_residual": "yes"}, ["option zero_init_residual", "true or false"]),
        ("resnet18", {"in_channels": 0}, ["option in_channels", "positive integer"]),
        (
            "resnet18",
            {"dropout": 0.5},
            ["unknown option 'dropout'", "options: in_channels, shortcut, stride_in, zero_init_residual"],
        ),
        (
            "plain34",
            {"shortcut": "B"},
            ["unknown option 'shortcut'", "plain nets have no shortcuts", "options: in_channels, stride_in"],
        ),
        ("cifar_plain20", {"zero_init_residual": True}, ["unknown option 'zero_init_residual'", "plain nets"]),
    ],
)
def test_bad_options_name_the_option_and_the_allowed_values(arch, options, fragments):
    with pytest.raises(SpecError) as err:
        on_meta(arch, **options)
    assert str(err.value).startswith(f"{arch}: ") and "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True, "10"])
def test_bad_num_classes(num_classes):
    with pytest.raises(SpecError, match="num_classes must be a positive integer"):
        build_model("resnet18", num_classes)
