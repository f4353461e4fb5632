//! GGUF reading and writing against gguf-py and llama.cpp's converters (fixtures of
//! scripts/make_gguf_fixtures.py): metadata of every value type, alignment, dequantization of every
//! type lora reads bit for bit, malformed files named, and `lora export` against
//! `convert_lora_to_gguf.py`.

use std::path::{Path, PathBuf};

use lora_merge::gguf::{GgmlType, GgufFile, Value, encode};
use lora_merge::safetensors::SafetensorsFile;
use lora_merge::{ExportReport, export_adapter_gguf, permute_rows};
use serde_json::Value as Json;

use crate::common::*;

fn gguf_fixtures() -> PathBuf {
    fixtures().join("gguf")
}

fn json(name: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(gguf_fixtures().join(name)).unwrap()).unwrap()
}

/// Compares a metadata value with the fixture's JSON description.
fn same_value(v: &Value, want: &Json) -> bool {
    // Nested arrays are described as {type, item_type, len, value}.
    if let (Value::Array(..), Some(inner)) = (v, want.get("value")) {
        return same_value(v, inner);
    }
    match (v, want) {
        (Value::Array(_, items), Json::Array(w)) => {
            items.len() == w.len() && items.iter().zip(w).all(|(a, b)| same_value(a, b))
        }
        (Value::String(s), Json::String(w)) => s == w,
        (Value::Bool(b), Json::Bool(w)) => b == w,
        (Value::F32(x), w) => w.as_f64().is_some_and(|w| (*x as f64 - w).abs() <= 1e-6 * w.abs().max(1e-30)),
        (Value::F64(x), w) => w.as_f64() == Some(*x),
        (v, w) => match (v.as_i64(), v.as_u64()) {
            (Some(i), _) if w.is_i64() => w.as_i64() == Some(i),
            (_, Some(u)) => w.as_u64() == Some(u),
            _ => false,
        },
    }
}

#[test]
fn metadata_of_every_value_type_and_tensor_infos_equal_gguf_py() {
    let q = json("quants.json");
    let g = GgufFile::open(gguf_fixtures().join("quants.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.metadata.len() as u64, q["n_kv"].as_u64().unwrap());
    assert_eq!(g.data_start, q["data_offset"].as_u64().unwrap());
    for kv in q["kv"].as_array().unwrap() {
        let key = kv["key"].as_str().unwrap();
        let v = g.get(key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(Value::type_name(v.type_id()), kv["type"].as_str().unwrap(), "{key}");
        if let Some(bits) = kv["bits"].as_str() {
            let bits = u64::from_str_radix(bits.trim_start_matches("0x"), 16).unwrap();
            match v {
                Value::F32(x) => assert_eq!(x.to_bits() as u64, bits, "{key}"),
                Value::F64(x) => assert_eq!(x.to_bits(), bits, "{key}"),
                _ => panic!("{key}: bits for a non-float"),
            }
        } else {
            assert!(same_value(v, &kv["value"]), "{key}: {v:?} vs {}", kv["value"]);
        }
    }
    for t in q["tensors"].as_array().unwrap() {
        let info = g.tensor(t["name"].as_str().unwrap()).unwrap();
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(info.dims, dims);
        assert_eq!(info.type_id as u64, t["ggml_type_id"].as_u64().unwrap());
        assert_eq!(info.offset, t["offset"].as_u64().unwrap());
        assert_eq!(g.bytes(info).unwrap().len() as u64, t["nbytes"].as_u64().unwrap());
    }
}

#[test]
fn every_type_dequantizes_as_gguf_py_bit_for_bit() {
    let g = GgufFile::open(gguf_fixtures().join("quants.gguf")).unwrap();
    let expected = SafetensorsFile::open(gguf_fixtures().join("quants.safetensors")).unwrap();
    let mut types = Vec::new();
    for t in &g.tensors {
        let ours = g.to_f32(t).unwrap();
        let info = &expected.tensors()[&t.name];
        let mut want = vec![0f32; info.numel()];
        lora_merge::dtype::decode_f32(expected.bytes(info), info.dtype, &mut want);
        assert_eq!(t.shape(), info.shape, "{}", t.name);
        let differ = ours.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{}: {differ} values differ from gguf-py", t.name);
        types.push(t.ggml_type().unwrap());
    }
    for t in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert!(types.contains(&t), "{} not covered", t.name());
    }
}

#[test]
fn non_default_alignment_is_honoured() {
    let q = json("quants.json");
    let a = &q["aligned"];
    let g = GgufFile::open(gguf_fixtures().join("aligned.gguf")).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_start, a["data_offset"].as_u64().unwrap());
    for (name, values) in a["values_f32"].as_object().unwrap() {
        let t = g.tensor(name).unwrap();
        let ours = g.to_f32(t).unwrap();
        let want: Vec<f32> = values.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(ours, want, "{name}");
    }
}

/// Re-encoding what was read gives the same bytes (header and data), and malformed files are
/// errors that name what is wrong.
#[test]
fn writer_round_trips_and_malformed_files_are_named() {
    let path = gguf_fixtures().join("aligned.gguf");
    let original = std::fs::read(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let tensors: Vec<lora_merge::gguf::TensorOut> = g
        .tensors
        .iter()
        .map(|t| lora_merge::gguf::TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type().unwrap(),
            data: g.bytes(t).unwrap().to_vec(),
        })
        .collect();
    let ours = encode(&g.metadata, &tensors).unwrap();
    assert_eq!(&ours[..original.len().min(ours.len())], &original[..original.len().min(ours.len())]);

    let d = temp_dir("gguf-bad");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"GGUX\x03\0\0\0".to_vec(), "not a GGUF file"),
        ("truncated", original[..original.len() / 3].to_vec(), "truncated"),
        (
            "version",
            {
                let mut b = original.clone();
                b[4] = 9;
                b
            },
            "GGUF version 9 is not supported",
        ),
        ("data", original[..original.len() - 100].to_vec(), "runs past the end of the data"),
        ("empty", Vec::new(), "the magic"),
    ];
    for (tag, bytes, want) in cases {
        let p = d.join(format!("{tag}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(&format!("{tag}.gguf")), "{tag}: {e}");
    }
    // A huge array count is refused before anything is allocated.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"big");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    let p = d.join("array.gguf");
    std::fs::write(&p, b).unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("metadata 'big'") && e.contains("cannot fit"), "{e}");
}

/// `export_adapter_gguf` of the fixture adapter `lora/<name>` on the llama fixture base.
fn export_fixture(name: &str, out: &Path, ggml_type: GgmlType, force: bool) -> lora_merge::Result<ExportReport> {
    export_adapter_gguf(&fixtures().join("lora").join(name), &fixtures().join("models/llama"), out, ggml_type, force)
}

/// `lora export` writes what `convert_lora_to_gguf.py` writes for the same PEFT adapter: the same
/// metadata that llama.cpp reads, the same tensor names, dimensions and values (q's B permuted).
#[test]
fn export_equals_convert_lora_to_gguf() {
    let d = temp_dir("gguf-export");
    let out = d.join("adapter.gguf");
    let r = export_fixture("adapter-qv", &out, GgmlType::F32, false).unwrap();
    assert_eq!((r.modules, r.alpha, r.folded), (9, 8.0, 0));
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(gguf_fixtures().join("adapter-qv.gguf")).unwrap();
    for key in ["general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}");
    }
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((o.dims.clone(), o.type_id), (t.dims.clone(), t.type_id), "{}", t.name);
        assert_eq!(ours.to_f32(o).unwrap(), theirs.to_f32(t).unwrap(), "{}", t.name);
    }
    // No overwrite without force; f16 and q8_0 (with its fallback for rows of 4) write too.
    let e = export_fixture("adapter-qv", &out, GgmlType::F32, false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let q8 = export_fixture("adapter-qv", &out, GgmlType::Q8_0, true).unwrap();
    // Rows of 4 (every B) and of 48 (down_proj's A) are not whole blocks of 32; q's and v's A are.
    assert_eq!(q8.fallbacks.len(), 9 + 3, "{:?}", q8.fallbacks);
    assert!(!q8.fallbacks.iter().any(|n| n.ends_with("attn_q.weight.lora_a")), "{:?}", q8.fallbacks);
    let g = GgufFile::open(&out).unwrap();
    let a = g.tensor("blk.0.attn_q.weight.lora_a").unwrap();
    assert_eq!(a.ggml_type(), Some(GgmlType::Q8_0));
    let exact = theirs.to_f32(theirs.tensor("blk.0.attn_q.weight.lora_a").unwrap()).unwrap();
    let approx = g.to_f32(a).unwrap();
    let amax = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(exact.iter().zip(&approx).all(|(x, y)| (x - y).abs() <= amax / 127.0), "Q8_0 error beyond one step");
}

#[test]
fn rslora_scale_is_folded_into_b_and_permutation_inverts() {
    let d = temp_dir("gguf-rslora");
    let out = d.join("rs.gguf");
    let r = export_fixture("adapter-rslora", &out, GgmlType::F32, false).unwrap();
    // alpha / r with r = 2 must give alpha / sqrt(2): alpha' = 4 · sqrt(2).
    assert!((r.alpha - 4.0 * 2f32.sqrt()).abs() < 1e-6, "{}", r.alpha);
    assert_eq!(r.folded, 0);
    // The permutation of rows is a bijection that the model loader's inverse undoes.
    let v: Vec<f32> = (0..64 * 3).map(|i| i as f32).collect();
    let p = permute_rows(&v, 64, 3, 4);
    assert_ne!(p, v);
    let mut sorted = p.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, v);
}

/// `lora export MODEL_DIR` writes the GGUF model `convert_hf_to_gguf.py` writes: the same metadata
/// keys with the same values, the same tensors (q/k permuted, rope_freqs), streamed.
#[test]
fn model_export_equals_convert_hf_to_gguf() {
    let d = temp_dir("gguf-model-export");
    for (name, theirs) in [("llama", "llama-f32.gguf"), ("qwen2", "qwen2-f32.gguf"), ("qwen3", "qwen3-f32.gguf")] {
        let out = d.join(format!("{name}.gguf"));
        let r =
            lora_merge::export_model_gguf(&fixtures().join("models").join(name), &out, GgmlType::F32, false).unwrap();
        assert_eq!(r.pre, "gpt-2");
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(gguf_fixtures().join(theirs)).unwrap();
        for (k, v) in &theirs.metadata {
            if ["general.name", "general.size_label", "tokenizer.ggml.add_sep_token"].contains(&k.as_str()) {
                continue;
            }
            let o = ours.get(k).unwrap_or_else(|| panic!("{name}: key {k} missing"));
            match (o, v) {
                (Value::F32(a), Value::F32(b)) => assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{name}: {k}"),
                _ => assert_eq!(o, v, "{name}: {k}"),
            }
        }
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{name}");
        for t in &theirs.tensors {
            let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{name}: {} missing", t.name));
            assert_eq!((&o.dims, o.type_id), (&t.dims, t.type_id), "{name}: {}", t.name);
            let (a, b) = (ours.to_f32(o).unwrap(), theirs.to_f32(t).unwrap());
            let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-6, "{name}: {} differs by {diff}", t.name);
        }
    }
    let e =
        lora_merge::export_model_gguf(&fixtures().join("models/llama"), &d.join("llama.gguf"), GgmlType::F32, false)
            .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
}

/// Seeded random corruption of real files (flipped bytes, truncation, huge counts): opening and
/// reading every tensor returns an error or values, never a panic.
#[test]
fn corrupted_gguf_files_never_panic() {
    let d = temp_dir("gguf-corrupt");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut opened = 0;
    for name in ["aligned.gguf", "quants.gguf", "adapter-qv.gguf"] {
        let original = std::fs::read(gguf_fixtures().join(name)).unwrap();
        for case in 0..300 {
            let mut bytes = original.clone();
            match case % 3 {
                0 => {
                    // A few random bytes anywhere, most often in the header.
                    for _ in 0..1 + next() % 4 {
                        let limit = if next() % 4 == 0 { bytes.len() } else { bytes.len().min(2048) };
                        let i = next() as usize % limit;
                        bytes[i] = next() as u8;
                    }
                }
                1 => bytes.truncate(next() as usize % bytes.len()),
                _ => {
                    // A count or length field set to something huge.
                    let i = 8 + (next() as usize % 64) * 8 % bytes.len().min(1024);
                    let end = (i + 8).min(bytes.len());
                    bytes[i..end].copy_from_slice(&u64::MAX.to_le_bytes()[..end - i]);
                }
            }
            let p = d.join("x.gguf");
            std::fs::write(&p, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| {
                if let Ok(g) = GgufFile::open(&p) {
                    for t in &g.tensors {
                        let _ = g.to_f32(t);
                    }
                    true
                } else {
                    false
                }
            });
            match result {
                Ok(true) => opened += 1,
                Ok(false) => {}
                Err(_) => panic!("{name} case {case}: reading a corrupted file panicked"),
            }
        }
    }
    assert!(opened > 0, "some corruptions (in tensor data) still open");
}
