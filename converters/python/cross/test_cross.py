"""Cross-language checks: files written by the Swift `lidb` are read by this package with identical
tensors and metadata, and files written by this package are read by `lidb`.

    LIDB_BIN=path/to/lidb python -m unittest discover -s converters/python/cross

The Swift side is driven through its command line (`convert`, `subject init|export`, `merge`,
`inspect --json`, `verify`, `export`); the reference data are the tiny SD 1 pipeline written by
diffusers (Tests/BaseTests/Fixtures/sd1) and the LoRA written by peft (Tests/SubjectTests/Fixtures).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

from lidb import read  # noqa: E402
from lidb.base import read_base, write_base  # noqa: E402
from lidb.safetensors_io import read_safetensors  # noqa: E402
from lidb.hypernetwork import read_hypernetwork, write_hypernetwork  # noqa: E402
from lidb.subject import LiDBTerm, LoRATerm, Subject, SubjectLayer, read_subject, write_subject  # noqa: E402

PIPE = os.path.join(ROOT, "Tests", "BaseTests", "Fixtures", "sd1", "diffusers-safetensors")
SAMPLES = os.path.join(ROOT, "samples")
LORA = os.path.join(ROOT, "Tests", "SubjectTests", "Fixtures", "lora", "peft.safetensors")
FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
         "text_encoder": "model.safetensors"}


def lidb(*args, check=True):
    binary = os.environ.get("LIDB_BIN")
    if not binary:
        raise unittest.SkipTest("LIDB_BIN is not set")
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"lidb {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def source_weights():
    """The fixture pipeline's tensors under base names (spec/base.md §1), as diffusers saved them."""
    out = {}
    for comp, fname in FILES.items():
        tensors, _ = read_safetensors(os.path.join(PIPE, comp, fname))
        for k, v in tensors.items():
            if comp == "text_encoder" and not k.startswith("text_model."):
                k = "text_model." + k
            out[f"{comp}.{k}"] = v
    return out


def configs():
    out = {}
    for comp in FILES:
        with open(os.path.join(PIPE, comp, "config.json")) as f:
            out[comp] = json.load(f)
    with open(os.path.join(PIPE, "scheduler", "scheduler_config.json")) as f:
        out["scheduler"] = json.load(f)
    return out


def tokenizer_files():
    folder = os.path.join(PIPE, "tokenizer")
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def swift_metadata(path):
    return json.loads(lidb("inspect", "--json", path).stdout)["metadata"]


class CrossTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.base = os.path.join(cls.dir, "swift-base.lidb")
        lidb("convert", PIPE, "-o", cls.base)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    # -- base files
    def test_swift_base_read_by_python(self):
        src = source_weights()
        with read_base(self.base) as b:
            self.assertEqual(b.architecture, "sd1")
            got = {}
            for comp in FILES:
                for k, v in b.state_dict(comp).items():
                    got[f"{comp}.{k}"] = v
            self.assertEqual(set(got), set(src))
            for k, v in src.items():
                self.assertEqual(got[k].dtype, v.dtype, k)
                self.assertTrue(np.array_equal(got[k], v), k)
            # fingerprints recomputed here, independently of Swift, equal the recorded ones
            b.check_fingerprints()
            for comp, cfg in configs().items():
                for key, value in cfg.items():
                    if not key.startswith("_") and key != "prediction_type":
                        self.assertEqual(b.config(comp).get(key), value, f"{comp}.{key}")
            self.assertEqual(b.tokenizer_files(), tokenizer_files())
            self.assertEqual(b.metadata, swift_metadata(self.base))

    def test_python_base_read_by_swift(self):
        src = source_weights()
        comps = {c: {k[len(c) + 1:]: v for k, v in src.items() if k.startswith(c + ".")} for c in FILES}
        out = self.path("python-base.lidb")
        fp = write_base(out, comps, configs(), "sd1", tokenizer=tokenizer_files(), source={"format": "python"})
        lidb("verify", out)
        with read_base(self.base) as swift_written:
            self.assertEqual(fp, swift_written.metadata["fingerprints"])  # two implementations agree
        with read(out) as c:
            self.assertEqual(swift_metadata(out), c.metadata)
        folder = self.path("exported")
        lidb("export", out, "--format", "diffusers", "-o", folder)
        for comp, fname in FILES.items():
            tensors, _ = read_safetensors(os.path.join(folder, comp, fname))
            want = comps[comp]
            names = {k if comp != "text_encoder" or k.startswith("text_model.") else "text_model." + k for k in tensors}
            self.assertEqual(names, {k if comp != "text_encoder" or k.startswith("text_model.") else "text_model." + k
                                     for k in want})
            for k, v in tensors.items():
                w = want.get(k, want.get("text_model." + k, want.get(k.replace("text_model.", "", 1))))
                self.assertTrue(np.array_equal(v, w), f"{comp}.{k}")
        # a subject made by Swift for the Swift-written base applies to the Python-written one
        s = self.path("s-for-python-base.lidb")
        lidb("subject", "init", "--base", self.base, "--seed", "3", "--rank", "1", "--down-dim", "4", "--up-dim", "4",
             "--strict", "-o", s)
        lidb("merge", out, s, "-o", self.path("python-base-merged.lidb"))

    def test_python_base_damage_is_caught_by_swift(self):
        out = self.path("python-base-damaged.lidb")
        src = source_weights()
        comps = {c: {k[len(c) + 1:]: v for k, v in src.items() if k.startswith(c + ".")} for c in FILES}
        write_base(out, comps, configs(), "sd1")
        with open(out, "rb") as f:
            data = bytearray(f.read())
        data[-3] ^= 0x10
        with open(out, "wb") as f:
            f.write(data)
        p = lidb("verify", out, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)

    # -- subject files
    def check_merge(self, subject_path, merged_path, base_path=None):
        """Swift's merged weights minus the original equal ΔW computed here (independent bases)."""
        s = read_subject(subject_path)
        with read_base(base_path or self.base) as b, read_base(merged_path) as m:
            m.check_fingerprints()
            worst = 0.0
            for l in s.layers:
                comp, rest = l.name.split(".", 1)
                w0 = b.state_dict(comp)[rest + ".weight"].astype(np.float64)
                w1 = m.state_dict(comp)[rest + ".weight"].astype(np.float64)
                d = s.delta(l)
                # f32 storage: one rounding of W + ΔW plus f32 products; relative to |W| + |ΔW|
                err = np.abs(w1 - w0 - d) / (np.abs(w0) + np.abs(d) + 1e-30)
                worst = max(worst, float(err.max()))
            self.assertLess(worst, 1e-5)
        return s

    def test_swift_subjects_read_by_python(self):
        for dtype in ("f32", "f16", "bf16", "q8"):
            with self.subTest(dtype=dtype):
                sp = self.path(f"swift-{dtype}.lidb")
                lidb("subject", "init", "--base", self.base, "--seed", "11", "--rank", "2", "--down-dim", "8", "--up-dim", "6",
                     "--dtype", dtype, "--name", "cross", "--trigger", "sks", "-o", sp)
                s = read_subject(sp)
                self.assertEqual(s.metadata, swift_metadata(sp))
                self.assertEqual(s.seed, 11)
                self.assertEqual(s.trained_parameters, s.metadata["trained_parameters"])
                merged = self.path(f"swift-{dtype}-merged.lidb")
                lidb("merge", self.base, sp, "-o", merged)
                self.check_merge(sp, merged)
                # the record of the merge names the delta as computed here (spec/subject.md)
                with read(merged) as m:
                    self.assertEqual(m.metadata["merged"][-1]["delta_fingerprint"], s.delta_fingerprint)
                # the PEFT export's factors equal the ones computed here
                peft = self.path(f"swift-{dtype}-peft.safetensors")
                lidb("subject", "export", sp, "--format", "peft", "-o", peft)
                got, _ = read_safetensors(peft)
                mine = {k.replace("text_encoder.", "text_encoder.text_model.", 1) if k.startswith("text_encoder.") else k: v
                        for k, v in s.peft_state_dict().items()}
                self.assertEqual(set(got), set(mine))
                for k, v in mine.items():
                    scale = np.abs(v).max() + 1e-30
                    self.assertLess(float(np.abs(got[k] - v).max() / scale), 1e-5, k)

    def test_python_subjects_read_by_swift(self):
        with read_base(self.base) as b:
            shapes = {}
            for comp in ("unet", "text_encoder"):
                for k, v in b.state_dict(comp).items():
                    shapes[f"{comp}.{k}"] = v.shape
        # layers in the base's tensor order (spec/subject.md §2; Swift refuses another order)
        names = [n[:-len(".weight")] for n in shapes if n.endswith((".to_q.weight", ".to_v.weight", ".fc1.weight"))]
        rng = np.random.default_rng(5)
        for dtype, stored in (("f16", False), ("q8", False), ("bf16", True), ("f32", False)):
            with self.subTest(dtype=dtype, stored=stored):
                layers = []
                bases = {}
                for i, n in enumerate(names):
                    out, in_ = shapes[n + ".weight"]
                    a, bb = min(3, in_), min(2, out)
                    l = SubjectLayer(n, out, in_, lidb=LiDBTerm(2, a, bb, 1.5, rng.standard_normal((2, a)).astype(np.float32) * 0.1,
                                                               rng.standard_normal((bb, 2)).astype(np.float32) * 0.1))
                    if i % 3 == 0:
                        l.lora = LoRATerm(1, 2.0, rng.standard_normal((1, in_)).astype(np.float32) * 0.1,
                                          rng.standard_normal((out, 1)).astype(np.float32) * 0.1)
                    layers.append(l)
                    if stored:
                        q1, _ = np.linalg.qr(rng.standard_normal((in_, a)))
                        q2, _ = np.linalg.qr(rng.standard_normal((out, bb)))
                        bases[n] = (q1.T.astype(np.float32), q2.astype(np.float32))
                s = Subject(layers, "sd1", "custom", None if stored else 99, bases, info={"name": f"py-{dtype}"})
                sp = self.path(f"python-{dtype}.lidb")
                write_subject(sp, s, dtype)
                lidb("verify", sp)
                with read(sp) as c:
                    self.assertEqual(swift_metadata(sp), c.metadata)
                merged = self.path(f"python-{dtype}-merged.lidb")
                lidb("merge", self.base, f"{sp}:0.75", "-o", merged)
                back = read_subject(sp)
                with read(merged) as m:
                    self.assertEqual(m.metadata["merged"][-1]["delta_fingerprint"], back.delta_fingerprint)
                with read_base(self.base) as b, read_base(merged) as m:
                    worst = 0.0
                    for l in back.layers:
                        comp, rest = l.name.split(".", 1)
                        w0 = b.state_dict(comp)[rest + ".weight"].astype(np.float64)
                        w1 = m.state_dict(comp)[rest + ".weight"].astype(np.float64)
                        d = back.delta(l, 0.75)
                        worst = max(worst, float((np.abs(w1 - w0 - d) / (np.abs(w0) + np.abs(d) + 1e-30)).max()))
                    self.assertLess(worst, 1e-5)

    def test_imported_lora_read_by_python(self):
        sp = self.path("imported.lidb")
        lidb("subject", "import", LORA, "--base", self.base, "--dtype", "f32", "-o", sp)
        s = read_subject(sp)
        src, _ = read_safetensors(LORA)
        self.assertTrue(all(l.lora is not None for l in s.layers))
        self.assertEqual(2 * len(s.layers), len([k for k in src if ".lora_" in k]))
        merged = self.path("imported-merged.lidb")
        lidb("merge", self.base, sp, "-o", merged)
        self.check_merge(sp, merged)


    # -- hypernetwork files
    def test_hypernetworks_both_ways(self):
        """The sample hypernetwork converted by Swift is read here with the source's tensors and
        config; written here, Swift reads it and personalises to the same subject."""
        base = self.path("tiny-sd.lidb")
        lidb("convert", os.path.join(SAMPLES, "tiny-sd"), "-o", base)
        swift_h = self.path("swift-hyper.lidb")
        lidb("convert", os.path.join(SAMPLES, "tiny-hyper.safetensors"), "--kind", "hypernetwork", "--config",
             os.path.join(SAMPLES, "tiny-hyper.json"), "-o", swift_h)
        src, _ = read_safetensors(os.path.join(SAMPLES, "tiny-hyper.safetensors"))
        with open(os.path.join(SAMPLES, "tiny-hyper.json")) as f:
            config = json.load(f)
        with read_hypernetwork(swift_h) as h:
            self.assertEqual(h.config, config)
            self.assertEqual(h.config, swift_metadata(swift_h))
            self.assertEqual(set(h.container.names), set(src))
            for k, v in src.items():
                self.assertTrue(np.array_equal(h.tensor(k), v), k)
            swift_fp = h.fingerprint
        py_h = self.path("python-hyper.lidb")
        write_hypernetwork(py_h, config, src)
        lidb("verify", py_h)
        subjects = {}
        for label, hyper in (("swift", swift_h), ("python", py_h)):
            out = self.path(f"face-{label}.lidb")
            lidb("personalize", "--hypernet", hyper, "--base", base, "--image", os.path.join(SAMPLES, "face.jpg"),
                 "--dtype", "f32", "-o", out)
            subjects[label] = read_subject(out)
        self.assertEqual(subjects["swift"].info["provenance"]["hypernetwork"], swift_fp)
        with read_hypernetwork(py_h) as h:
            self.assertEqual(subjects["python"].info["provenance"]["hypernetwork"], h.fingerprint)
        for a, b in zip(subjects["swift"].layers, subjects["python"].layers):
            self.assertEqual(a.name, b.name)
            self.assertTrue(np.array_equal(a.lidb.down_train, b.lidb.down_train), a.name)
            self.assertTrue(np.array_equal(a.lidb.up_train, b.lidb.up_train), a.name)
        # a damaged table is refused by both readers
        bad = dict(config, decoder=dict(config["decoder"], weight_tokens=config["decoder"]["weight_tokens"] + 1))
        with self.assertRaises(ValueError):
            write_hypernetwork(self.path("bad.lidb"), bad, src)


if __name__ == "__main__":
    unittest.main()
