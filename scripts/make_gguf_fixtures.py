#!/usr/bin/env python3
"""Golden fixtures for GGUF: files written by the reference implementations (gguf-py, llama.cpp's converters).

Writes tests/fixtures/gguf/ (committed, small):
  quants.gguf            GGUF v3 written by gguf-py's GGUFWriter: one [4, 512] (numpy shape) tensor per ggml type
                         (t.f32 t.f16 t.bf16 t.q8_0 t.q4_0 t.q4_1 t.q4_k t.q5_k t.q6_k) and metadata of every GGUF
                         value type (test.*), nested arrays included; default alignment (32)
  quants.safetensors     for each tensor of quants.gguf: the f32 values gguf.quants.dequantize() gives (same key),
                         and for the types gguf-py can quantize, the f32 input it was quantized from ("src.<name>")
  quants.json            expected metadata (key order, value types, values; f32/f64 also as hex bits), tensor infos
                         (ggml type, dims in GGUF order: ne[0] first = innermost, offsets), file facts
  aligned.gguf           small GGUF with general.alignment = 64 and tensors whose byte sizes are not multiples of
                         it (1-D, 2-D, 3-D, F32, F16, Q8_0); described in quants.json under "aligned"
  llama-f32.gguf         tests/fixtures/models/llama through llama.cpp's convert_hf_to_gguf.py --outtype f32
  qwen2-f32.gguf         tests/fixtures/models/qwen2, same
  qwen3-f32.gguf         tests/fixtures/models/qwen3, same
  models.json            for each converted model: all metadata (with value types), tensor infos, the HF -> GGUF
                         tensor name mapping (verified on the data), the q/k row permutation (verified), tokenizer
  adapter-qv.gguf        tests/fixtures/lora/adapter-qv through convert_lora_to_gguf.py --outtype f32
                         --base tests/fixtures/models/llama
  adapter.json           its metadata, tensors, and the relation of every lora_a / lora_b to the PEFT tensors
  provenance.json        versions, seed, the exact converter workaround

The converters come from the llama-cpp-python sdist (vendor/llama.cpp), run with that sdist's own gguf-py on
PYTHONPATH. Get it (outside the repo) with
  pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /work/llamacpp-src
  tar xzf /work/llamacpp-src/llama_cpp_python-0.3.36.tar.gz -C /work/llamacpp-src
and point LLAMACPP_SRC at the untarred directory (default below). Nothing needs to be built.

Converter workaround (no file of llama.cpp is edited): convert_hf_to_gguf.py identifies a BPE tokenizer's
pre-tokenizer by the sha256 of the token ids it gives for a fixed check text (TextModel.get_vocab_base_pre); the
tiny fixture tokenizer (384-token byte-level BPE trained for these fixtures) is not in its table, and the
converter raises NotImplementedError("BPE pre-tokenizer was not recognized"). The converter is therefore run
through a small in-process runner (RUNNER below) that wraps TextModel.get_vocab_base_pre: the original is called,
and only when it raises NotImplementedError is PRE_FALLBACK ("gpt-2") returned. "gpt-2" is the honest name (the
spelling llama.cpp's loader accepts; "gpt2" is refused as an unknown pre-tokenizer): the
fixture tokenizer's pre-tokenizer is ByteLevel(use_regex=True), i.e. the GPT-2 split regex, which is what
llama.cpp's GPT-2 pre-tokenizer type implements. The unrecognised hash is recorded in models.json.
Second workaround, qwen2 only: transformers 5.24 lists "qwen2" in
transformers.models.auto.tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, so AutoTokenizer ignores the
fixture's tokenizer_config.json ("tokenizer_class": "PreTrainedTokenizerFast") and builds a Qwen2Tokenizer, whose
default unk_token "<|endoftext|>" is not in the vocabulary and gets appended as id 384; the converter then fails
its assert max(token id) < vocab_size (384). The runner removes the model types in HONOUR_TOKENIZER_CLASS from that
set, so the tokenizer is loaded as declared (TokenizersBackend, 384 tokens), exactly as for llama and qwen3.
Also needed: the sentencepiece package (the llama converter imports it before it checks for tokenizer.model,
and only FileNotFoundError is caught, so without it the conversion dies with ModuleNotFoundError).

Run: python scripts/make_gguf_fixtures.py
Needs: gguf==0.19.*, numpy, safetensors, torch, transformers, sentencepiece; the llama-cpp-python 0.3.36 sdist.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

SEED = 8642
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "gguf")
LLAMACPP_VERSION = "0.3.36"
LLAMACPP_SRC = os.environ.get("LLAMACPP_SRC", "/work/llamacpp-src/llama_cpp_python-%s" % LLAMACPP_VERSION)
LLAMACPP = os.path.join(LLAMACPP_SRC, "vendor", "llama.cpp")
MODELS = ["llama", "qwen2", "qwen3"]          # tests/fixtures/models/<name> -> <name>-f32.gguf
ADAPTER = "adapter-qv"                         # tests/fixtures/lora/<name>, base tests/fixtures/models/llama
OUTTYPE = "f32"
PRE_FALLBACK = "gpt-2"
# model types for which transformers 5.x ignores tokenizer_config.json's tokenizer_class (see the docstring)
HONOUR_TOKENIZER_CLASS = ["qwen2"]
QUANT_SHAPE = (4, 512)                         # numpy shape (rows, row length); GGUF dims [512, 4]
QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
ALIGNMENT = 64                                 # aligned.gguf (GGUF default is 32)

# Runs a llama.cpp converter script as __main__ with the pre-tokenizer fallback (see the docstring).
RUNNER = r"""
import runpy, sys
llamacpp, fallback, honour, script = sys.argv[1:5]
sys.path.insert(0, llamacpp)
import conversion.base as B
_orig = B.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        print("RUNNER: BPE pre-tokenizer not recognized; using %r" % fallback, file=sys.stderr)
        return fallback
B.TextModel.get_vocab_base_pre = get_vocab_base_pre
import transformers.models.auto.tokenization_auto as TA
for mt in honour.split(","):
    TA.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS.discard(mt)
sys.argv = [script] + sys.argv[5:]
runpy.run_path(script, run_name="__main__")
"""


# ---------------------------------------------------------------- an independent GGUF parser (nested arrays too)

SCALAR = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
          VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}


class Parser:
    def __init__(self, path):
        self.buf = open(path, "rb").read()
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.buf[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, vt):
        """-> JSON description {"type", "value"[, "item_type", "bits"]}"""
        vt = VT(vt)
        if vt in SCALAR:
            start = self.pos
            v = self.take(SCALAR[vt])
            d = {"type": vt.name, "value": v}
            if vt in (VT.FLOAT32, VT.FLOAT64):
                d["bits"] = "0x" + self.buf[start:self.pos][::-1].hex()
            return d
        if vt == VT.STRING:
            return {"type": "STRING", "value": self.string()}
        if vt == VT.ARRAY:
            it = VT(self.take("<I"))
            n = self.take("<Q")
            items = [self.value(it) for _ in range(n)]
            d = {"type": "ARRAY", "item_type": it.name, "len": n}
            if it == VT.ARRAY:
                d["value"] = items                      # each with its own item_type
            else:
                d["value"] = [x["value"] for x in items]
                if it in (VT.FLOAT32, VT.FLOAT64):
                    d["bits"] = [x["bits"] for x in items]
            return d
        raise ValueError(vt)

    def parse(self):
        magic = self.buf[:4]
        assert magic == b"GGUF", magic
        self.pos = 4
        version = self.take("<I")
        n_tensors = self.take("<Q")
        n_kv = self.take("<Q")
        kv = []
        for _ in range(n_kv):
            k = self.string()
            d = self.value(self.take("<I"))
            kv.append((k, d))
        infos = []
        for _ in range(n_tensors):
            name = self.string()
            nd = self.take("<I")
            dims = [self.take("<Q") for _ in range(nd)]
            t = QT(self.take("<I"))
            off = self.take("<Q")
            infos.append({"name": name, "ggml_type": t.name, "ggml_type_id": int(t), "dims": dims, "offset": off})
        kvd = dict(kv)
        align = kvd["general.alignment"]["value"] if "general.alignment" in kvd else 32
        header_end = self.pos
        data_start = (header_end + align - 1) // align * align
        for ti in infos:
            t = QT[ti["ggml_type"]]
            bs, ts = gguf.GGML_QUANT_SIZES[t]
            ne = int(np.prod(ti["dims"]))
            ti["nbytes"] = ne // bs * ts
            ti["abs_offset"] = data_start + ti["offset"]
            assert ti["offset"] % align == 0
        return {"version": version, "n_tensors": n_tensors, "n_kv": n_kv, "alignment": align,
                "header_bytes": header_end, "data_offset": data_start, "file_bytes": len(self.buf),
                "kv": kv, "tensors": infos}

    def tensor(self, ti):
        """f32 numpy array in numpy order (dims reversed), dequantized with gguf-py."""
        raw = np.frombuffer(self.buf, dtype=np.uint8, count=ti["nbytes"], offset=ti["abs_offset"])
        t = QT[ti["ggml_type"]]
        shape = tuple(reversed(ti["dims"]))
        if t == QT.F32:
            return raw.view(np.float32).reshape(shape)
        if t == QT.F16:
            return raw.view(np.float16).astype(np.float32).reshape(shape)
        rows = raw.reshape(-1, ti["nbytes"] // int(np.prod(shape[:-1])))
        return gguf.quants.dequantize(rows, t).reshape(shape)


def kv_json(parsed):
    return [{"key": k, **d} for k, d in parsed["kv"]]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------- 1) quants.gguf, aligned.gguf

def source_values(rng):
    """[4, 512] f32 with edge cases in rows 1 and 3 (blocks of 32 = Q8_0/Q4_0/Q4_1 blocks)."""
    x = rng.standard_normal(QUANT_SHAPE).astype(np.float32)
    r1 = x[1].reshape(16, 32)
    r1[0] = 0.0                                       # all-zero block
    r1[1] = 0.75                                      # all-equal positive block
    r1[2] = -1.5                                      # all-equal negative block
    r1[3] = -np.abs(r1[3])                            # all negative
    r1[4] = np.abs(r1[4])                             # all positive
    r1[5] *= 1e-3                                     # small
    r1[6] *= 1e3                                      # large
    r1[7, :] = 0.0
    r1[7, 5] = -2.0                                   # one non-zero (negative) value
    r1[8] = np.linspace(-1, 1, 32)
    r1[9] = np.where(np.arange(32) % 2 == 0, 8.0, -8.0)   # +-max alternating
    x[2] = rng.uniform(-4, 4, 512).astype(np.float32)
    r3 = x[3].reshape(16, 32)
    r3[0, :8] = [-0.0, 1e-7, -1e-7, 6e-8, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 60000.0]
    # ^ -0, f16 subnormals, bf16 round-half-to-even ties, a large finite f16
    r3[1] = 123.25
    return x


def random_k_blocks(rng, qt, n_blocks):
    """Valid random K-quant super-blocks: random bytes, with finite f16 d/dmin; a few edge blocks."""
    _, ts = gguf.GGML_QUANT_SIZES[qt]
    b = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    if qt == QT.Q6_K:
        d_fields = [ts - 2]                           # ql[128] qh[64] scales[16] d(f16)
    else:
        d_fields = [0, 2]                             # d(f16) dmin(f16) scales[12] (qh[32]) qs[128]
    for off in d_fields:
        mag = 10.0 ** rng.uniform(-4, 0, n_blocks)
        sign = np.where(rng.random(n_blocks) < 0.2, -1.0, 1.0)
        b[:, off:off + 2] = (sign * mag).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    b[0] = 0                                          # all-zero block -> all zeros
    for off in d_fields:                              # block 1: d (and dmin) = 0, random quants
        b[1, off:off + 2] = np.array([0.0], np.float16).view(np.uint8)
    b[2, d_fields[0]:d_fields[0] + 2] = np.array([3e-6], np.float16).view(np.uint8)   # subnormal f16 d
    b[3, d_fields[0]:d_fields[0] + 2] = np.array([-0.5], np.float16).view(np.uint8)   # negative d
    return b


def quants(rng, meta_out):
    src = source_values(rng)
    golden = {}
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "test")
    expected_kv = add_test_metadata(w)
    for tname in QUANT_TYPES:
        qt = QT[tname]
        name = "t." + tname.lower()
        if tname in ("Q4_K", "Q5_K", "Q6_K"):
            bs, _ = gguf.GGML_QUANT_SIZES[qt]
            rows = random_k_blocks(rng, qt, QUANT_SHAPE[0] * QUANT_SHAPE[1] // bs).reshape(QUANT_SHAPE[0], -1)
            how = "random valid blocks (gguf-py cannot quantize %s)" % tname
        else:
            rows = gguf.quants.quantize(src, qt)
            golden["src." + name] = src.copy()
            how = "gguf.quants.quantize(src.%s)" % name
        deq = gguf.quants.dequantize(rows, qt).astype(np.float32).reshape(QUANT_SHAPE)
        assert np.isfinite(deq).all(), name
        golden[name] = np.ascontiguousarray(deq)
        if rows.dtype == np.uint8:
            w.add_tensor(name, rows, raw_dtype=qt)
        else:
            w.add_tensor(name, rows)                  # f32 / f16 arrays: type from the numpy dtype
        meta_out.setdefault("how", {})[name] = how
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    safetensors.numpy.save_file(golden, os.path.join(OUT, "quants.safetensors"))
    os.chmod(os.path.join(OUT, "quants.safetensors"), 0o644)

    p = Parser(os.path.join(OUT, "quants.gguf"))
    parsed = p.parse()
    check_kv(parsed, expected_kv)
    for ti in parsed["tensors"]:
        got = p.tensor(ti)
        assert np.array_equal(got.view(np.uint32), golden[ti["name"]].view(np.uint32)), ti["name"]
    check_with_reader(os.path.join(OUT, "quants.gguf"), parsed)
    meta_out.update(file_json(parsed, "quants.gguf"))
    meta_out["block_layouts"] = {
        "Q8_0": "32 values, 34 bytes: d f16, qs int8[32]; x = d * q",
        "Q4_0": "32 values, 18 bytes: d f16, qs u8[16]; value j<16 = qs[j]&15, j>=16 = qs[j-16]>>4; x = d * (q - 8)",
        "Q4_1": "32 values, 20 bytes: d f16, m f16, qs u8[16] (as Q4_0); x = d * q + m",
        "Q4_K": "256 values, 144 bytes: d f16, dmin f16, scales u8[12] (8 x (6-bit sc, 6-bit m)), qs u8[128]; "
                "x = (d*sc) * q - (dmin*m)",
        "Q5_K": "256 values, 176 bytes: d f16, dmin f16, scales u8[12], qh u8[32], qs u8[128]; "
                "x = (d*sc) * q - (dmin*m), q = low4 | highbit<<4",
        "Q6_K": "256 values, 210 bytes: ql u8[128], qh u8[64], scales i8[16], d f16; x = (d*sc) * (q - 32)",
        "BF16": "u16, top half of the f32 bits; gguf-py rounds to nearest even (NaN kept quiet)",
        "file_padding": "GGUFWriter pads every tensor, the last one included, to the alignment, so the file size is "
                        "a multiple of it; header_bytes = end of the tensor infos, data_offset = that rounded up",
        "note": "expected values are gguf.quants.dequantize() (numpy f32 arithmetic, the same operation order "
                "as ggml's dequantize_row_* reference C code)",
    }
    aligned(meta_out)


def add_test_metadata(w):
    """One key per GGUF value type, arrays, nested arrays. Returns [(key, vtype name, python value)]."""
    exp = []

    def put(key, val, vt, sub=None):
        w.add_key_value(key, val, vt, sub_type=sub)
        exp.append((key, vt, sub, val))

    put("test.u8", 200, VT.UINT8)
    put("test.i8", -100, VT.INT8)
    put("test.u16", 60000, VT.UINT16)
    put("test.i16", -30000, VT.INT16)
    put("test.u32", 4000000000, VT.UINT32)
    put("test.i32", -2000000000, VT.INT32)
    put("test.f32", 3.14159, VT.FLOAT32)
    put("test.f32_neg", -1.0e-30, VT.FLOAT32)
    put("test.bool_true", True, VT.BOOL)
    put("test.bool_false", False, VT.BOOL)
    put("test.string", "h\u00e9llo, w\u00f6rld \U0001F999", VT.STRING)
    put("test.string_empty", "", VT.STRING)
    put("test.u64", 2 ** 63 + 12345, VT.UINT64)
    put("test.i64", -(2 ** 62) - 7, VT.INT64)
    put("test.f64", 0.1, VT.FLOAT64)
    put("test.arr_i32", [1, -2, 3, 2147483647, -2147483648], VT.ARRAY)             # item type inferred: INT32
    put("test.arr_u8", [0, 1, 255], VT.ARRAY, VT.UINT8)
    put("test.arr_u64", [0, 2 ** 64 - 1], VT.ARRAY, VT.UINT64)
    put("test.arr_f32", [0.5, -2.25, 1e-3], VT.ARRAY)                              # FLOAT32
    put("test.arr_bool", [True, False, True], VT.ARRAY)                            # BOOL
    put("test.arr_str", ["a", "bc", "", "\u00fc"], VT.ARRAY)                       # STRING
    put("test.nested", [[1, 2, 3], [4], [5, 6]], VT.ARRAY)                         # ARRAY of ARRAY of INT32
    put("test.nested_str", [["x", "y"], ["z"]], VT.ARRAY)                          # ARRAY of ARRAY of STRING
    put("test.nested3", [[[1], [2, 3]], [[4]]], VT.ARRAY)                          # three levels
    return exp


def check_kv(parsed, expected):
    kv = dict(parsed["kv"])
    for key, vt, _sub, val in expected:
        d = kv[key]
        assert d["type"] == vt.name, key
        if vt == VT.FLOAT32:
            assert d["value"] == float(np.float32(val)), key
        elif vt == VT.ARRAY and d["item_type"] == "ARRAY":
            def flat(x):
                return [flat(i["value"]) if isinstance(i, dict) and i["type"] == "ARRAY" else i for i in x] \
                    if isinstance(x, list) else x
            un = [flat(i["value"]) for i in d["value"]]
            assert un == val, (key, un)
        elif vt == VT.ARRAY and d["item_type"] == "FLOAT32":
            assert d["value"] == [float(np.float32(v)) for v in val], key
        else:
            assert d["value"] == val, key


def check_with_reader(path, parsed):
    """gguf-py's own GGUFReader agrees on tensor types, dims and offsets."""
    r = gguf.GGUFReader(path)
    assert r.data_offset == parsed["data_offset"], (r.data_offset, parsed["data_offset"])
    for t, ti in zip(r.tensors, parsed["tensors"]):
        assert t.name == ti["name"] and t.tensor_type.name == ti["ggml_type"]
        assert [int(x) for x in t.shape] == ti["dims"], (t.shape, ti["dims"])
        assert t.data_offset == ti["abs_offset"] and t.n_bytes == ti["nbytes"]


def file_json(parsed, fname):
    return {"file": fname, "version": parsed["version"], "n_tensors": parsed["n_tensors"], "n_kv": parsed["n_kv"],
            "alignment": parsed["alignment"], "header_bytes": parsed["header_bytes"],
            "data_offset": parsed["data_offset"], "file_bytes": parsed["file_bytes"],
            "kv": kv_json(parsed), "tensors": parsed["tensors"]}


def aligned(meta_out):
    rng = np.random.default_rng(SEED + 1)
    path = os.path.join(OUT, "aligned.gguf")
    w = gguf.GGUFWriter(path, "test")
    w.add_custom_alignment(ALIGNMENT)                 # writes general.alignment (UINT32) and pads to it
    w.add_string("test.note", "alignment 64")
    vals = {
        "a.f32_1d": rng.standard_normal(7).astype(np.float32),          # 28 bytes
        "b.f16_2d": rng.standard_normal((3, 5)).astype(np.float16),     # 30 bytes, dims [5, 3]
        "c.f32_3d": rng.standard_normal((2, 3, 4)).astype(np.float32),  # 96 bytes, dims [4, 3, 2]
        "d.q8_0": rng.standard_normal((1, 32)).astype(np.float32),      # 34 bytes
        "e.f32_scalarish": np.array([42.0], np.float32),                # 4 bytes, dims [1]
    }
    golden = {}
    for name, v in vals.items():
        if name == "d.q8_0":
            q = gguf.quants.quantize(v, QT.Q8_0)
            w.add_tensor(name, q, raw_dtype=QT.Q8_0)
            golden[name] = gguf.quants.dequantize(q, QT.Q8_0).astype(np.float32)
        else:
            w.add_tensor(name, v)
            golden[name] = v.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = Parser(path)
    parsed = p.parse()
    assert parsed["alignment"] == ALIGNMENT and parsed["data_offset"] % ALIGNMENT == 0
    for ti in parsed["tensors"]:
        assert np.array_equal(p.tensor(ti), golden[ti["name"]]), ti["name"]
    check_with_reader(path, parsed)
    a = file_json(parsed, "aligned.gguf")
    a["values_f32"] = {k: v.reshape(-1).tolist() for k, v in golden.items()}
    a["note"] = ("values_f32: the tensor's values as f32, in memory order (numpy C order = ggml order, ne[0] "
                 "fastest); d.q8_0 dequantized. The padding after the last tensor is also written (file size is a "
                 "multiple of the alignment).")
    meta_out["aligned"] = a


# ---------------------------------------------------------------- 2) converted models

def run_converter(script, args):
    env = dict(os.environ, PYTHONPATH=os.path.join(LLAMACPP, "gguf-py"))
    cmd = [sys.executable, "-c", RUNNER, LLAMACPP, PRE_FALLBACK, ",".join(HONOUR_TOKENIZER_CLASS),
           os.path.join(LLAMACPP, script)] + args
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit("converter failed: %s %s" % (script, args))
    return r.stdout + r.stderr


def permute_rows(w, n_head):
    """llama.cpp's LlamaModel.permute (what convert_hf_to_gguf does to q_proj/k_proj weight and bias rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def perm_index(n_rows, n_head):
    """gguf_row r  <-  hf_row perm[r]"""
    return permute_rows(np.arange(n_rows), n_head)


def hf_tensors(model_dir):
    out = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, f), "np") as sf:
                for k in sf.keys():
                    out[k] = sf.get_tensor(k)
    return out


def pre_hash(model_dir):
    """The check-text hash the converter computes (the value its table does not know)."""
    src = open(os.path.join(LLAMACPP, "conversion", "base.py"), encoding="utf-8").read()
    i = src.index("chktxt = ")
    chktxt = eval(src[i + len("chktxt = "):src.index("\n", i)])   # the converter's own string literal
    import transformers.models.auto.tokenization_auto as TA
    for mt in HONOUR_TOKENIZER_CLASS:
        TA.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS.discard(mt)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    return hashlib.sha256(str(tok.encode(chktxt)).encode()).hexdigest()


def model(name, meta):
    model_dir = os.path.join(ROOT, "models", name)
    fname = "%s-%s.gguf" % (name, OUTTYPE)
    path = os.path.join(OUT, fname)
    log = run_converter("convert_hf_to_gguf.py", ["--outtype", OUTTYPE, "--outfile", path, model_dir])
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    p = Parser(path)
    parsed = p.parse()
    check_with_reader(path, parsed)
    kv = dict(parsed["kv"])
    arch = kv["general.architecture"]["value"]
    n_layer = kv[arch + ".block_count"]["value"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    hf = hf_tensors(model_dir)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    mapping, checks = {}, {}
    gg_names = {ti["name"]: ti for ti in parsed["tensors"]}
    used = set()
    for hname, hval in sorted(hf.items()):
        gname = tmap.get_name(hname, try_suffixes=(".weight", ".bias"))
        assert gname is not None and gname in gg_names, (hname, gname)
        used.add(gname)
        mapping[hname] = gname
        gval = p.tensor(gg_names[gname])
        assert gval.shape == hval.shape, (hname, gval.shape, hval.shape)   # never transposed
        if arch == "llama" and (".q_proj." in hname or ".k_proj." in hname):
            nh = n_head if ".q_proj." in hname else n_kv
            assert np.array_equal(gval, permute_rows(hval, nh)), hname
            assert not np.array_equal(gval, hval), hname
            checks[hname] = "gguf == permute(hf, n_head=%d) (verified; != hf)" % nh
        else:
            assert np.array_equal(gval, hval), hname
    extra = sorted(set(gg_names) - used)
    entry = {"source": "tests/fixtures/models/" + name, "hf_architecture": cfg["architectures"][0],
             "converter_log_pre_fallback_used": "RUNNER: BPE pre-tokenizer not recognized" in log,
             "chkhsh_unrecognized": pre_hash(model_dir),
             **file_json(parsed, fname),
             "hf_to_gguf": mapping,
             "gguf_only_tensors": extra,
             "tied_embeddings_output_absent": "output.weight" not in gg_names}
    if "rope_freqs.weight" in gg_names:
        entry["rope_freqs"] = p.tensor(gg_names["rope_freqs.weight"]).tolist()
    qk = {}
    if arch == "llama":
        hd = cfg.get("head_dim", cfg["hidden_size"] // n_head)
        qk = {"permuted": True, "checks": checks,
              "q_rows": int(n_head * hd), "k_rows": int(n_kv * hd), "head_dim": hd,
              "formula": "for a q_proj (n_head = num_attention_heads) or k_proj (n_head = num_key_value_heads) "
                         "weight or bias with R rows, hd = R / n_head: gguf_row[h*hd + 2*i + j] = "
                         "hf_row[h*hd + j*(hd/2) + i] for h < n_head, i < hd/2, j in {0,1} "
                         "(numpy: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2).reshape(w.shape)); "
                         "i.e. HF's half-split rotary layout (NeoX) becomes adjacent pairs (GPT-J). Inverse: "
                         "hf_row[h*hd + j*(hd/2) + i] = gguf_row[h*hd + 2*i + j]",
              "q_perm_gguf_row_from_hf_row": perm_index(n_head * hd, n_head).tolist(),
              "k_perm_gguf_row_from_hf_row": perm_index(n_kv * hd, n_kv).tolist()}
    else:
        qk = {"permuted": False, "note": "q/k weights and biases are byte-identical to HF (verified)"}
    entry["qk_permutation"] = qk
    entry["tokenizer"] = tokenizer_summary(kv)
    entry["arch_keys"] = {k: {"type": d["type"], "value": d["value"]} for k, d in parsed["kv"]
                          if k.startswith(arch + ".")}
    meta[fname] = entry


def tokenizer_summary(kv):
    def g(k):
        return kv[k]["value"] if k in kv else None
    s = {"tokenizer.ggml.model": g("tokenizer.ggml.model"), "tokenizer.ggml.pre": g("tokenizer.ggml.pre"),
         "n_tokens": len(g("tokenizer.ggml.tokens") or []), "n_merges": len(g("tokenizer.ggml.merges") or []),
         "chat_template_present": "tokenizer.chat_template" in kv}
    for k, d in kv.items():
        if k.startswith("tokenizer.ggml.") and d["type"] != "ARRAY":
            s[k] = {"type": d["type"], "value": d["value"]}
    tt = g("tokenizer.ggml.token_type")
    if tt:
        s["token_type_counts"] = {str(t): tt.count(t) for t in sorted(set(tt))}
        s["non_normal_tokens"] = {i: [g("tokenizer.ggml.tokens")[i], t] for i, t in enumerate(tt) if t != 1}
    s["first_tokens"] = (g("tokenizer.ggml.tokens") or [])[:16]
    s["first_merges"] = (g("tokenizer.ggml.merges") or [])[:8]
    s["array_item_types"] = {k: kv[k]["item_type"] for k in kv if k.startswith("tokenizer.") and
                             kv[k]["type"] == "ARRAY"}
    return s


# ---------------------------------------------------------------- 3) the adapter

def adapter(meta):
    lora_dir = os.path.join(ROOT, "lora", ADAPTER)
    base_dir = os.path.join(ROOT, "models", "llama")
    fname = ADAPTER + ".gguf"
    path = os.path.join(OUT, fname)
    run_converter("convert_lora_to_gguf.py", ["--outtype", OUTTYPE, "--outfile", path, "--base", base_dir, lora_dir])
    p = Parser(path)
    parsed = p.parse()
    check_with_reader(path, parsed)
    cfg = json.load(open(os.path.join(base_dir, "config.json")))
    acfg = json.load(open(os.path.join(lora_dir, "adapter_config.json")))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    peft = hf_tensors(lora_dir)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    gg = {ti["name"]: ti for ti in parsed["tensors"]}
    rel, mapping = {}, {}
    for pname, pval in sorted(peft.items()):
        base = pname.replace("base_model.model.", "", 1)
        ab = "lora_a" if ".lora_A." in base else "lora_b"
        base = base.replace(".lora_A", "").replace(".lora_B", "")
        gname = tmap.get_name(base, try_suffixes=(".weight",)) + "." + ab
        mapping[pname] = gname
        gval = p.tensor(gg[gname])
        assert gval.shape == pval.shape, (pname, gval.shape, pval.shape)
        if ab == "lora_b" and (".q_proj." in base or ".k_proj." in base):
            nh = n_head if ".q_proj." in base else n_kv
            assert np.array_equal(gval, permute_rows(pval, nh)) and not np.array_equal(gval, pval), pname
            rel[gname] = "rows permuted like the base q/k: gguf == permute(peft lora_B, n_head=%d)" % nh
        else:
            assert np.array_equal(gval, pval), pname
            rel[gname] = "identical to PEFT %s (same numpy shape, no transpose)" % ("lora_A" if ab == "lora_a"
                                                                                   else "lora_B")
    assert set(mapping.values()) == set(gg), set(gg) ^ set(mapping.values())
    kv = dict(parsed["kv"])
    meta.update(file_json(parsed, fname))
    meta["source"] = "tests/fixtures/lora/" + ADAPTER
    meta["peft_config"] = {k: acfg[k] for k in ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora",
                                               "fan_in_fan_out")}
    meta["peft_to_gguf"] = mapping
    meta["relations"] = rel
    meta["alpha"] = {"key": "adapter.lora.alpha", "type": kv["adapter.lora.alpha"]["type"],
                     "value": kv["adapter.lora.alpha"]["value"]}
    meta["notes"] = [
        "lora_a: PEFT lora_A [r, in] -> GGUF dims [in, r] (ggml order); lora_b: PEFT lora_B [out, r] -> GGUF dims "
        "[r, out]; the bytes are the PEFT row-major data unchanged (dims reversed only, no transpose).",
        "attn_q lora_b rows carry the same permutation as the base attn_q weight (lora_a untouched), so that "
        "lora_b @ lora_a equals permute(delta W); attn_k would be permuted with n_head = num_key_value_heads.",
        "No rank key: r is the lora_a dims[1] (= lora_b dims[0]). Scale = alpha / r (no rsLoRA key is written).",
        "No rope_freqs or tokenizer in the adapter; general.type = 'adapter'.",
    ]


# ---------------------------------------------------------------- main

def main():
    assert os.path.isdir(LLAMACPP), "untar the llama-cpp-python %s sdist; set LLAMACPP_SRC" % LLAMACPP_VERSION
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    rng = np.random.default_rng(SEED)

    qmeta = {}
    quants(rng, qmeta)
    json.dump(qmeta, open(os.path.join(OUT, "quants.json"), "w"), indent=1, ensure_ascii=False)

    mmeta = {}
    for name in MODELS:
        model(name, mmeta)
    mmeta["_conventions"] = {
        "dims": "GGUF dims are ggml ne order (ne[0] = innermost = last numpy axis); every 2-D weight keeps the HF "
                "[out, in] row-major bytes, so dims are [in, out]. No tensor is transposed.",
        "pre_tokenizer_workaround": "TextModel.get_vocab_base_pre wrapped in-process to return %r when the hash is "
                                    "unknown (no converter file edited)" % PRE_FALLBACK,
    }
    json.dump(mmeta, open(os.path.join(OUT, "models.json"), "w"), indent=1, ensure_ascii=False)

    ameta = {}
    adapter(ameta)
    json.dump(ameta, open(os.path.join(OUT, "adapter.json"), "w"), indent=1, ensure_ascii=False)

    import torch
    import transformers
    llama_gguf_py = open(os.path.join(LLAMACPP, "gguf-py", "pyproject.toml")).read()
    prov = {"script": "scripts/make_gguf_fixtures.py", "seed": SEED, "python": sys.version.split()[0],
            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
            "llama_cpp_python_sdist": LLAMACPP_VERSION,
            "llama_cpp_gguf_py": [l for l in llama_gguf_py.splitlines() if l.startswith("version")][0],
            "converters_run_with": "PYTHONPATH=<sdist>/vendor/llama.cpp/gguf-py (the sdist's own gguf-py)",
            "quants_written_with": "pip gguf (the \"gguf\" version above)",
            "converter_workaround": "get_vocab_base_pre -> %r on NotImplementedError (unrecognised pre-tokenizer "
                                    "hash); %s removed from transformers' MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS "
                                    "so tokenizer_config's tokenizer_class is honoured; sentencepiece installed "
                                    "(imported unconditionally)" % (PRE_FALLBACK, HONOUR_TOKENIZER_CLASS),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__,
            "sentencepiece": __import__("sentencepiece").__version__,
            "sha256": {f: sha256(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT)) if f.endswith(".gguf")}}
    json.dump(prov, open(os.path.join(OUT, "provenance.json"), "w"), indent=2)
    for f in sorted(os.listdir(OUT)):
        print("%8d %s" % (os.path.getsize(os.path.join(OUT, f)), f))


if __name__ == "__main__":
    main()
