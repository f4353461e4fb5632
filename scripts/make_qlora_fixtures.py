#!/usr/bin/env python3
"""Golden fixtures for QLoRA (bitsandbytes NF4 4-bit base) on the tiny Llama of tests/fixtures/models/llama.

Writes tests/fixtures/qlora/ (committed, small):
  nf4.safetensors        bitsandbytes' NF4 quantization of every decoder linear weight (packed bytes, absmax,
                         dequantized f32), the same with double quantization, the same for the bf16 model's
                         weights, and hand-made edge-case tensors (inputs stored too); the 8-bit dynamic code
  golden.safetensors     replay batch (input_ids, labels) and logits of the NF4 base, alone and with
                         tests/fixtures/lora/adapter-qv, without and with double quantization
  adapter-init/          PEFT's step-0 adapter on the NF4 base (r=4, alpha=8, q_proj+v_proj)
  adapter-trained/       the same after 10 AdamW steps on the replay batch (QLoRA replay)
  golden.json            replay losses and settings, which modules are quantized, answers to the checks
  provenance.json        package versions, seed, CPU facts

The numpy functions reference_* below are an exact, bit-for-bit re-implementation of what bitsandbytes does
on CPU; the script asserts equality with bitsandbytes on every tensor it writes. They are the specification
a port follows (see the docstrings).

bitsandbytes 0.50.2 on an AVX-512 CPU has two CPU-only behaviours that this script works around, so that the
golden numbers are those of the algorithm (bitsandbytes' own pure-torch kernel: flat blocks of 64):
  * its C++ dequantize_4bit kernel (AVX-512 path, taken when in_features % 16 == 0) indexes absmax as
    row * (in_features // blocksize) + column // blocksize, which is wrong whenever in_features is not a
    multiple of the blocksize (in_features 32 or 48 here: in_features // 64 == 0, so every element is scaled
    by absmax[0]). The script re-registers bitsandbytes' own pure-torch kernel (backends/default/ops.py) for
    CPU.
  * Linear4bit.forward in eval mode without grad, on a CPU with AVX512-BF16, repacks the weight and runs a
    bf16 GEMV (activations rounded to bf16). The script turns that off (support_avx512bf16_for_cpu=False) so
    that the forward is dequantize (f32) then F.linear in f32.
How far bitsandbytes' untouched CPU result is from the golden one is recorded in golden.json ("diagnostics").

Run after scripts/make_lora_fixtures.py: python scripts/make_qlora_fixtures.py
Needs: torch, transformers, peft, bitsandbytes, safetensors, numpy.
"""

import json
import os
import platform
import shutil
import sys

import numpy as np
import peft
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import bitsandbytes as bnb
import bitsandbytes.functional as bnbF
from bitsandbytes.backends.default import ops as bnb_default_ops
from bitsandbytes.backends.utils import _get_4bit_code

SEED = 2468
BLOCKSIZE = 64          # NF4 block (transformers' default bnb_4bit_blocksize)
DQ_BLOCKSIZE = 256      # blocksize of the 8-bit quantization of absmax (double quant), fixed in bitsandbytes
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
BASE = os.path.join(ROOT, "models", "llama")
BASE_BF16 = os.path.join(ROOT, "models", "llama-bf16")
ADAPTER_QV = os.path.join(ROOT, "lora", "adapter-qv")
LORA_GOLDEN = os.path.join(ROOT, "lora", "golden.safetensors")
OUT = os.path.join(ROOT, "qlora")
LAYERS = 3
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
REPLAY_STEPS = 10

f32 = np.float32

# ---------------------------------------------------------------------------------------------------------
# The numpy reference (the specification). Every arithmetic step is float32, rounded to nearest-even, in the
# order written; nothing is fused unless said so.
# ---------------------------------------------------------------------------------------------------------

# bitsandbytes.functional.get_4bit_type("nf4"): these literals, rounded to float32 (then divided by the
# largest |value|, 1.0, which changes nothing). Index = the 4-bit code; the table is sorted ascending.
NF4_CODE = np.array([
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
], dtype=f32)

# Decision boundaries: (code[i] + code[i+1]) / 2 in float32 (the addition rounds, the halving is exact).
NF4_MIDPOINTS = ((NF4_CODE[:-1] + NF4_CODE[1:]) / f32(2)).astype(f32)

# torch's clamp(min=1e-38) on a float32 tensor: the bound is the double 1e-38 rounded to float32 (a subnormal).
ABSMAX_FLOOR = f32(1e-38)


def reference_nf4_quantize(x, blocksize=BLOCKSIZE):
    """NF4 quantization exactly as bitsandbytes.functional.quantize_4bit(A, blocksize, quant_type="nf4") on CPU
    (kernel bitsandbytes::quantize_4bit 'default', backends/default/ops.py; no CPU-specific kernel exists).

    x: any shape, float32 (a bf16/fp16 input is first upcast to float32 exactly; nothing else differs).
    Flattened row-major (for a weight [out, in]: element (r, c) is at r*in + c); blocks are consecutive runs
    of `blocksize` elements of that flat vector, regardless of row boundaries.

    Full blocks:     absmax = max |x| (exact);  inv = 1 / max(absmax, ABSMAX_FLOOR) (f32 division);
                     s = clamp(x * inv, -1, 1) (f32 multiply). Stored absmax is the UNfloored max (0 for an
                     all-zero block).
    The last partial block (numel % blocksize != 0):
                     am = max(max |x|, ABSMAX_FLOOR);  s = clamp(x / am, -1, 1) (a true f32 DIVISION, not a
                     multiply by the reciprocal). Stored absmax is the FLOORED am (1e-38f for all zeros).
    Code: q = the number of midpoints strictly less than s (torch.bucketize, right=False): s exactly on a
          midpoint goes to the LOWER code; 0.0 and -0.0 give 7. No NaN can arise (the floor keeps inv finite).
    Packing: an odd count is padded with one s = 0.0 (code 7); byte k = (q[2k] << 4) | q[2k+1]: the first
             element in the HIGH nibble. Packed length ceil(numel / 2); absmax length ceil(numel / blocksize).
    """
    a = np.asarray(x).astype(f32).reshape(-1)
    n = a.size
    rem = n % blocksize
    full = n - rem
    blocks = a[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1) if full else np.zeros(0, f32)
    inv = (f32(1) / np.maximum(absmax, ABSMAX_FLOOR)).astype(f32)
    scaled = np.clip((blocks * inv[:, None]).astype(f32), f32(-1), f32(1)).reshape(-1)
    if rem:
        am = np.maximum(np.abs(a[full:]).max(), ABSMAX_FLOOR).astype(f32)
        absmax = np.concatenate([absmax, [am]]).astype(f32)
        scaled = np.concatenate([scaled, np.clip((a[full:] / am).astype(f32), f32(-1), f32(1))])
    if n % 2:
        scaled = np.concatenate([scaled, [f32(0)]])
    q = np.searchsorted(NF4_MIDPOINTS, scaled.astype(f32), side="left").astype(np.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    return packed, absmax.astype(f32)


def reference_nf4_dequantize(packed, absmax, numel, blocksize=BLOCKSIZE):
    """Inverse: element i = NF4_CODE[nibble i] * absmax[i // blocksize], one f32 multiply (nibble 2k is the high
    nibble of byte k, 2k+1 the low one; a pad nibble past numel is dropped). Output float32, flat."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    q = np.empty(p.size * 2, dtype=np.uint8)
    q[0::2] = p >> 4
    q[1::2] = p & 0xF
    q = q[:numel]
    scale = np.asarray(absmax, dtype=f32)[np.arange(numel) // blocksize]
    return (NF4_CODE[q] * scale).astype(f32)


def reference_torch_sum_f32(x):
    """torch.sum of a contiguous 1-D float32 CPU tensor of at most 32768 elements (above that torch splits the
    work across threads and the order depends on the thread count), on x86-64: ATen's cascade_sum
    (aten/src/ATen/native/cpu/SumKernel.cpp) with Vectorized<float> of 8 lanes (sum is dispatched at AVX2
    level even on AVX-512 CPUs). float32 accumulation throughout."""
    x = np.asarray(x, dtype=f32).reshape(-1)
    n = x.size
    lanes = 8

    def ceil_log2(v):
        return 0 if v <= 1 else (int(v) - 1).bit_length()

    def multi_row_sum(rows):  # rows: [size, nrows, ...]; four-level cascade
        size = rows.shape[0]
        level_power = max(4, ceil_log2(size) // 4)
        step = 1 << level_power
        mask = step - 1
        acc = np.zeros((4,) + rows.shape[1:], dtype=f32)
        i = 0
        while i + step <= size:
            for _ in range(step):
                acc[0] = acc[0] + rows[i]
                i += 1
            for j in range(1, 4):
                acc[j] = acc[j] + acc[j - 1]
                acc[j - 1] = 0
                if i & (mask << (j * level_power)):
                    break
        while i < size:
            acc[0] = acc[0] + rows[i]
            i += 1
        for j in range(1, 4):
            acc[0] = acc[0] + acc[j]
        return acc[0]

    def row_sum(elems):  # elems: [size, ...]; 4 interleaved partial sums
        size = elems.shape[0]
        size_ilp = size // 4
        part = multi_row_sum(elems[:size_ilp * 4].reshape((size_ilp, 4) + elems.shape[1:])).copy()
        for i in range(size_ilp * 4, size):
            part[0] = part[0] + elems[i]
        for k in range(1, 4):
            part[0] = part[0] + part[k]
        return part[0]

    if n < lanes:
        return f32(row_sum(x))
    nv = n // lanes
    vacc = row_sum(x[:nv * lanes].reshape(nv, lanes))
    total = f32(0)
    for k in range(nv * lanes, n):
        total = f32(total + x[k])
    for lane in range(lanes):
        total = f32(total + vacc[lane])
    return total


def _fmaf(a, b, c):
    """float32 fused multiply-add: a*b is exact in float64; the sum is rounded to f64 then to f32 (this double
    rounding could only matter on an exact f32 tie; the script asserts the results against torch)."""
    return f32(np.float64(f32(a)) * np.float64(f32(b)) + np.float64(f32(c)))


def reference_linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps, dtype=torch.float32) on CPU: step = (end - start) / (steps - 1) in f32;
    element i = fmaf(step, i, start) for i < steps // 2, else fmaf(-step, steps - 1 - i, end)."""
    start, end = f32(start), f32(end)
    step = f32((end - start) / f32(steps - 1))
    half = steps // 2
    return np.array([_fmaf(step, i, start) if i < half else _fmaf(-step, steps - 1 - i, end)
                     for i in range(steps)], dtype=f32)


def reference_dynamic_map():
    """bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted
    float32 values. For i in 0..6: b = linspace_f32(0.1, 1, 2**i + 1); means[j] = (b[j] + b[j+1]) / 2 (f32);
    s = f32(10.0 ** (i - 6)) (1e-06, 1e-05, ..., 1); add s * means[j] and -(s * means[j]) (f32 products).
    Then 0.0 and 1.0 (127 + 127 + 2 = 256 values), sorted ascending: code[0] = -0.99296874, code[127] = 0,
    code[128] = 5.5e-07, code[254] = 0.99296874, code[255] = 1.0 (no -1.0). Also stored bit-exactly in
    nf4.safetensors ("dynamic_code") and as hex in golden.json ("dynamic_code_hex")."""
    data = []
    for i in range(7):
        b = reference_linspace_f32(0.1, 1.0, 2 ** i + 1)
        means = ((b[:-1] + b[1:]) / f32(2)).astype(f32)
        s = f32(10.0 ** (-6 + i))
        data += list((s * means).astype(f32))
        data += list((-s * means).astype(f32))
    data += [f32(0), f32(1)]
    return np.sort(np.array(data, dtype=f32))


def reference_quantize_lut(code):
    """The 65536-entry table of bitsandbytes' CPU 8-bit quantizer (csrc/cpu_ops.cpp, build_quantize_lut):
    mid[j] = 0.5 * (code[j] + code[j+1]) (f32); for i in 0..65535: val = (2 * f32(i)) / 65535 - 1 (f32 steps);
    lut[i] = number of mid[j] strictly less than val (so a tie goes to the lower code)."""
    code = np.asarray(code, dtype=f32)
    mid = (f32(0.5) * (code[:-1] + code[1:])).astype(f32)
    val = ((f32(2) * np.arange(65536).astype(f32)) / f32(65535) - f32(1)).astype(f32)
    return np.searchsorted(mid, val, side="left").astype(np.uint8)


def reference_quantize_blockwise_8bit(x, code, blocksize=DQ_BLOCKSIZE):
    """bitsandbytes.functional.quantize_blockwise(A f32, code, blocksize) on x86-64 CPU: the C++ kernel
    cquantize_blockwise_cpu_fp32 (quantize_cpu_impl), NOT an exact nearest-code search:
      absmax_b = max |x| over the block (every block, the last may be partial; 0 if all zero);
      if absmax_b == 0: every code of the block is 0 (code[0], not the zero entry) and absmax_b = 0 is stored;
      inv = 1 / absmax_b (f32); v = clamp(x * inv, -1, 1) (f32); t = (v + 1) * 0.5 (f32, f32);
      idx = trunc(fmaf(t, 65535, 0.5)) as u16 -- a FUSED multiply-add (the shipped binary uses vfmadd213ss;
      computing t*65535 + 0.5 in f64 and rounding once to f32 is the same, since that f64 result is exact);
      q = LUT[idx] (reference_quantize_lut)."""
    a = np.asarray(x, dtype=f32).reshape(-1)
    lut = reference_quantize_lut(code)
    nblocks = -(-a.size // blocksize)
    q = np.zeros(a.size, dtype=np.uint8)
    absmax = np.zeros(nblocks, dtype=f32)
    for b in range(nblocks):
        blk = a[b * blocksize:(b + 1) * blocksize]
        am = f32(np.abs(blk).max()) if blk.size else f32(0)
        absmax[b] = am
        if am == 0:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            inv = f32(f32(1) / am)  # inf when am < 2**-128 (subnormal); then x * inv is +-inf, or NaN for x == 0
            v = np.clip((blk * inv).astype(f32), f32(-1), f32(1))
            t = ((v + f32(1)).astype(f32) * f32(0.5)).astype(f32)
            y = (t.astype(np.float64) * 65535.0 + 0.5).astype(f32)  # == fmaf(t, 65535.0f, 0.5f)
        idx = np.where(np.isnan(y), f32(0), y).astype(np.int64).astype(np.uint16)  # NaN: cvttss2si -> idx 0
        q[b * blocksize:(b + 1) * blocksize] = lut[idx]
    return q, absmax


def reference_dequantize_blockwise_8bit(q, absmax, code, blocksize=DQ_BLOCKSIZE):
    """code[q[i]] * absmax[i // blocksize], one f32 multiply."""
    q = np.asarray(q, dtype=np.uint8).reshape(-1)
    return (np.asarray(code, dtype=f32)[q] * np.asarray(absmax, dtype=f32)[np.arange(q.size) // blocksize]).astype(f32)


def reference_double_quant(absmax, code):
    """quantize_4bit(..., compress_statistics=True): offset = torch.mean(absmax) = reference_torch_sum_f32(absmax)
    / numel (f32 division); then 8-bit blockwise quantization (blocksize 256, dynamic code) of (absmax - offset)
    (f32 subtraction). Returns offset, q (uint8, one per NF4 block), absmax2 (f32, one per 256 NF4 blocks)."""
    absmax = np.asarray(absmax, dtype=f32)
    offset = f32(reference_torch_sum_f32(absmax) / f32(absmax.size))
    q, absmax2 = reference_quantize_blockwise_8bit((absmax - offset).astype(f32), code, DQ_BLOCKSIZE)
    return offset, q, absmax2


def reference_double_dequant_absmax(q, absmax2, offset, code):
    """The NF4 absmax used at dequantization: code[q[j]] * absmax2[j // 256] + offset (two f32 roundings, no FMA)."""
    return (reference_dequantize_blockwise_8bit(q, absmax2, code, DQ_BLOCKSIZE) + f32(offset)).astype(f32)


# ---------------------------------------------------------------------------------------------------------
# bitsandbytes side
# ---------------------------------------------------------------------------------------------------------

def bnb_default_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bitsandbytes' own pure-torch kernel (backends/default/ops.py), eagerly (not torch.compile'd)."""
    if A.dtype != torch.uint8:
        A = A.view(torch.uint8)
    compute = getattr(bnb_default_ops._dequantize_4bit_compute, "__wrapped__",
                      bnb_default_ops._dequantize_4bit_compute)
    return compute(A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape, dtype)


def install_cpu_dequant_fix():
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", bnb_default_dequantize_4bit)


def bnb_quantize(t, double):
    packed, state = bnbF.quantize_4bit(t, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=double)
    return packed, state


def bnb_dequantize(packed, state):
    return bnbF.dequantize_4bit(packed, state).float()


def eq(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---------------------------------------------------------------------------------------------------------
# Edge-case inputs
# ---------------------------------------------------------------------------------------------------------

def nudges(v, k):
    """the k float32 neighbours above and below v (and v)"""
    out = [f32(v)]
    up = dn = f32(v)
    for _ in range(k):
        up = np.nextafter(up, f32(np.inf), dtype=f32)
        dn = np.nextafter(dn, f32(-np.inf), dtype=f32)
        out += [up, dn]
    return out


def bucket(s):
    return int(np.searchsorted(NF4_MIDPOINTS, f32(s), side="left"))


def multiply_vs_divide_values(a, limit):
    """values x (|x| <= a) for which code(clamp(x * (1/a))) != code(clamp(x / a)) in float32"""
    a = f32(a)
    inv = f32(f32(1) / a)
    found = []
    for m in NF4_MIDPOINTS:
        for x in nudges(f32(m * a), 40):
            if abs(x) <= a and bucket(min(max(f32(x * inv), f32(-1)), f32(1))) != bucket(
                    min(max(f32(x / a), f32(-1)), f32(1))):
                found.append(f32(x))
    return found[:limit]


def edge_cases(rng):
    e = {}
    # block 0 all zeros (stored absmax 0), block 1 normal
    e["zero_block"] = np.concatenate([np.zeros(64, f32), rng.standard_normal(64).astype(f32)])
    # values exactly at codebook entries times absmax: absmax 1 (exact), 2.5 and 0.37 (inexact reciprocals)
    rows = []
    for a in [f32(1), f32(2.5), f32(0.37)]:
        rows.append(np.tile((NF4_CODE * a).astype(f32), 4))
    e["codebook_entries"] = np.concatenate(rows)
    # exact ties: absmax 1 and 0.5 (power-of-two scales keep x * inv exact), midpoints and their neighbours
    tie_rows = []
    for a in [f32(1), f32(0.5)]:
        vals = [a]
        for m in NF4_MIDPOINTS:
            vals += nudges(f32(m * a), 1)
        vals += [f32(0)] * (64 - len(vals))
        tie_rows.append(np.array(vals, dtype=f32))
    e["midpoint_ties"] = np.concatenate(tie_rows)
    # full block: x * (1/absmax) and x / absmax fall on different sides of a midpoint (bnb multiplies)
    a = f32(0.3)
    vals = [a] + multiply_vs_divide_values(a, 63)
    check(len(vals) > 1, "no multiply/divide discriminating values found")
    vals += [f32(0)] * (64 - len(vals))
    e["full_block_mul_vs_div"] = np.array(vals, dtype=f32)
    # partial last block (36 values): there bnb DIVIDES by absmax
    a = f32(0.7)
    tail = [a] + multiply_vs_divide_values(a, 35)
    check(len(tail) > 1, "no multiply/divide discriminating values found (partial)")
    tail += [f32(0)] * (36 - len(tail))
    e["partial_block_mul_vs_div"] = np.concatenate([rng.standard_normal(64).astype(f32), np.array(tail, f32)])
    # negative zeros: an all -0.0 block, and -0.0 among normal values
    b1 = rng.standard_normal(64).astype(f32)
    b1[::5] = f32(-0.0)
    e["negative_zero"] = np.concatenate([np.full(64, -0.0, f32), b1])
    # numel not a multiple of 64: 100 (64 + 36) and 130 (64 + 64 + 2)
    e["numel_100"] = rng.standard_normal(100).astype(f32)
    e["numel_130"] = rng.standard_normal(130).astype(f32)
    # odd numel: the last byte's low nibble is padding (code 7)
    e["numel_77"] = rng.standard_normal(77).astype(f32)
    e["odd_2d_7x11"] = rng.standard_normal((7, 11)).astype(f32)
    e["single_block"] = rng.standard_normal(64).astype(f32)
    e["numel_5"] = rng.standard_normal(5).astype(f32)
    # 2-D with rows shorter than a block (blocks straddle rows)
    e["rows_shorter_than_block_3x40"] = rng.standard_normal((3, 40)).astype(f32)
    # the largest |x| of a block is negative (scaled -1 -> code 0)
    b = (rng.standard_normal(64) * 0.5).astype(f32)
    b[10] = f32(-3.0)
    e["negative_absmax"] = b
    # huge magnitudes: 1/absmax is subnormal
    e["huge"] = (rng.uniform(-1, 1, 64) * 3.0e38).astype(f32)
    e["huge"][3] = f32(3.4e38)
    # tiny magnitudes: a full block with absmax below 1e-38 (the reciprocal is floored, the stored absmax is
    # not) and a partial block of subnormals (stored absmax floored to 1e-38f)
    tiny_full = (rng.uniform(-1, 1, 64) * 5e-39).astype(f32)
    tiny_tail = (rng.uniform(-1, 1, 20) * 3e-39).astype(f32)
    e["tiny"] = np.concatenate([tiny_full, tiny_tail])
    e["small_normal"] = (rng.standard_normal(64) * 1e-30).astype(f32)
    # partial last block all zeros (stored absmax = 1e-38f)
    e["zero_partial_block"] = np.concatenate([rng.standard_normal(64).astype(f32), np.zeros(16, f32)])
    # every block has the same absmax: absmax - mean(absmax) == 0, the 8-bit block is all zero (code 0)
    e["constant"] = np.ones(64 * 8, f32)
    # > 256 blocks with varied scales: two 8-bit blocks for the double quant (256 + a last one of 1)
    scales = np.exp(rng.uniform(-3, 1, 257)).astype(f32)
    e["many_blocks"] = (rng.standard_normal((257, 64)).astype(f32) * scales[:, None]).astype(f32).reshape(-1)
    # double quant where absmax - offset is tiny next to the largest deviation: the 8-bit CPU quantizer's
    # 65536-bin table then picks a code that is not the nearest one
    am = [f32(1.5), f32(0.5)] + [f32(1 + k * 2.0 ** -20) for k in range(-15, 15)]
    rows = []
    for j, a in enumerate(am):
        r = (rng.uniform(-1, 1, 64) * 0.9 * a).astype(f32)
        r[j % 64] = a if j % 2 == 0 else -a
        rows.append(r)
    e["dq_tiny_deviations"] = np.concatenate(rows).astype(f32)
    return e


def variant_codes(x, divide_full, multiply_partial, blocksize=BLOCKSIZE):
    """NF4 codes under the two wrong guesses about scaling (to show that the fixtures tell them apart)"""
    a = np.asarray(x, dtype=f32).reshape(-1)
    n = a.size
    full = n - n % blocksize
    out = []
    for b in range(0, n, blocksize):
        blk = a[b:b + blocksize]
        am = np.maximum(np.abs(blk).max(), ABSMAX_FLOOR).astype(f32)
        inv = f32(f32(1) / am)
        if b < full:
            s = (blk / am) if divide_full else (blk * inv)
        else:
            s = (blk * inv) if multiply_partial else (blk / am)
        out.append(np.searchsorted(NF4_MIDPOINTS, np.clip(s.astype(f32), f32(-1), f32(1)), side="left"))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------

def linear_weights(path):
    st = safetensors.torch.load_file(os.path.join(path, "model.safetensors"))
    return {f"model.layers.{i}.{lin}.weight": st[f"model.layers.{i}.{lin}.weight"]
            for i in range(LAYERS) for lin in LINEARS}


def quantize_fixture(name, t, out, meta, code8, cpu_kernel_dq):
    """quantize t with bitsandbytes (plain and double), check the numpy reference, write the keys"""
    t32 = t.float()
    x = t32.numpy()
    numel = x.size
    packed, st = bnb_quantize(t, double=False)
    absmax = st.absmax.numpy()
    dq = bnb_dequantize(packed, st).numpy().reshape(-1)
    rp, ra = reference_nf4_quantize(x)
    check(eq(packed.numpy().reshape(-1), rp), f"{name}: packed differs from the reference")
    check(eq(absmax, ra), f"{name}: absmax differs from the reference")
    check(eq(dq, reference_nf4_dequantize(rp, ra, numel)), f"{name}: dequant differs from the reference")
    check(packed.shape == ((numel + 1) // 2, 1) and st.absmax.shape == (-(-numel // BLOCKSIZE),), name)
    out[f"{name}.packed"] = packed.numpy().reshape(-1)
    out[f"{name}.absmax"] = absmax
    out[f"{name}.dequant"] = dq

    packed2, st2 = bnb_quantize(t, double=True)
    check(eq(packed2.numpy(), packed.numpy()), f"{name}: double quant changed the packed data")
    check(st2.state2.blocksize == DQ_BLOCKSIZE and eq(st2.state2.code.numpy(), code8), name)
    offset = np.array([st2.offset.item()], dtype=f32)
    qabs = st2.absmax.numpy()
    absmax2 = st2.state2.absmax.numpy()
    dq2 = bnb_dequantize(packed2, st2).numpy().reshape(-1)
    r_off, r_q, r_a2 = reference_double_quant(ra, code8)
    check(eq(offset, np.array([r_off], f32)), f"{name}: double-quant offset differs ({offset[0]!r} vs {r_off!r})")
    check(eq(qabs, r_q), f"{name}: double-quant codes differ from the reference")
    check(eq(absmax2, r_a2), f"{name}: double-quant absmax2 differs from the reference")
    r_abs_dq = reference_double_dequant_absmax(r_q, r_a2, r_off, code8)
    check(eq(dq2, reference_nf4_dequantize(rp, r_abs_dq, numel)), f"{name}: double-quant dequant differs")
    out[f"{name}.dq.absmax_q"] = qabs
    out[f"{name}.dq.absmax2"] = absmax2
    out[f"{name}.dq.offset"] = offset
    out[f"{name}.dq.absmax_dequant"] = r_abs_dq
    out[f"{name}.dq.dequant"] = dq2

    # where the 8-bit LUT quantizer is not the nearest code (informative)
    diff = (ra - r_off).astype(f32)
    nearest = np.zeros(diff.size, dtype=np.uint8)
    for b in range(0, diff.size, DQ_BLOCKSIZE):
        blk = diff[b:b + DQ_BLOCKSIZE]
        am = np.abs(blk).max()
        if am > 0:
            with np.errstate(over="ignore", invalid="ignore"):
                s = np.clip((blk * f32(f32(1) / am)).astype(f32), f32(-1), f32(1))
            nearest[b:b + DQ_BLOCKSIZE] = np.abs(s[:, None] - code8[None, :]).argmin(axis=1)
    meta.setdefault("dq_lut_not_nearest", {})[name] = int((nearest != r_q).sum())
    if cpu_kernel_dq is not None:
        meta.setdefault("bnb_cpu_cpp_dequant_wrong", {})[name] = not eq(cpu_kernel_dq[name], dq)


def cpu_kernel_dequants(tensors):
    """bitsandbytes' C++ CPU dequantize_4bit, as shipped (before install_cpu_dequant_fix)"""
    res = {}
    for name, t in tensors.items():
        packed, st = bnb_quantize(t, double=False)
        res[name] = bnb_dequantize(packed, st).numpy().reshape(-1)
    return res


def load_nf4(double):
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                             bnb_4bit_use_double_quant=double)
    m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, quantization_config=cfg, device_map="cpu",
                                             attn_implementation="eager")
    m.eval()
    return m


def disable_bf16_cpu_path(model):
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False


def dequantized_f32_model(qmodel):
    """the plain f32 model whose decoder linears hold the NF4-dequantized weights (for comparison)"""
    m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    qmods = dict(qmodel.named_modules())
    with torch.no_grad():
        for name, mod in m.named_modules():
            if name in qmods and isinstance(qmods[name], bnb.nn.Linear4bit):
                w = qmods[name].weight
                mod.weight.copy_(bnbF.dequantize_4bit(w.data, w.quant_state).float())
    return m


def save_adapter(model, name):
    d = os.path.join(OUT, name)
    model.save_pretrained(d)
    cfg_path = os.path.join(d, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = "tests/fixtures/models/llama"
    if isinstance(cfg.get("target_modules"), list):  # saved from a set: order varies with hash seeds
        cfg["target_modules"] = sorted(cfg["target_modules"])
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def adamw_replay(model, ids, labels):
    """REPLAY_STEPS AdamW steps (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01) of the
    model's trainable parameters in train mode; the loss before each step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.01)
    model.train()
    losses = []
    for _ in range(REPLAY_STEPS):
        opt.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    meta = {}
    nf4 = {}

    # ---- 0) the tables
    code8 = bnbF.create_dynamic_map().numpy()
    check(eq(code8, reference_dynamic_map()), "dynamic map differs from the reference construction")
    check(eq(_get_4bit_code("nf4", torch.device("cpu")).numpy(), NF4_CODE), "NF4 codebook differs")
    check(eq(bnb_default_ops._get_4bit_quantize_bounds("nf4", torch.device("cpu"))[0].numpy(), NF4_MIDPOINTS),
          "NF4 midpoints differ")
    nf4["nf4_code"] = NF4_CODE
    nf4["nf4_midpoints"] = NF4_MIDPOINTS
    nf4["dynamic_code"] = code8
    meta["nf4_code_hex"] = [f"0x{v:08x}" for v in NF4_CODE.view(np.uint32)]
    meta["nf4_midpoints_hex"] = [f"0x{v:08x}" for v in NF4_MIDPOINTS.view(np.uint32)]
    meta["dynamic_code_hex"] = [f"0x{v:08x}" for v in code8.view(np.uint32)]
    meta["absmax_floor_hex"] = f"0x{ABSMAX_FLOOR.view(np.uint32):08x}"

    # ---- 1) tensors: model weights, bf16 model weights, edge cases
    weights = linear_weights(BASE)
    weights_bf16 = linear_weights(BASE_BF16)
    edges = {f"edge.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in edge_cases(rng).items()}
    everything = dict(weights)
    everything.update(edges)
    shipped = cpu_kernel_dequants(everything)       # bnb's C++ CPU dequant, before the fix
    shipped_bf16 = cpu_kernel_dequants({k: v for k, v in weights_bf16.items()})
    install_cpu_dequant_fix()

    for name, t in everything.items():
        if name.startswith("edge."):
            nf4[f"{name}.input"] = t.numpy().copy()
        quantize_fixture(name, t, nf4, meta, code8, shipped)

    # the edge cases tell x * (1/absmax) (full blocks) and x / absmax (the partial last block) from the other way
    for name, kw in [("edge.full_block_mul_vs_div", dict(divide_full=True, multiply_partial=False)),
                     ("edge.partial_block_mul_vs_div", dict(divide_full=False, multiply_partial=True))]:
        x = everything[name].numpy()
        right = variant_codes(x, divide_full=False, multiply_partial=False)
        wrong = variant_codes(x, **kw)
        rp, _ = reference_nf4_quantize(x)
        q = np.empty(rp.size * 2, np.uint8)
        q[0::2], q[1::2] = rp >> 4, rp & 0xF
        check(np.array_equal(q[:x.size], right), name)
        n_diff = int((right != wrong).sum())
        check(n_diff > 0, f"{name} does not discriminate")
        meta.setdefault("codes_that_differ_under_the_other_scaling", {})[name] = n_diff
    check(meta["dq_lut_not_nearest"]["edge.dq_tiny_deviations"] > 0, "dq_tiny_deviations does not exercise the LUT")

    # bf16 inputs: same packed/absmax as the exact f32 upcast? (dequant is then rounded to bf16 by bnb)
    bf16_same = True
    for name, t in weights_bf16.items():
        check(t.dtype == torch.bfloat16, name)
        p_bf, s_bf = bnb_quantize(t, double=False)
        p_up, s_up = bnb_quantize(t.float(), double=False)
        same = eq(p_bf.numpy(), p_up.numpy()) and eq(s_bf.absmax.numpy(), s_up.absmax.numpy())
        bf16_same = bf16_same and same
        d_bf = bnb_dequantize(p_bf, s_bf)                      # bnb rounds f32 code*absmax to bf16
        d_up = bnb_dequantize(p_up, s_up).to(torch.bfloat16).float()
        check(torch.equal(d_bf, d_up), f"{name}: bf16 dequant is not the bf16 rounding of the f32 dequant")
        p_bf2, s_bf2 = bnb_quantize(t, double=True)
        p_up2, s_up2 = bnb_quantize(t.float(), double=True)
        bf16_same = bf16_same and eq(s_bf2.absmax.numpy(), s_up2.absmax.numpy()) and \
            s_bf2.offset.item() == s_up2.offset.item() and eq(s_bf2.state2.absmax.numpy(), s_up2.state2.absmax.numpy())
        nf4[f"bf16.{name}.packed"] = p_bf.numpy().reshape(-1)
        nf4[f"bf16.{name}.absmax"] = s_bf.absmax.numpy()
        meta.setdefault("bnb_cpu_cpp_dequant_wrong", {})[f"bf16.{name}"] = not eq(
            shipped_bf16[name], d_bf.numpy().reshape(-1))
    check(bf16_same, "quantizing bf16 differs from quantizing its f32 upcast")
    meta["bf16_input_same_as_f32_upcast"] = bf16_same

    # (no safetensors metadata: its key order is not stable from run to run, and the file should be)
    safetensors.numpy.save_file(nf4, os.path.join(OUT, "nf4.safetensors"))
    meta["nf4_safetensors"] = {
        "quant_type": "nf4", "blocksize": BLOCKSIZE, "double_quant_blocksize": DQ_BLOCKSIZE,
        "<name>.packed": "uint8[ceil(numel/2)], flat row-major, element 2k in the high nibble of byte k",
        "<name>.absmax": "f32[ceil(numel/64)]",
        "<name>.dequant": "f32[numel], flat",
        "<name>.dq.absmax_q": "uint8[ceil(numel/64)], 8-bit codes of absmax - offset (packed data is unchanged)",
        "<name>.dq.absmax2": "f32[ceil(ceil(numel/64)/256)]",
        "<name>.dq.offset": "f32[1], mean of absmax",
        "<name>.dq.absmax_dequant": "f32[ceil(numel/64)], dynamic_code[absmax_q] * absmax2[j // 256] + offset",
        "<name>.dq.dequant": "f32[numel], flat",
        "edge.<case>.input": "f32, original shape",
        "bf16.<name>.packed / .absmax": "quantize_4bit of the bf16 tensors of tests/fixtures/models/llama-bf16",
        "nf4_code / nf4_midpoints / dynamic_code": "f32[16] / f32[15] / f32[256]"}

    # ---- 2) logits through transformers + bitsandbytes
    g = safetensors.torch.load_file(LORA_GOLDEN)
    ids, labels = g["input_ids"], g["labels"]
    golden = {"input_ids": ids.clone(), "labels": labels.clone()}
    quantized = {}
    for double in (False, True):
        tag = "nf4-dq" if double else "nf4"
        base = load_nf4(double)
        disable_bf16_cpu_path(base)
        q_mods = sorted(n for n, mdl in base.named_modules() if isinstance(mdl, bnb.nn.Linear4bit))
        quantized[tag] = q_mods
        # the loaded weights are exactly quantize_4bit of the f32 checkpoint weights
        for n in q_mods:
            w = dict(base.named_modules())[n].weight
            ref = nf4[f"{n}.weight.packed"]
            check(eq(w.data.numpy().reshape(-1), ref), f"{tag} {n}: loaded packed weight differs")
            check(w.quant_state.nested == double and w.quant_state.blocksize == BLOCKSIZE, n)
            if double:
                check(eq(w.quant_state.absmax.numpy(), nf4[f"{n}.weight.dq.absmax_q"]), n)
                check(eq(w.quant_state.state2.absmax.numpy(), nf4[f"{n}.weight.dq.absmax2"]), n)
            else:
                check(eq(w.quant_state.absmax.numpy(), nf4[f"{n}.weight.absmax"]), n)
        float_params = {n: str(p.dtype) for n, p in base.named_parameters() if p.dtype != torch.uint8}
        check(all(v == "torch.float32" for v in float_params.values()), f"non-f32 float params: {float_params}")
        meta[f"{tag}.not_quantized_params"] = sorted(float_params)
        with torch.no_grad():
            golden[f"logits.{tag}"] = base(ids).logits.contiguous()
            ref_model = dequantized_f32_model(base)
            meta[f"{tag}.base_equals_f32_model_with_dequantized_weights"] = bool(
                torch.equal(ref_model(ids).logits, golden[f"logits.{tag}"]))
        m = PeftModel.from_pretrained(base, ADAPTER_QV)
        m.eval()
        with torch.no_grad():
            golden[f"logits.{tag}.adapter-qv"] = m(ids).logits.contiguous()
            ref_peft = PeftModel.from_pretrained(ref_model, ADAPTER_QV)
            ref_peft.eval()
            meta[f"{tag}.adapter_equals_f32_model_with_dequantized_weights"] = bool(
                torch.equal(ref_peft(ids).logits, golden[f"logits.{tag}.adapter-qv"]))
    check(quantized["nf4"] == quantized["nf4-dq"], "double quant changed the quantized modules")
    meta["quantized_modules"] = quantized["nf4"]
    check(len(quantized["nf4"]) == LAYERS * len(LINEARS), "unexpected set of quantized modules")

    # ---- 3) QLoRA replay
    base = load_nf4(False)
    disable_bf16_cpu_path(base)
    torch.manual_seed(SEED + 2)
    m = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                        lora_dropout=0.0, task_type="CAUSAL_LM"))
    save_adapter(m, "adapter-init")
    check(all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad), "LoRA parameters are not f32")
    losses = adamw_replay(m, ids, labels)
    m.eval()
    save_adapter(m, "adapter-trained")
    meta["replay"] = {"base": "nf4 (no double quant), compute dtype float32", "steps": REPLAY_STEPS, "lr": 1e-3,
                      "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "r": 4, "lora_alpha": 8,
                      "target_modules": ["q_proj", "v_proj"], "losses": losses}

    # the same replay on the f32 model holding the dequantized weights, from the same adapter-init
    ref_base = dequantized_f32_model(load_nf4(False))
    ref = PeftModel.from_pretrained(ref_base, os.path.join(OUT, "adapter-init"), is_trainable=True)
    ref_losses = adamw_replay(ref, ids, labels)
    meta["replay"]["losses_f32_model_with_dequantized_weights"] = ref_losses
    meta["replay"]["max_abs_loss_diff_vs_f32_dequantized"] = max(abs(a - b) for a, b in zip(losses, ref_losses))

    safetensors.torch.save_file(golden, os.path.join(OUT, "golden.safetensors"))

    # ---- 4) diagnostics: bitsandbytes' CPU path untouched (C++ dequant, bf16 AVX512 GEMV in eval)
    meta["diagnostics"] = diagnostics(ids, golden)

    json.dump(meta, open(os.path.join(OUT, "golden.json"), "w"), indent=2)
    prov = {"script": "scripts/make_qlora_fixtures.py", "seed": SEED, "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bnb.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bnb_has_avx512bf16": bool(bnbF.has_avx512bf16())}
    json.dump(prov, open(os.path.join(OUT, "provenance.json"), "w"), indent=2)
    print(json.dumps(prov))
    print("losses", losses)


def diagnostics(ids, golden):
    """Run in a child process without the CPU dequant fix: how far bnb's shipped CPU path is from the golden."""
    import subprocess
    code = (
        "import sys, json, torch\n"
        "sys.path.insert(0, %r)\n"
        "import make_qlora_fixtures as M\n"
        "from safetensors.torch import load_file\n"
        "g = load_file(%r)\n"
        "res = {}\n"
        "for double in (False, True):\n"
        "    tag = 'nf4-dq' if double else 'nf4'\n"
        "    ref = g['logits.' + tag]\n"
        "    m = M.load_nf4(double)\n"
        "    try:\n"
        "        with torch.no_grad():\n"
        "            r = (m(g['input_ids']).logits - ref).abs().max().item()\n"
        "    except Exception as e:\n"
        "        r = 'fails: ' + type(e).__name__ + ': ' + str(e)\n"
        "    res[tag + '.shipped_eval_forward(avx512bf16 repack + bf16 gemv)'] = r\n"
        "    m = M.load_nf4(double)\n"
        "    M.disable_bf16_cpu_path(m)\n"
        "    with torch.no_grad():\n"
        "        r = (m(g['input_ids']).logits - ref).abs().max().item()\n"
        "    res[tag + '.shipped_cpp_dequant_forward.max_abs_logit_diff'] = r\n"
        "print('DIAG' + json.dumps(res))\n"
    ) % (os.path.dirname(os.path.abspath(__file__)), os.path.join(OUT, "golden.safetensors"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("DIAG")][-1]
    return json.loads(line[4:])


if __name__ == "__main__":
    main()
