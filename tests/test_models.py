import math

import pytest
import torch
import torch.nn as nn

from trainers.models import MODELS, build_model, meta_model, model_shapes

torch.set_num_threads(1)

# (input shape, batch) per model family: small but the family's real geometry.
SHAPES = {
    "mlp_300_100": ((64,), 4),
    "resnet18": ((3, 64, 64), 2),
    "resnet50": ((3, 64, 64), 2),
}


def _shape(name):
    return SHAPES.get(name, ((3, 32, 32), 2))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_takes_an_sgd_step(name):
    shape, batch = _shape(name)
    model = build_model(name, shape, 10, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=gen)
    y = torch.tensor([i % 10 for i in range(batch)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    out = model(x)
    assert out.shape == (batch, 10)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.norm()) for g in grads) > 0
    opt.step()
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert changed, "no parameter moved"


def test_mlp_is_lenet_300_100():
    shapes = model_shapes("mlp_300_100", (1, 28, 28), 10)
    weights = [s for s in shapes.values() if len(s) == 2]
    assert weights == [(300, 784), (100, 300), (10, 100)]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_depth_and_widths(depth):
    model = meta_model(f"cifar_resnet_{depth}", (3, 32, 32), 10)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # 6n+2 weighted layers: 3x3 convs plus the classifier (projection shortcuts not counted).
    assert len(convs3) + len(linears) == depth
    assert sorted({m.out_channels for m in convs3}) == [16, 32, 64]
    assert linears[0].in_features == 64


def test_cifar_resnet_20_parameter_count_by_hand():
    # conv 3*16*9; per stage n=3 blocks of two 3x3 convs; 2 projections (1x1 + BN);
    # BN: 2 params per channel; fc 64*10+10.
    n = 3
    convs = 3 * 16 * 9 + n * 2 * 16 * 16 * 9
    convs += (16 * 32 * 9 + 32 * 32 * 9) + (n - 1) * 2 * 32 * 32 * 9 + 16 * 32
    convs += (32 * 64 * 9 + 64 * 64 * 9) + (n - 1) * 2 * 64 * 64 * 9 + 32 * 64
    bn = 2 * (16 + n * 2 * 16 + n * 2 * 32 + 32 + n * 2 * 64 + 64)
    expected = convs + bn + 64 * 10 + 10
    got = sum(math.prod(s) for s in model_shapes("cifar_resnet_20", (3, 32, 32), 10).values())
    assert got == expected


@pytest.mark.parametrize("depth,convs", [(11, 8), (16, 13), (19, 16)])
def test_cifar_vgg_layers(depth, convs):
    model = meta_model(f"cifar_vgg_{depth}", (3, 32, 32), 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == convs
    # the lottery-ticket CIFAR VGG: four max-pools (32 -> 2), then the average pool; conv biases
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.in_features == 512 and model.fc.out_features == 10


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_16"])
def test_cifar_batchnorm_scales_start_uniform_in_0_1(name):
    """open_lth's default batchnorm_init 'uniform' for its CIFAR networks: scales ~ U(0, 1)."""
    model = build_model(name, (3, 32, 32), 10, seed=0)
    scales = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    shifts = torch.cat([m.bias.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bool(((scales >= 0) & (scales < 1)).all()) and bool((shifts == 0).all())
    # U(0, 1) has mean 1/2 and standard deviation 1/sqrt(12); with n draws the sample mean is
    # within 5 standard errors of 1/2 except with probability < 1e-6
    n = scales.numel()
    assert abs(float(scales.mean()) - 0.5) < 5 / math.sqrt(12 * n)


def test_torchvision_models_are_the_real_ones():
    import torchvision

    ours = model_shapes("resnet50", (3, 224, 224), 7)
    ref = {k: tuple(v.shape) for k, v in torchvision.models.resnet50(num_classes=7).named_parameters()}
    assert ours == ref


@pytest.mark.parametrize(
    "name,shape",
    [("mlp_300_100", (1, 8, 8)), ("cifar_resnet_20", (1, 28, 28)), ("cifar_vgg_11", (1, 8, 8)),
     ("resnet18", (1, 32, 32))],
)
def test_other_channel_counts_and_sizes(name, shape):
    model = build_model(name, shape, 5, seed=3).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 5)


def test_image_model_rejects_flat_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        build_model("cifar_resnet_20", (64,), 10, seed=0)


@pytest.mark.parametrize("name", ["mlp_300_100", "cifar_resnet_20", "cifar_vgg_11", "resnet18"])
def test_seed_fixes_weights_bitwise_and_leaves_global_rng_alone(name):
    shape, _ = _shape(name)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = build_model(name, shape, 10, seed=7).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # moving the global RNG must not change what the seed builds
    b = build_model(name, shape, 10, seed=7).state_dict()
    c = build_model(name, shape, 10, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet9000", (3, 32, 32), 10, seed=0)
    msg = str(err.value)
    assert "resnet9000" in msg and ", ".join(sorted(MODELS)) in msg
    with pytest.raises(ValueError, match="cifar_vgg_19"):
        model_shapes("nope", (3, 32, 32), 10)


def test_model_shapes_match_real_build_and_allocate_nothing():
    for name in ["mlp_300_100", "cifar_resnet_56", "cifar_vgg_16", "resnet18"]:
        shape, _ = _shape(name)
        real = {k: tuple(v.shape) for k, v in build_model(name, shape, 10, seed=0).named_parameters()}
        assert model_shapes(name, shape, 10) == real
    assert all(p.is_meta for p in meta_model("resnet50", (3, 224, 224), 1000).parameters())
