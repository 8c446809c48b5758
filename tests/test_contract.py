"""One contract on every backend (issue #21): the same model gets the same input names,
output names and output structure on every device, and the same answers as the
framework called directly. Models nobody here would write for hal: a transformers text
classifier with int64 ids and a mask, a detection-style head returning a dict and a
nested tuple, an ONNX file with its own names."""

from __future__ import annotations

import numpy as np
import pytest

import hal

torch = pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")


def _runs(backend: str) -> bool:
    return any(b.name == backend and b.missing_runtime is None and not b.error for b in hal.backends())


FLOAT_TARGETS = [t for t, b in (("cpu", "reference"), ("openvino:CPU", "openvino"), ("tpu:xla-cpu", "tpu"))
                 if _runs(b)]


class Head(torch.nn.Module):
    """A detection-style head: a dict of outputs, one of them a nested tuple."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.cls = torch.nn.Linear(4, 5)

    def forward(self, pixels, scale):
        f = torch.relu(self.body(pixels)).mean((2, 3))
        return {"boxes": f * scale, "extra": (self.cls(f), f.sum(-1, keepdim=True))}


def test_dict_and_nested_outputs_are_the_same_everywhere():
    m = Head().eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    s = np.full((1, 4), 2.0, np.float32)
    want = m(torch.from_numpy(x), torch.from_numpy(s))
    for t in FLOAT_TARGETS:
        exe = hal.compile(m, t, example_input=(x, s), cache=False)
        assert [i.name for i in exe.info.inputs] == ["pixels", "scale"], t
        assert [o.name for o in exe.info.outputs] == ["boxes", "extra.0", "extra.1"], t
        got = exe(x, s)
        assert set(got) == {"boxes", "extra"} and isinstance(got["extra"], tuple), t
        np.testing.assert_allclose(got["boxes"], want["boxes"].detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["extra"][0], want["extra"][0].detach().numpy(), rtol=1e-4, atol=1e-5)
        by_name = exe(pixels=x, scale=s)
        np.testing.assert_array_equal(by_name["boxes"], got["boxes"])
        outs = exe.run({"scale": s, "pixels": x})
        assert outs.names == ["boxes", "extra.0", "extra.1"]
        np.testing.assert_array_equal(outs["extra.1"], got["extra"][1])
        with pytest.raises(hal.InvalidInputError, match="unknown"):
            exe(pixels=x, scales=s)
    if _runs("edgetpu"):  # the Edge TPU's int8: a dict of two linear heads
        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

            def forward(self, feats):
                return {"logits": self.a(feats), "offsets": self.b(feats)}

        two = Two().eval()
        f = np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)
        exe = hal.compile(two, "edgetpu:emulated", precision="int8", example_input=(f,),
                          calibration=[(f * k,) for k in (0.5, 1.0, -1.0)], cache=False)
        assert [i.name for i in exe.info.inputs] == ["feats"]
        assert [o.name for o in exe.info.outputs] == ["logits", "offsets"]
        got = exe(feats=f)
        assert set(got) == {"logits", "offsets"} and got["offsets"].shape == (1, 2)


def test_structure_survives_save_and_load(tmp_path):
    m = Head().eval()
    x = np.ones((1, 3, 8, 8), np.float32)
    s = np.ones((1, 4), np.float32)
    exe = hal.compile(m, "cpu", example_input=(x, s), cache=False)
    back = hal.load(exe.save(tmp_path / "h.hal"))
    assert back.info.output_tree == exe.info.output_tree
    a, b = exe(x, s), back(x, s)
    np.testing.assert_array_equal(a["extra"][0], b["extra"][0])


def test_a_text_classifier_has_its_own_names_on_every_device():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(cfg).eval()
    ids = np.random.default_rng(1).integers(0, 64, (1, 12)).astype(np.int64)
    mask = np.ones((1, 12), np.int64)
    mask[0, 9:] = 0
    with torch.inference_mode():
        want = m(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    for t in FLOAT_TARGETS:
        exe = hal.compile(m, t, example_input=(ids, mask), cache=False)
        assert [i.name for i in exe.info.inputs] == ["input_ids", "attention_mask"], t
        assert [o.name for o in exe.info.outputs] == ["logits"], t
        got = exe(input_ids=ids, attention_mask=mask)
        assert list(got) == ["logits"], t
        np.testing.assert_allclose(got["logits"], want, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(exe.run({"input_ids": ids, "attention_mask": mask})["logits"], want,
                                   rtol=1e-3, atol=1e-4)


def test_an_onnx_file_keeps_its_names(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["pixel_values", "w"], ["mm"]),
         helper.make_node("Softmax", ["mm"], ["probs"], axis=-1),
         helper.make_node("ArgMax", ["mm"], ["label"], axis=-1, keepdims=0)], "g",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])], [w])
    path = tmp_path / "named.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    mm = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    for t in [t for t in ("cpu", "openvino:CPU") if t in FLOAT_TARGETS]:
        exe = hal.compile(path, t, cache=False)
        assert [i.name for i in exe.info.inputs] == ["pixel_values"], t
        assert [o.name for o in exe.info.outputs] == ["probs", "label"], t
        out = exe.run({"pixel_values": x})
        np.testing.assert_array_equal(out["label"], mm.argmax(-1))
        probs, label = exe(x)
        np.testing.assert_allclose(probs, np.exp(mm) / np.exp(mm).sum(-1, keepdims=True), rtol=1e-5)


class Pool(torch.nn.Module):
    """Token embeddings averaged over a sequence of any length."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = torch.nn.Embedding(50, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids).mean(1))


def test_backends_keep_free_what_they_declare():
    """Backend.dynamic_dims / dynamic_batch are held to what each backend builds: the
    batch and a sequence Dim stay free on a backend that declares dynamic_dims, the batch
    alone on one that declares dynamic_batch; a dimension fixed anyway gets a note naming
    the installed backends that keep it free."""
    m = Pool().eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
    ids = torch.randint(0, 50, (2, 5))
    ep = torch.export.export(m, (ids,), dynamic_shapes=({0: batch, 1: seq},))
    from hal.plugin import registry, resolve

    keep_seq = [b.name for b in registry().backends.values() if b.keeps_free(1)]
    for t in FLOAT_TARGETS:
        b = resolve(t)[0]
        exe = hal.compile(ep, t, example_input=(ids.numpy(),), cache=False)
        shape = exe.info.inputs[0].shape
        assert (shape[0] is None) == b.keeps_free(0) and (shape[1] is None) == b.keeps_free(1), \
            (t, shape)
        if not b.keeps_free(1):
            assert any(f"keeps it free ({', '.join(keep_seq)})" in n for n in exe.info.notes), t
            continue
        for n in (3, 9):
            x = np.random.default_rng(n).integers(0, 50, (3, n))
            with torch.no_grad():
                want = m(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(exe(x), want, rtol=1e-4, atol=1e-5)
