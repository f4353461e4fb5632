//! config.json through the architecture declarations: lookups, README's table, and the values that
//! must be errors naming their key rather than silent defaults.

use std::path::PathBuf;

use lora_formats::hf_config::{ARCHITECTURES, Architecture, ModelConfig, architectures_table};
use serde_json::{Value, json};

/// The workspace root, read at run time (see the CLI tests' `common::root`).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

fn fixture_config(model: &str) -> Value {
    let p = root().join("tests/fixtures/models").join(model).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Writes `config` to a fresh folder and resolves it: the error's whole text, or the config.
fn resolve(name: &str, config: &Value) -> Result<ModelConfig, String> {
    let dir = std::env::temp_dir().join(format!("lora-formats-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = ModelConfig::from_file(&path).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

#[test]
fn each_architecture_is_one_declaration_found_by_its_names() {
    for spec in &ARCHITECTURES {
        let a = spec.architecture;
        assert_eq!(a.spec(), spec);
        assert_eq!(Architecture::from_class(spec.class), Some((a, false)));
        assert_eq!(Architecture::from_model_type(spec.model_type), Some((a, false)));
        if let Some(w) = spec.wrapper {
            assert_eq!(Architecture::from_class(w.class), Some((a, true)));
            assert_eq!(Architecture::from_model_type(w.model_type), Some((a, true)));
        }
    }
    assert_eq!(Architecture::from_class("GemmaForCausalLM"), None);
    // The fixtures resolve to the declarations' facts.
    let q2 = resolve("q2", &fixture_config("qwen2")).unwrap();
    assert!(q2.qkv_bias && !q2.o_bias && !q2.qk_norm, "Qwen2: q/k/v biases whatever attention_bias says");
    let q35 = resolve("q35", &fixture_config("qwen3_5-hub")).unwrap();
    assert_eq!(q35.text_prefix, "model.language_model");
    assert_eq!(q35.checkpoint_class(), "Qwen3_5ForConditionalGeneration");
    assert!(q35.zero_centred_norms && q35.qk_norm && q35.rotary_dim == 8);
    let mut mistral = fixture_config("mistral");
    mistral["attention_bias"] = json!(true);
    let m = resolve("mistral", &mistral).unwrap();
    assert!(!m.qkv_bias && !m.o_bias, "Mistral has no attention biases");
}

#[test]
fn readme_lists_the_declared_architectures() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = architectures_table();
    assert!(
        readme.contains(&table),
        "README.md's table of architectures differs from the declarations; it should read:\n{table}"
    );
    for spec in &ARCHITECTURES {
        assert!(table.contains(spec.class) && table.contains(spec.model_type), "{} missing", spec.class);
    }
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_its_key() {
    let cases: [(&str, &str, fn(&mut Value), &str); 6] = [
        ("theta-string", "llama", |c| c["rope_theta"] = json!("500000"), "rope_theta"),
        (
            "theta-in-params",
            "mistral",
            |c| c["rope_parameters"]["rope_theta"] = json!("1e6"),
            "rope_parameters.rope_theta",
        ),
        (
            "partial",
            "qwen3_5-hub",
            |c| c["text_config"]["rope_parameters"]["partial_rotary_factor"] = json!("0.25"),
            "rope_parameters.partial_rotary_factor",
        ),
        ("partial-top", "qwen3_5", |c| c["partial_rotary_factor"] = json!("0.25"), "partial_rotary_factor"),
        ("layer-types", "qwen3_5", |c| c["layer_types"] = json!({"0": "full_attention"}), "layer_types"),
        ("hub-hidden", "qwen3_5-hub", |c| c["text_config"]["hidden_size"] = json!("32"), "text_config.hidden_size"),
    ];
    for (name, model, edit, key) in cases {
        let mut c = fixture_config(model);
        assert!(resolve(name, &c).is_ok(), "{model} resolves before the edit");
        edit(&mut c);
        let err = resolve(name, &c).expect_err(name);
        assert!(err.contains(key), "{name}: the error should name {key}: {err}");
    }
    let mut c = fixture_config("llama");
    c["rope_parameters"]["rope_type"] = json!(3);
    let err = resolve("rope-type", &c).unwrap_err();
    assert!(err.contains("rope_parameters.rope_type must be a string"), "{err}");
}

#[test]
fn the_hub_form_without_text_config_names_it() {
    let mut c = fixture_config("qwen3_5-hub");
    let text = c.as_object_mut().unwrap().remove("text_config").unwrap();
    // Flattened to the top level, as a hand-edited file might be: still refused, by name.
    for (k, v) in text.as_object().unwrap() {
        if k != "architectures" {
            c[k] = v.clone();
        }
    }
    let err = resolve("no-text-config", &c).unwrap_err();
    assert!(err.contains("text_config") && err.contains("Qwen3_5ForConditionalGeneration"), "{err}");
    let mut c = fixture_config("qwen3_5-hub");
    c["text_config"] = json!([]);
    let err = resolve("text-config-list", &c).unwrap_err();
    assert!(err.contains("text_config"), "{err}");
}

#[test]
fn sizes_that_overflow_name_their_keys() {
    let huge = 1usize << 40;
    let mut c = fixture_config("llama");
    c["vocab_size"] = json!(huge);
    c["hidden_size"] = json!(huge);
    c["num_attention_heads"] = json!(1);
    c["num_key_value_heads"] = json!(1);
    let err = resolve("overflow", &c).unwrap_err();
    assert!(err.contains("vocab_size × hidden_size overflows"), "{err}");
    let mut c = fixture_config("llama");
    c["num_hidden_layers"] = json!(usize::MAX / 2);
    let err = resolve("layers", &c).unwrap_err();
    assert!(err.contains("num_hidden_layers"), "{err}");
    let mut c = fixture_config("qwen3_5");
    c["linear_num_value_heads"] = json!(huge);
    c["linear_value_head_dim"] = json!(huge);
    let err = resolve("linear", &c).unwrap_err();
    assert!(err.contains("linear_num_value_heads × linear_value_head_dim overflows"), "{err}");
}

#[test]
fn linear_names_come_from_the_block_kinds_tables() {
    use lora_formats::hf_config::{TokenMixer, decoder_linear_names, layer_stack_prefixes};
    let c = resolve("names", &fixture_config("qwen3_5")).unwrap();
    let mut kinds = Vec::new();
    for (l, mixer) in c.mixers.iter().enumerate() {
        let names: Vec<&str> = c.layer_linears(l).iter().map(|(n, _, _)| *n).collect();
        let table: Vec<&str> = mixer.linear_names().iter().chain(c.feed_forward.linear_names()).copied().collect();
        assert_eq!(names, table, "layer {l}");
        kinds.push(*mixer);
    }
    assert!(kinds.contains(&TokenMixer::GatedDeltaNet) && kinds.contains(&TokenMixer::GatedAttention));
    // The widths follow the names: in_proj_qkv yields [q | k | v] channels, a gated q_proj twice q.
    let g = c.linear_attention.unwrap();
    let gdn = c.mixers.iter().position(|m| *m == TokenMixer::GatedDeltaNet).unwrap();
    assert_eq!(c.layer_linears(gdn)[0], ("linear_attn.in_proj_qkv", c.hidden_size, g.conv_dim()));
    let attn = c.mixers.iter().position(|m| *m == TokenMixer::GatedAttention).unwrap();
    assert_eq!(c.layer_linears(attn)[0], ("self_attn.q_proj", c.hidden_size, 2 * c.num_attention_heads * c.head_dim));
    let all = decoder_linear_names();
    assert_eq!(all.len(), 12, "{all:?}");
    assert!(all.contains(&"linear_attn.out_proj") && all.contains(&"mlp.down_proj"));
    assert_eq!(layer_stack_prefixes(), ["model.layers.", "model.language_model.layers."]);
}
