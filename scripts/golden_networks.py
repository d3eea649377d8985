"""Check the ported networks against their authors' code, and write the golden numbers.

    python scripts/golden_networks.py --originals /tmp/originals [--keras-python PY] [--write]

needs a local copy of the originals (never kept in this repository), laid out as

    /tmp/originals/multiscore/network.py                   o-messai/Multi-score-SIQA
    /tmp/originals/padnet/model/{__init__,model_c1,GDN,functions}.py
                                                           weizhou-geek/PAD-Net-PyTorch
    /tmp/originals/stereoqanet/test_siqa_model_LIVE1.py    weizhou-geek/Stereoscopic-Image-
                                                           Quality-Assessment-Network

e.g. `git -C MIRROR show COMMIT:network.py > /tmp/originals/multiscore/network.py` at the
commits of docs/models.md. StereoQA-Net is a Keras model: `--keras-python` is an interpreter
with Keras 3 and TensorFlow (`python -m venv /tmp/kerasvenv; /tmp/kerasvenv/bin/pip install
keras tensorflow-cpu`); its model definition is read from the original file (the lines up to
`model_all.summary()`) with the two Keras-1 calls renamed (`merge(mode='concat')` ->
`concatenate`, `Model(input=, output=)` -> `Model(inputs=, outputs=)`) and run there.

For each network: the port is built with seeded weights (`seeded_model`), the same weights
are loaded into the original, and both run in evaluation mode on seeded inputs; the forward
outputs, the input gradients and every parameter gradient of sum(outputs * seeded weights)
are compared (max abs difference printed). Multi-score is also compared in train mode (batch
statistics and dropout masks from the same random state). `--write` stores the port's
outputs and gradient summaries in tests/data/golden_networks.json, which
tests/test_models_faithful.py checks without the originals.
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT / "tests" / "data" / "golden_networks.json"

# network -> (weight seed, input seed, batch, crop size)
CASES = {"multiscore": (11, 12, 6, 32), "stereoqanet": (21, 22, 6, 32), "padnet": (31, 32, 1, 256)}


def seeded_model(name, seed):
    """The port with seeded weights: torch's initialisation from `seed`, then (so that
    evaluation mode is not an identity there) BatchNorm statistics and affine parameters,
    and StereoQA-Net's standardisation, drawn from a generator seeded by `seed`."""
    from siqa.models import create_model

    torch.manual_seed(seed)
    model = create_model(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        if name == "stereoqanet":
            shape = (3, 32, 32)
            model.set_standardisation(0.4 + 0.1 * torch.rand(shape, generator=g),
                                      0.2 + 0.1 * torch.rand(shape, generator=g),
                                      0.4 + 0.1 * torch.rand(shape, generator=g),
                                      0.2 + 0.1 * torch.rand(shape, generator=g))
        if name == "multiscore":  # positive score biases: the ReLU outputs are not all 0
            for fc3 in (model.stream_left.fc3, model.stream_right.fc3, model.stream_stereo.fc3,
                        model.head.fc3):
                fc3.bias.fill_(0.5)
    return model.eval()


def seeded_inputs(seed, batch, size):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(batch, 3, size, size, generator=g)
    right = (left + 0.2 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1)
    return left, right


def run_port(model, left, right, seed):
    """Outputs (stacked, (n_out, B)), input grads and named param grads of
    sum(outputs * w), w seeded by `seed`."""
    left = left.clone().requires_grad_(True)
    right = right.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = torch.stack(model(left, right))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1000))
    (out * w).sum().backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    return out.detach(), left.grad.detach(), right.grad.detach(), grads, w


def summary(out, gl, gr, grads):
    """The golden numbers: every output, and sums of the gradients."""
    return {"outputs": out.double().tolist(),
            "grad_left_sum": float(gl.double().sum()), "grad_left_abs": float(gl.double().abs().sum()),
            "grad_right_abs": float(gr.double().abs().sum()),
            "grad_params_abs": float(sum(g.double().abs().sum() for g in grads.values()))}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def _report(name, pairs):
    worst = {k: max(_max_diff(a, b) for a, b in v) for k, v in pairs.items()}
    print(f"{name}: " + ", ".join(f"max |port - original| {k} {v:.3g}" for k, v in worst.items()))
    return worst


# ---- Multi-score ---------------------------------------------------------------------------

def multiscore_names(port_key):
    """The original's name of a port parameter or buffer."""
    head, rest = port_key.split(".", 1)
    layer, kind = rest.rsplit(".", 1)
    if head == "head":
        return f"{layer}_1.{kind}"
    side = {"stream_left": "L", "stream_right": "R", "stream_stereo": "S"}[head]
    if layer.startswith("conv"):
        return f"{layer}{side}.{kind}"
    return f"{layer}_{side}.{kind}"


def check_multiscore(originals):
    net = _load(originals / "multiscore" / "network.py", "original_multiscore")
    wseed, iseed, batch, size = CASES["multiscore"]
    port = seeded_model("multiscore", wseed)
    orig = net.My_Net()
    orig.load_state_dict({multiscore_names(k): v for k, v in port.state_dict().items()})
    left, right = seeded_inputs(iseed, batch, size)
    p_out, p_gl, p_gr, p_g, w = run_port(port, left, right, iseed)

    def run_orig(model, training):
        l, r = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        out = torch.stack([o.squeeze(-1) for o in model(l, r)])
        (out * w).sum().backward()
        grads = {k: orig.get_parameter(multiscore_names(k)).grad for k, _ in port.named_parameters()}
        return out.detach(), l.grad, r.grad, grads

    # evaluation: the original's F.dropout(training=True) switched off (this project's rule)
    real_f = net.F
    net.F = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    net.F.dropout = lambda x, p=0.5, training=True, inplace=False: x
    o_out, o_gl, o_gr, o_g = run_orig(orig.eval(), False)
    net.F = real_f
    worst = _report("multiscore eval", {"outputs": [(p_out, o_out)],
                                        "input grads": [(p_gl, o_gl), (p_gr, o_gr)],
                                        "param grads": [(p_g[k], o_g[k]) for k in p_g]})
    # training mode: batch statistics, dropout masks from the same random state
    torch.manual_seed(5)
    t_out = torch.stack(port.train()(left, right)).detach()
    torch.manual_seed(5)
    t_orig = torch.stack([o.squeeze(-1) for o in orig.train()(left, right)]).detach()
    port.eval()
    worst["train outputs"] = _max_diff(t_out, t_orig)
    print(f"multiscore train: max |port - original| outputs {worst['train outputs']:.3g}")
    return summary(p_out, p_gl, p_gr, p_g), worst


# ---- PAD-Net -------------------------------------------------------------------------------

def padnet_names(port_key):
    parts = port_key.split(".")
    if parts[0] == "autoencoder":
        if parts[1] == "prior":
            return f"prior.conv5b.{parts[2]}"
        seq = "g_analysis" if parts[1] == "analysis" else "g_synthesis"
        i = int(parts[2])
        if i % 2 == 0:
            layer = (f"conv{i // 2 + 1}" if seq == "g_analysis" else f"Unconv{i // 2 + 1}")
        else:
            layer = (f"GDN{i // 2 + 1}" if seq == "g_analysis" else f"IGDN{i // 2 + 1}")
        return f"{seq}.{layer}.{_gdn(parts[3])}"
    if parts[0] == "fuse":
        return f"percept_gen.{'conv6' if parts[1] == '0' else 'GDN6'}.{_gdn(parts[2])}"
    if parts[0] == "trunk":
        return "resnet." + ".".join(parts[1:])
    return "fc.fc13." + parts[1]


def _gdn(kind):
    return {"gamma_raw": "_gamma", "beta_raw": "_beta"}.get(kind, kind)


def check_padnet(originals):
    sys.path.insert(0, str(originals / "padnet"))
    from model.model_c1 import ImgComNet
    from torchvision.models import resnet18

    wseed, iseed, batch, size = CASES["padnet"]
    port = seeded_model("padnet", wseed)
    orig = ImgComNet(N=128, M=192, model=resnet18(weights=None))
    state = {padnet_names(k): v for k, v in port.state_dict().items()}
    orig.load_state_dict(state)
    orig.eval()
    left, right = seeded_inputs(iseed, batch, size)
    p_out, p_gl, p_gr, p_g, w = run_port(port, left, right, iseed)
    l, r = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
    score, _ = orig(l, r, torch.zeros(batch, 1), requires_loss=False)
    o_out = score.squeeze(-1)[None]
    (o_out * w).sum().backward()
    o_g = {k: orig.get_parameter(padnet_names(k)).grad for k in p_g}
    worst = _report("padnet eval", {"outputs": [(p_out, o_out.detach())],
                                    "input grads": [(p_gl, l.grad), (p_gr, r.grad)],
                                    "param grads": [(p_g[k], o_g[k]) for k in p_g]})
    return summary(p_out, p_gl, p_gr, p_g), worst


# ---- StereoQA-Net (Keras) ------------------------------------------------------------------

KERAS_RUNNER = r'''
import json, re, sys
import numpy as np
import tensorflow as tf
import keras
source, data, out = sys.argv[1:4]
text = open(source).read().split("model_all.summary()")[0]
text = "\n".join(l for l in text.splitlines()
                 if not l.startswith(("from keras.preprocessing", "from keras.optimizers",
                                      "from keras.layers import", "import scipy", "from scipy",
                                      "from sklearn", "from math")))
text = "from keras.layers import Input, Conv2D, ELU, MaxPooling2D, Flatten, Dense, Dropout\n" + text
text = re.sub(r"keras\.layers\.merge\((\[.*?\]), mode='concat'\)", r"keras.layers.concatenate(\1)", text)
text = text.replace("Model(input=", "Model(inputs=").replace("output=predictions", "outputs=predictions")
scope = {}
exec(compile(text, source, "exec"), scope)
model = scope["model_all"]
arrays = np.load(data)
dense = sorted((l for l in model.layers if isinstance(l, keras.layers.Dense)),
               key=lambda l: int(l.name.split("_")[-1]) if "_" in l.name else 0)
for l in model.layers:
    if isinstance(l, keras.layers.Conv2D):
        l.set_weights([arrays[l.name + "/kernel"], arrays[l.name + "/bias"]])
for i, l in enumerate(dense):
    l.set_weights([arrays[f"dense{i}/kernel"], arrays[f"dense{i}/bias"]])
print("keras", keras.__version__, "tensorflow", tf.__version__, "parameters", model.count_params())
xl, xr = tf.constant(arrays["left"]), tf.constant(arrays["right"])
with tf.GradientTape(persistent=True) as tape:
    tape.watch([xl, xr])
    pred = model([xl, xr], training=False)
    loss = tf.reduce_sum(pred[:, 0] * arrays["w"][0])
g = tape.gradient(loss, [xl, xr] + [v for l in model.layers for v in l.trainable_weights])
names = [f"{l.name}/{'kernel' if v.shape.rank > 1 else 'bias'}" for l in model.layers
         for v in l.trainable_weights]
dense_index = {l.name: i for i, l in enumerate(dense)}
names = [f"dense{dense_index[n.split('/')[0]]}/{n.split('/')[1]}" if n.split('/')[0] in dense_index
         else n for n in names]
np.savez(out, pred=pred.numpy()[:, 0], grad_left=g[0].numpy(), grad_right=g[1].numpy(),
         params=np.array(model.count_params()),
         **{"grad:" + n: v.numpy() for n, v in zip(names, g[2:])})
'''


def stereoqanet_layers(port):
    """Keras conv layer name -> port conv, and the port's Dense layers in Keras creation order."""
    convs = {}
    for side in ("left", "right"):
        for i in range(1, 6):
            convs[f"conv{i}_{side}"] = getattr(getattr(port, side), f"conv{i}")
    for i in range(3, 6):
        convs[f"conv{i}_fusion1"] = getattr(port.fusion1, f"conv{i}")
    dense = [port.left.head.fc6, port.left.head.fc7, port.right.head.fc6, port.right.head.fc7,
             port.fusion1.head.fc6, port.fusion1.head.fc7, port.fusion2.head.fc6,
             port.fusion2.head.fc7, port.fc8, port.fc9]
    return convs, dense


def _chw_to_hwc_rows(in_features):
    """Row permutation of a Keras Dense kernel after Flatten of (H, W, C): Keras row
    h*W*C + w*C + c is PyTorch input c*H*W + h*W + w (4x4 maps: C = in_features / 16)."""
    c = in_features // 16
    return np.arange(in_features).reshape(c, 4, 4).transpose(1, 2, 0).reshape(-1)


def check_stereoqanet(originals, keras_python):
    wseed, iseed, batch, size = CASES["stereoqanet"]
    port = seeded_model("stereoqanet", wseed)
    left, right = seeded_inputs(iseed, batch, size)
    p_out, p_gl, p_gr, p_g, w = run_port(port, left, right, iseed)
    convs, dense = stereoqanet_layers(port)
    arrays = {}
    for name, conv in convs.items():
        arrays[name + "/kernel"] = conv.weight.detach().permute(2, 3, 1, 0).numpy()
        arrays[name + "/bias"] = conv.bias.detach().numpy()
    flat = {0, 2, 4, 6}  # fc6 of each stream: after Flatten
    for i, fc in enumerate(dense):
        kernel = fc.weight.detach().numpy().T
        if i in flat:
            kernel = kernel[_chw_to_hwc_rows(kernel.shape[0])]
        arrays[f"dense{i}/kernel"] = kernel
        arrays[f"dense{i}/bias"] = fc.bias.detach().numpy()
    # the original's preprocessing, in NumPy: /255 happened before; standardise per pixel
    std_l = ((left - port.left_mean) / port.left_std).permute(0, 2, 3, 1).numpy()
    std_r = ((right - port.right_mean) / port.right_std).permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", left=std_l, right=std_r, w=w.numpy(), **arrays)
        (Path(tmp) / "run.py").write_text(KERAS_RUNNER)
        done = subprocess.run([keras_python, str(Path(tmp) / "run.py"),
                               str(originals / "stereoqanet" / "test_siqa_model_LIVE1.py"),
                               str(Path(tmp) / "in.npz"), str(Path(tmp) / "out.npz")],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        print([l for l in done.stdout.splitlines() if l.startswith("keras")][-1])
        res = dict(np.load(Path(tmp) / "out.npz"))
    # input gradients: Keras's are w.r.t. the standardised NHWC input; chain through / std
    k_gl = torch.from_numpy(res["grad_left"]).permute(0, 3, 1, 2) / port.left_std
    k_gr = torch.from_numpy(res["grad_right"]).permute(0, 3, 1, 2) / port.right_std
    pairs = []
    for name, conv in convs.items():
        pairs.append((conv.weight.grad, torch.from_numpy(res[f"grad:{name}/kernel"]).permute(3, 2, 0, 1)))
        pairs.append((conv.bias.grad, torch.from_numpy(res[f"grad:{name}/bias"])))
    for i, fc in enumerate(dense):
        kernel = res[f"grad:dense{i}/kernel"]
        if i in flat:
            kernel = kernel[np.argsort(_chw_to_hwc_rows(kernel.shape[0]))]
        pairs.append((fc.weight.grad, torch.from_numpy(kernel).T))
        pairs.append((fc.bias.grad, torch.from_numpy(res[f"grad:dense{i}/bias"])))
    assert int(res["params"]) == 8_821_313, int(res["params"])
    worst = _report("stereoqanet eval", {"outputs": [(p_out[0], torch.from_numpy(res["pred"]))],
                                         "input grads": [(p_gl, k_gl), (p_gr, k_gr)],
                                         "param grads": pairs})
    worst["keras parameters"] = int(res["params"])
    return summary(p_out, p_gl, p_gr, p_g), worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=Path, required=True)
    parser.add_argument("--keras-python", default="/tmp/kerasvenv/bin/python")
    parser.add_argument("--only", nargs="*", default=list(CASES))
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    checks = {"multiscore": lambda: check_multiscore(args.originals),
              "padnet": lambda: check_padnet(args.originals),
              "stereoqanet": lambda: check_stereoqanet(args.originals, args.keras_python)}
    for name in args.only:
        numbers, worst = checks[name]()
        wseed, iseed, batch, size = CASES[name]
        golden[name] = {"weight_seed": wseed, "input_seed": iseed, "batch": batch, "size": size,
                        "max_abs_diff_vs_original": worst, **numbers}
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
