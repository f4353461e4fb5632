//! Bad recipes: each error names file, line and column, the key, and suggests the fix.

use lora_train::recipe::Recipe;

use crate::common::*;

const GOOD: &str = r#"
[model]
base = "MODEL"

[data]
train = "DATA"

[train]
max_steps = 2
lr = 1e-3

[output]
dir = "OUT"
"#;

fn write(tag: &str, text: &str) -> std::path::PathBuf {
    let d = temp_dir(tag);
    let text = text
        .replace("MODEL", &fixtures().join("models/llama").display().to_string())
        .replace("DATA", &repo().join("datasets/tiny-text.jsonl").display().to_string())
        .replace("OUT", &d.join("out").display().to_string());
    let p = d.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn err(tag: &str, text: &str, set: &[&str]) -> String {
    let p = write(tag, text);
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    match Recipe::load(&p, &set) {
        Ok(_) => panic!("recipe {tag} should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_recipe_loads_with_defaults() {
    let r = Recipe::load(&write("good", GOOD), &[]).unwrap();
    assert_eq!(r.lora.r, 8);
    assert_eq!(r.train.lr, 1e-3);
    assert!(r.output.dir.is_absolute());
    let r =
        Recipe::load(&write("good2", GOOD), &["train.lr=2e-4".into(), "lora.targets=\"all-linear\"".into()]).unwrap();
    assert_eq!(r.train.lr, 2e-4);
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let e = err("unknown", &GOOD.replace("lr = 1e-3", "learning_rate = 1e-3"), &[]);
    assert!(e.contains("recipe.toml:10:1: unknown key 'learning_rate' in [train]; did you mean 'lr'?"), "{e}");
    let e = err("typo", &GOOD.replace("max_steps", "max_step"), &[]);
    assert!(e.contains(":9:1: unknown key 'max_step' in [train]; did you mean 'max_steps'?"), "{e}");
    let e = err("set", GOOD, &["train.learning_rate=1"]);
    assert!(
        e.contains("--set train.learning_rate=1: unknown key 'learning_rate' in [train]; did you mean 'train.lr'?"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_impossible_values_name_the_key() {
    let e = err("type", &GOOD.replace("max_steps = 2", "max_steps = \"two\""), &[]);
    assert!(e.contains("recipe.toml:9:") && e.contains(": train.max_steps: invalid type"), "{e}");
    let e = err("negative", &GOOD.replace("max_steps = 2", "max_steps = -5"), &[]);
    assert!(e.contains("recipe.toml:9:") && e.contains("train.max_steps: invalid value: integer `-5`"), "{e}");
    let e = err("lr", &GOOD.replace("lr = 1e-3", "lr = 0.0"), &[]);
    assert!(e.contains("recipe.toml:10:1: train.lr must be positive, got 0"), "{e}");
    let e = err("batch", GOOD, &["train.batch_size=0"]);
    assert!(e.contains("train.batch_size must be at least 1"), "{e}");
    let e = err("base", &GOOD.replace("base = \"MODEL\"", "base = \"/nonexistent/model\""), &[]);
    assert!(e.contains("recipe.toml:3:1: model.base '/nonexistent/model' is not a model folder"), "{e}");
    let e = err("schedule", GOOD, &["train.schedule=\"exponential\""]);
    assert!(e.contains("train.schedule must be constant, linear or cosine"), "{e}");
    let e = err("missing", &GOOD.replace("[output]\ndir = \"OUT\"", ""), &[]);
    assert!(e.contains("missing field `output`"), "{e}");
}

#[test]
fn target_that_matches_nothing_lists_modules() {
    let p = write("targets", GOOD);
    let r = Recipe::load(&p, &["lora.targets=[\"qkv_proj\"]".into()]).unwrap();
    let e = match lora_train::trainer::prepare(&r) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("match no module") && e.contains("q_proj") && e.contains("down_proj"), "{e}");
}

#[test]
fn empty_data_is_reported_before_the_weights_are_read() {
    // Weights that would fail to load, and an empty dataset: the data error comes first.
    let d = temp_dir("empty-data");
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(fixtures().join("models/llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    std::fs::write(model.join("model.safetensors"), b"not safetensors").unwrap();
    let data = d.join("empty.jsonl");
    std::fs::write(&data, "\n").unwrap();
    let text = GOOD.replace("MODEL", &model.display().to_string()).replace("DATA", &data.display().to_string());
    let p = d.join("recipe.toml");
    std::fs::write(&p, text.replace("OUT", &d.join("out").display().to_string())).unwrap();
    let r = Recipe::load(&p, &[]).unwrap();
    let e = match lora_train::trainer::prepare(&r) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("empty.jsonl: no usable examples"), "{e}");
}

#[test]
fn turn_settings_are_checked_by_name() {
    for (set, want) in [
        ("data.turns=\"every\"", "data.turns"),
        ("data.untrained_turns=\"ignore\"", "data.untrained_turns"),
        ("data.reasoning_field=\"content\"", "data.reasoning_field"),
    ] {
        let e = err("turns", GOOD, &[set]);
        assert!(e.contains(want), "{set}: {e}");
    }
    // Template kwargs are the template's own: any name, any value.
    let r = Recipe::load(&write("kwargs", GOOD), &["data.template_kwargs={ enable_thinking = false, x = [1] }".into()])
        .unwrap();
    assert_eq!(r.data.template_kwargs.unwrap()["enable_thinking"], false);
}
