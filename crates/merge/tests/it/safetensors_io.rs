//! Corrupt safetensors files are clear errors naming the file, never panics; the writer's shards
//! read back.

use lora_merge::safetensors::{PlannedTensor, SafetensorsFile, ShardedWriter, parse_size};
use lora_merge::{DType, MergeError, ModelDir};

use crate::common::*;

fn open_err(tag: &str, bytes: &[u8]) -> String {
    let dir = temp_dir(tag);
    let p = dir.join("bad.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let e = SafetensorsFile::open(&p).unwrap_err();
    assert!(matches!(e, lora_formats::FormatError::Safetensors { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("bad.safetensors"), "the message must name the file: {msg}");
    std::fs::remove_dir_all(&dir).unwrap();
    msg
}

fn file_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn corrupt_files_are_errors() {
    let (header, data) = f32_safetensors_parts(&[("a", vec![2, 2], vec![1.0; 4]), ("b", vec![3], vec![2.0; 3])]);
    let good = file_with_header(&header, &data);
    // short file
    assert!(open_err("short", &good[..5]).contains("shorter than the 8-byte"));
    // truncated data: offsets beyond the file
    assert!(open_err("trunc", &good[..good.len() - 4]).contains("beyond"));
    // header length beyond the file
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(open_err("hlen", &huge).contains("header claims"));
    // overlapping ranges
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert!(open_err("overlap", &file_with_header(h, &[0; 12])).contains("overlap"));
    // unknown dtype
    let h = r#"{"a":{"dtype":"F8_E9M9","shape":[2],"data_offsets":[0,2]}}"#;
    assert!(open_err("dtype", &file_with_header(h, &[0; 2])).contains("unknown dtype 'F8_E9M9'"));
    // size disagreeing with the shape
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    assert!(open_err("size", &file_with_header(h, &[0; 8])).contains("tensor 'a'"));
    // not JSON
    assert!(open_err("json", &file_with_header("{nope", &[])).contains("not a JSON object"));
}

#[test]
fn sharded_writer_round_trips() {
    let dir = temp_dir("shards");
    let planned: Vec<PlannedTensor> =
        (0..5).map(|i| PlannedTensor { name: format!("t{i}"), dtype: DType::BF16, shape: vec![100, 10] }).collect();
    let w = ShardedWriter::create(&dir, &planned, parse_size("4KB").unwrap()).unwrap();
    for i in 0..5 {
        let mut bytes = vec![0u8; 2000];
        let vals: Vec<f32> = (0..1000).map(|j| (i * 1000 + j) as f32).collect();
        lora_merge::dtype::encode_f32(&vals, DType::BF16, &mut bytes);
        w.write(i, 0, &bytes).unwrap();
    }
    w.finish().unwrap();
    assert!(dir.join("model.safetensors.index.json").is_file());
    assert!(dir.join("model-00003-of-00003.safetensors").is_file());
    let m = ModelDir::open(&dir).unwrap();
    assert_eq!(m.len(), 5);
    let all = load_all(&dir);
    // 3007 in bf16 (8 significant bits, spacing 16 at 2^11) rounds to 3008.
    assert_eq!(all["t3"][7], 3008.0);
    assert_eq!(all["t0"][5], 5.0);
    assert_eq!(parse_size("5GB"), Some(5_000_000_000));
    assert_eq!(parse_size("2GiB"), Some(2 << 30));
    assert_eq!(parse_size("lots"), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file cut short after it was opened (changed during a merge) is an error naming it, from deep
/// inside the readers, not a panic.
#[test]
fn file_truncated_during_a_merge_is_an_error() {
    let dir = temp_dir("truncated-mid-merge");
    let p = dir.join("m.safetensors");
    let (header, data) = f32_safetensors_parts(&[("a", vec![64], vec![1.0; 64])]);
    std::fs::write(&p, file_with_header(&header, &data)).unwrap();
    let f = SafetensorsFile::open(&p).unwrap();
    let info = f.tensors()["a"].clone();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 100).unwrap();
    let r: lora_merge::Result<()> = lora_merge::safetensors::catch_read_failures(|| {
        let mut buf = vec![0u8; 256];
        f.read_part(&info, 0, &mut buf);
        Ok(())
    });
    let e = r.unwrap_err();
    assert!(matches!(e, MergeError::Format(lora_formats::FormatError::Io { .. })), "{e:?}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("m.safetensors") && chain.contains("changed during the merge"), "{chain}");
    std::fs::remove_dir_all(&dir).unwrap();
}
