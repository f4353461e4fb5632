//! `lora generate`: stream a continuation of a prompt.

use std::io::Write;

use anyhow::Result;
use lora_core::generation::generate::{GenerateOptions, SamplingParams, generate};
use lora_core::io::tokenizer::TextStream;
use lora_train::data::chat_template::ChatTemplate;

/// Generate text from a prompt, streaming tokens as they come (greedy by default).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: crate::model_args::ModelArgs,
    /// The prompt, encoded with the tokenizer's special tokens (BOS); the output repeats it.
    #[arg(long, required_unless_present = "chat", conflicts_with = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template (and --system); prints only the reply.
    #[arg(long)]
    chat: Option<String>,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding, as transformers' generate(do_sample=False).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `lora generate`.
pub fn run(a: Args) -> Result<()> {
    let (model, tok, dir) = a.model.load()?;
    let (prompt, echo) = match (&a.prompt, &a.chat) {
        (Some(p), _) => (tok.encode(p, true)?, p.clone()),
        (None, Some(user)) => {
            let src = tok
                .chat_template
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("{}: the model has no chat template; use --prompt", dir.display()))?;
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let template = ChatTemplate::for_tokenizer(src, &tok, now).map_err(anyhow::Error::msg)?;
            let mut messages = Vec::new();
            if let Some(system) = &a.system {
                messages.push(serde_json::json!({"role": "system", "content": system}));
            }
            messages.push(serde_json::json!({"role": "user", "content": user}));
            let rendered = template.render(&messages, true).map_err(anyhow::Error::msg)?;
            // The template writes any BOS itself, as apply_chat_template(tokenize=True) does.
            (tok.encode(&rendered, false)?, String::new())
        }
        (None, None) => unreachable!("clap requires one of --prompt and --chat"),
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        stop_ids: tok.eos_token_ids.clone(),
        use_cache: true,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{echo}")?;
    out.flush()?;
    let mut stream = TextStream::default();
    generate(&model, &prompt, &opts, |id| {
        if let Some(piece) = stream.push(&tok, id)? {
            // A closed pipe (`| head`) ends generation quietly.
            if write!(out, "{piece}").and_then(|_| out.flush()).is_err() {
                return Err(lora_core::CoreError::Invalid("output closed".into()));
            }
        }
        Ok(())
    })?;
    writeln!(out, "{}", stream.finish(&tok)?)?;
    Ok(())
}
