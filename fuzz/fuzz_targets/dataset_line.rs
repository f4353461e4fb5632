#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lora_fuzzing::dataset_line(data);
});
