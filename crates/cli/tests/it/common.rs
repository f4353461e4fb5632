//! Helpers shared by the CLI test modules.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root: the package folder `cargo test` runs this binary for (read at run time: CI
/// builds its own checkout into the same target folder, and cargo keeps a test binary whose sources
/// did not change, with the other checkout's path compiled in), else the one it was built in.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// Runs the `lora` binary.
pub fn lora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora")).args(args).output().expect("run lora")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A user error: exit code 2, one "error:" message naming `needle`, no panic.
pub fn assert_user_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("RUST_BACKTRACE"), "{err}");
}

/// A fresh temporary folder; tags are unique across the test modules.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lora-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `lora train` of the repo's tiny recipe with its output in `out` and each of `sets` as a
/// `--set SECTION.KEY=VALUE` override.
pub fn train_tiny(out: &Path, sets: &[&str]) -> Output {
    let recipe = root().join("recipes/tiny.toml");
    let set = format!("output.dir=\"{}\"", out.display());
    let mut args = vec!["train", s(&recipe), "--set", &set];
    for e in sets {
        args.push("--set");
        args.push(e);
    }
    lora(&args)
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A checkpoint's tensors as f32, by name.
pub fn f32_tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let f = lora_formats::safetensors::SafetensorsFile::open(path).unwrap();
    f.tensors()
        .keys()
        .map(|n| {
            let (values, shape) = f.to_f32(n).unwrap();
            (n.clone(), (shape, values))
        })
        .collect()
}

/// Removes a file or folder.
fn remove(p: &Path) {
    let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
}

/// Runs `lora ARGS` (writing `out`) once to time it, then six more times killed with SIGKILL at
/// 5% to 95% of that time. After each kill `out` must not exist; when the command finished first,
/// `complete(out)` must hold, and it is removed. Returns how many kills landed mid-run.
pub fn kill_at_fractions(args: &[&str], out: &Path, complete: &dyn Fn(&Path) -> bool) -> usize {
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_lora"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let t = std::time::Instant::now();
    assert!(start().wait().unwrap().success(), "lora {args:?}");
    // The run's length, shortened whenever a run finishes before its kill: with other tests running
    // beside it, the reference run can take several times as long as the later ones.
    let mut whole = t.elapsed();
    remove(out);
    let mut killed = 0;
    for frac in [0.05, 0.2, 0.4, 0.6, 0.8, 0.95] {
        let mut child = start();
        std::thread::sleep(whole.mul_f64(frac));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(());
        child.wait().unwrap();
        if finished || out.exists() {
            // The command won the race: its output must then be whole.
            assert!(complete(out), "{} exists but is not complete", out.display());
            remove(out);
            whole = whole.mul_f64(frac);
            continue;
        }
        killed += 1;
        assert!(!out.exists(), "a kill at {frac} of the run left {}", out.display());
    }
    killed
}
