"""Tests of the models: every registered model, the MBA-CNN layers, the MBA-CNN itself,
the registry, and export (ONNX, torch.compile)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ferkit.models import (
    CBAM,
    DSCCBAM,
    MBACNN,
    ChannelAttention,
    DepthwiseSeparableConv,
    SpatialAttention,
    create_model,
    list_models,
    model_options,
)
from ferkit.models.layers import ConvBNReLU

MODELS = list_models()
REFERENCE_KERAS_PARAMS = 3_772_253  # trainable parameters of the reference Keras MBA-CNN


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def calibrated(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics taken from one random batch.

    With fresh running statistics, the deep models' eval-mode logits barely depend on the
    input (PyTorch's default init shrinks the signal at every layer), which would make the
    eval-mode comparisons below vacuous.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of the batch seen
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        model.train()(torch.randn(4, 1, 48, 48, generator=generator))
    return model.eval()


def assert_input_dependent(logits: torch.Tensor) -> None:
    assert (logits[0] - logits[1]).abs().max() > 1e-2, "the logits do not depend on the input"


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 1, 48, 48)


# --- every registered model -------------------------------------------------------------


def test_registry_lists_all_models():
    assert set(MODELS) == {
        "mba_cnn",
        "mba_cnn_1branch",
        "mba_cnn_conv",
        "mba_cnn_no_cbam",
        "resnet18",
        "vgg_fer",
        "vulpe_cnn",
    }


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_num_classes(name, x):
    torch.manual_seed(0)
    model = calibrated(create_model(name))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert_input_dependent(out)
    with torch.no_grad():
        out8 = create_model(name, num_classes=8).eval()(x)
    assert out8.shape == (2, 8)


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients_on_all_parameters(name, x):
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches_contiguous(name, x):
    torch.manual_seed(0)
    model = calibrated(create_model(name))
    with torch.no_grad():
        expected = model(x)
        assert_input_dependent(expected)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_runs_under_bfloat16_autocast(name, x):
    torch.manual_seed(0)
    model = calibrated(create_model(name))
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16, "autocast did not take effect"
    assert got.shape == (2, 7)
    assert torch.isfinite(got).all()
    # bf16 keeps ~3 significant digits, and the rounding errors add up over ~20 layers.
    assert (got.float() - expected).norm() <= 0.15 * expected.norm()


# --- layers -------------------------------------------------------------------------------


def _set(param: torch.Tensor, values) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=param.dtype).reshape(param.shape))


def test_channel_attention_hand_computed():
    # Two channels, ratio 2 -> one hidden unit.
    ca = ChannelAttention(2, ratio=2)
    _set(ca.mlp[0].weight, [[1.0, -1.0]])
    _set(ca.mlp[0].bias, [-3.75])
    _set(ca.mlp[2].weight, [[0.5], [-0.25]])
    _set(ca.mlp[2].bias, [-3.0, 1.0])
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, -4.0]]]])
    # avg = (2.5, -1): hidden relu(2.5 + 1 - 3.75) = 0   -> MLP = (-3, 1)
    # max = (4, 0):    hidden relu(4 - 0 - 3.75) = 0.25 -> MLP = (0.125 - 3, -0.0625 + 1)
    # sum = (-5.875, 1.9375)
    weights = [1 / (1 + math.exp(5.875)), 1 / (1 + math.exp(-1.9375))]
    expected = x * torch.tensor(weights).reshape(1, 2, 1, 1)
    torch.testing.assert_close(ca.attention(x), torch.tensor(weights).reshape(1, 2, 1, 1))
    torch.testing.assert_close(ca(x), expected)


def test_channel_attention_matches_formula():
    torch.manual_seed(1)
    ca = ChannelAttention(16, ratio=4)
    x = torch.randn(3, 16, 5, 7)
    w1, b1 = ca.mlp[0].weight[:, :, 0, 0], ca.mlp[0].bias
    w2, b2 = ca.mlp[2].weight[:, :, 0, 0], ca.mlp[2].bias

    def mlp(v):
        return torch.relu(v @ w1.T + b1) @ w2.T + b2

    avg = x.sum(dim=(2, 3)) / (5 * 7)
    mx = x.flatten(2).max(dim=2).values
    expected = x * torch.sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(ca(x), expected)


def test_spatial_attention_hand_computed():
    sa = SpatialAttention(7)
    x = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[3.0, 2.0], [-4.0, 1.0]]]])
    # mean over channels [[2, 0], [-2, 2]], max over channels [[3, 2], [0, 3]]
    with torch.no_grad():
        sa.conv.weight.zero_()
        sa.conv.weight[0, 0, 3, 3] = 1.0  # centre tap on the mean map
        sa.conv.weight[0, 1, 3, 3] = -0.5  # centre tap on the max map
        sa.conv.bias.fill_(0.25)
        logits = torch.tensor([[0.75, -0.75], [-1.75, 0.75]])  # mean - max / 2 + 1/4
        torch.testing.assert_close(sa(x), x * torch.sigmoid(logits))

        # One tap to the right on the max map: out[i, j] = max[i, j + 1], zero padded.
        sa.conv.weight.zero_()
        sa.conv.weight[0, 1, 3, 4] = 1.0
        sa.conv.bias.zero_()
        logits = torch.tensor([[2.0, 0.0], [3.0, 0.0]])
        torch.testing.assert_close(sa.attention(x)[0, 0], torch.sigmoid(logits))


def test_spatial_attention_matches_formula():
    torch.manual_seed(2)
    sa = SpatialAttention(7)
    x = torch.randn(2, 3, 5, 6)
    pooled = torch.stack([x.sum(dim=1) / 3, x.max(dim=1).values], dim=1)
    padded = nn.functional.pad(pooled, (3, 3, 3, 3))
    w = sa.conv.weight.detach()
    logits = sa.conv.bias.detach().reshape(1, 1, 1).expand(2, 5, 6).clone()
    for c in range(2):
        for di in range(7):
            for dj in range(7):
                logits += w[0, c, di, dj] * padded[:, c, di : di + 5, dj : dj + 6]
    with torch.no_grad():
        torch.testing.assert_close(sa(x), x * torch.sigmoid(logits)[:, None])


def test_cbam_is_spatial_after_channel():
    torch.manual_seed(3)
    cbam = CBAM(8, ratio=4)
    ca, sa = ChannelAttention(8, ratio=4), SpatialAttention(7)
    ca.load_state_dict(cbam.channel.state_dict())
    sa.load_state_dict(cbam.spatial.state_dict())
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(cbam(x), sa(ca(x)))
        assert not torch.allclose(cbam(x), ca(sa(x)), atol=1e-4), "order not distinguishable"


@pytest.mark.parametrize(("c1", "c2", "k"), [(16, 32, 3), (8, 24, 5)])
def test_depthwise_separable_conv_parameter_count(c1, c2, k):
    m = DepthwiseSeparableConv(c1, c2, kernel_size=k)
    assert m.depthwise.bias is None and m.pointwise.bias is None
    assert m.depthwise.weight.numel() + m.pointwise.weight.numel() == k * k * c1 + c1 * c2
    assert n_params(m) == k * k * c1 + c1 * c2 + 2 * (c1 + c2)
    out = DepthwiseSeparableConv(c1, c2, stride=2, kernel_size=k)(torch.randn(2, c1, 10, 10))
    assert out.shape == (2, c2, 5, 5)


def test_dsccbam_returns_pooled_and_attended():
    torch.manual_seed(4)
    m = DSCCBAM(8, 16, cbam_ratio=4).eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        pooled, attended = m(x)
        assert pooled.shape == attended.shape == (2, 16, 5, 5)
        torch.testing.assert_close(pooled, nn.functional.max_pool2d(m.conv2(m.conv1(x)), 2))
        torch.testing.assert_close(attended, m.cbam(pooled))
        assert not torch.allclose(attended, pooled)


def test_dsccbam_ablation_options():
    plain = DSCCBAM(8, 16, attention=False).eval()
    with torch.no_grad():
        pooled, attended = plain(torch.randn(2, 8, 10, 10))
    assert torch.equal(pooled, attended)
    conv = DSCCBAM(8, 16, separable=False)
    assert isinstance(conv.conv1, ConvBNReLU)
    assert conv.conv1[0].weight.shape == (16, 8, 3, 3)


# --- MBA-CNN ------------------------------------------------------------------------------


def test_mba_cnn_parameter_count():
    count = n_params(MBACNN())
    assert count == 3_763_008
    assert abs(count - REFERENCE_KERAS_PARAMS) / REFERENCE_KERAS_PARAMS < 0.01


def test_mba_cnn_shapes_through_every_branch(x):
    model = MBACNN().eval()
    outputs = {}
    names = ["stem", "module1", "branch1", "module2", "branch2", "module3", "fuse"]
    for name in names:
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7)
    assert outputs["stem"].shape == (2, 64, 48, 48)
    for name, shape in [("module1", (128, 24, 24)), ("module2", (256, 12, 12))]:
        pooled, attended = outputs[name]
        assert pooled.shape == attended.shape == (2, *shape), name
    assert outputs["module3"][1].shape == (2, 512, 6, 6)
    assert outputs["branch1"].shape == (2, 512, 6, 6)
    assert outputs["branch2"].shape == (2, 512, 6, 6)
    assert outputs["fuse"].shape == (2, 1024, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), outputs["fuse"])


def test_mba_cnn_one_branch(x):
    model = MBACNN(branches=1).eval()
    # no branch layers: their names stay only so that torch.jit.script compiles forward
    assert not any(k.startswith(("branch1.", "branch2.")) for k in model.state_dict())
    assert isinstance(model.branch1, nn.Identity) and isinstance(model.branch2, nn.Identity)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    assert n_params(model) < n_params(MBACNN())


def test_mba_cnn_conv_ablation_is_larger():
    assert n_params(create_model("mba_cnn_conv")) > n_params(create_model("mba_cnn"))


@pytest.mark.parametrize("branches", [0, 2, 4])
def test_mba_cnn_rejects_other_branch_counts(branches):
    with pytest.raises(ValueError, match="branches"):
        MBACNN(branches=branches)
    with pytest.raises(ValueError, match="branches"):
        create_model("mba_cnn", branches=branches)


# --- baselines ----------------------------------------------------------------------------


def test_baseline_topologies():
    vgg = create_model("vgg_fer")
    linears = [m for m in vgg.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512 * 3 * 3, 4096),
        (4096, 4096),
        (4096, 7),
    ]
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 8
    resnet = create_model("resnet18")
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    assert [len(stage) for stage in resnet.stages] == [2, 2, 2, 2]
    with torch.no_grad():
        assert resnet.stages(resnet.stem(torch.randn(1, 1, 48, 48))).shape == (1, 512, 6, 6)
    vulpe = create_model("vulpe_cnn")
    widths = [m.out_channels for m in vulpe.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [256, 512, 384, 192, 384]


# --- registry -----------------------------------------------------------------------------


def test_create_model_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown model") as info:
        create_model("no_such_model")
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mba_cnn", "resnet18", "vgg_fer", "vulpe_cnn"])
def test_create_model_bad_option(name):
    with pytest.raises(ValueError, match="has no option 'no_such_option'; its options: ") as info:
        create_model(name, no_such_option=1)
    for option in model_options(name):
        assert option in str(info.value)  # the message lists what it takes


def test_create_model_bad_values_name_the_option():
    assert model_options("mba_cnn_1branch")["branches"] == 1  # the registered defaults
    assert {"dropout", "branches", "attention"} <= set(model_options("mba_cnn"))
    with pytest.raises(ValueError, match=r"'mba_cnn': option dropout must be a fraction in \[0, 1\), not 2"):
        create_model("mba_cnn", dropout=2)
    with pytest.raises(ValueError, match="branches=5: branches must be 1 or 3"):
        create_model("mba_cnn", branches=5)
    for bad in (0, -1, "7", 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be a whole number >= 1"):
            create_model("mba_cnn", num_classes=bad)
    assert create_model("resnet18", num_classes=np.int64(3)).fc.out_features == 3


@pytest.mark.parametrize("name", [m for m in MODELS if not m.startswith("test_")])
def test_models_refuse_input_they_cannot_take_with_a_clear_error(name):
    # (ferkit's own models: other test modules register tiny ones of their own)
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
        for shape in ((2, 48, 48), (2, 3, 48, 48), (48, 48)):
            with pytest.raises(ValueError, match=r"expected a batch of faces N x 1 x H x W"):
                model(torch.zeros(shape))
        if name in ("mba_cnn", "mba_cnn_conv", "mba_cnn_no_cbam", "vgg_fer", "vulpe_cnn"):
            with pytest.raises(ValueError, match="47 x 47"):  # a size their layers do not fit
                model(torch.zeros(1, 1, 47, 47))
        if name == "mba_cnn_1branch":  # one branch: any side from 8 pixels
            assert model(torch.zeros(1, 1, 47, 50)).shape == (1, 7)
            with pytest.raises(ValueError, match="at least 8 pixels"):
                model(torch.zeros(1, 1, 4, 4))


def test_create_model_options_override_defaults():
    assert create_model("mba_cnn_no_cbam").module1.cbam.__class__ is nn.Identity
    assert isinstance(create_model("mba_cnn_no_cbam", attention=True).module1.cbam, CBAM)


# --- export -------------------------------------------------------------------------------


def test_onnx_export_matches_eager(x, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = calibrated(create_model("mba_cnn"))
    path = tmp_path / "mba_cnn.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert_input_dependent(expected)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_matches_eager(x):
    torch.manual_seed(0)
    model = calibrated(create_model("mba_cnn"))
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    assert got.shape == (2, 7)
    assert_input_dependent(expected)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mba_cnn", "mba_cnn_1branch", "mba_cnn_conv", "mba_cnn_no_cbam",
                                  "resnet18", "vgg_fer", "vulpe_cnn"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch >= 2.10 deprecates jit.script
def test_models_can_be_scripted(name):
    """torch.jit.script compiles every model (the one-branch ablation once lacked branch1)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


def test_models_lists_the_shipped_weights_with_their_test_scores(capsys):
    """`ferkit models --weights`: each shipped checkpoint with its classes and the test
    scores its metadata carries (the names `--model` takes); the plain listing names them."""
    from ferkit.cli import main
    from ferkit.weights import DEFAULT_MODEL, available_weights, load_model

    assert main(["models", "--weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == available_weights() and len(rows) >= 2
    assert [r["name"] for r in rows if r["default"]] == [DEFAULT_MODEL]
    for row in rows:
        _, meta = load_model(row["name"])
        assert row["class_names"] == list(meta["class_names"]) and row["model"] == meta["model"]
        assert row["test_accuracy"] == {m: meta["test_metrics"][m]["accuracy"]
                                        for m in ("none", "flip", "ten-crop")}
    assert main(["models", "--weights"]) == 0
    text = capsys.readouterr().out.splitlines()
    fer = next(line for line in text if line.startswith(DEFAULT_MODEL))
    first = next(r for r in rows if r["default"])
    assert f"{100 * first['test_accuracy']['none']:.2f}%" in fer and "(the default)" in fer
    assert "7 (FER2013)" in fer and fer.rstrip().endswith("on PrivateTest  (the default)")
    plus = next(line for line in text if line.startswith("mba_cnn-ferplus"))
    assert "8 (FER+)" in plus and "on FERTest" in plus
    assert main(["models"]) == 0
    assert f"shipped weights: {DEFAULT_MODEL} (the default)" in capsys.readouterr().out
