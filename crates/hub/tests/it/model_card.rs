//! Model card completion: what is filled, what is kept, what is refused.

use lora_hub::complete_model_card as complete;

#[test]
fn a_complete_card_is_unchanged() {
    let card = "---\nbase_model: a/b\nlibrary_name: peft\npipeline_tag: text-generation\nlicense: mit\ntags:\n- lora\n- peft\n- base_model:adapter:a/b\n---\n\n# Hi\n";
    let c = complete(Some(card), None, None, "me/x").unwrap();
    assert_eq!(c.text, card);
    assert!(c.filled.is_empty());
}

#[test]
fn missing_keys_are_filled_and_others_kept() {
    let card = "---\nlicense: apache-2.0\ndatasets:\n  - tiny\ntags: [custom]\n---\nbody\n";
    let c = complete(Some(card), Some("a/b"), None, "me/x").unwrap();
    assert_eq!(
        c.text,
        "---\nlicense: apache-2.0\ndatasets:\n  - tiny\ntags:\n- custom\n- lora\n- peft\n- base_model:adapter:a/b\nbase_model: a/b\nlibrary_name: peft\npipeline_tag: text-generation\n---\nbody\n"
    );
}

#[test]
fn a_base_model_override_replaces_a_local_path_and_its_tag() {
    let card = "---\nbase_model: ../tests/fixtures/models/llama\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- lora\n- base_model:adapter:../tests/fixtures/models/llama\n- lora-rs\n---\n";
    assert!(complete(Some(card), None, None, "me/x").unwrap_err().contains("--base-model"));
    let c = complete(Some(card), Some("meta-llama/Llama-3.2-1B"), None, "me/x").unwrap();
    assert!(c.text.contains("base_model: meta-llama/Llama-3.2-1B\n"));
    assert!(c.text.contains("- lora-rs\n- peft\n- base_model:adapter:meta-llama/Llama-3.2-1B\n"), "{}", c.text);
    assert!(!c.text.contains("fixtures"));
}

#[test]
fn no_card_gets_a_generated_one_and_wrong_library_is_refused() {
    let c = complete(None, None, Some("a/b"), "me/x").unwrap();
    assert!(c.text.starts_with("---\nbase_model: a/b\n") && c.text.contains("# x\n"), "{}", c.text);
    assert!(
        complete(Some("---\nlibrary_name: transformers\n---\n"), Some("a/b"), None, "me/x")
            .unwrap_err()
            .contains("peft")
    );
    assert!(complete(None, None, Some("/local/path"), "me/x").unwrap_err().contains("--base-model"));
}
