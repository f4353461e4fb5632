//! Parameters of a merge method, resolved per tensor and per model from the configuration.
//!
//! Precedence follows mergekit's `parameter_resolver`: a model's own `parameters`, then the global
//! `[parameters]`, then the method's default; a parameter with no default and no value is an error
//! naming the tensor and the model.

use std::collections::BTreeMap;

use crate::error::{MergeError, Result};
use crate::recipe::{Setting, Value};

/// One parameter a method takes.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Its name in the configuration.
    pub name: &'static str,
    /// Set per model (`weight`, `density`) rather than once (`normalize`, `t`).
    pub per_model: bool,
    /// The default; `None` makes it required.
    pub default: Option<Value>,
}

impl ParamSpec {
    /// A shared parameter.
    pub const fn shared(name: &'static str, default: Option<Value>) -> Self {
        Self { name, per_model: false, default }
    }
    /// A per-model parameter.
    pub const fn model(name: &'static str, default: Option<Value>) -> Self {
        Self { name, per_model: true, default }
    }
}

/// Parameter values for one tensor.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    shared: BTreeMap<&'static str, Value>,
    models: Vec<BTreeMap<&'static str, Value>>,
}

impl Resolved {
    /// Resolves `specs` for tensor `tensor` at layer position `t`. `per_model[i]` are the settings of
    /// model i (with its display name); `global` the `[parameters]` table.
    pub fn resolve(
        specs: &[ParamSpec],
        global: &BTreeMap<String, Setting>,
        per_model: &[(&str, &BTreeMap<String, Setting>)],
        tensor: &str,
        t: f64,
    ) -> Result<Self> {
        let lookup = |spec: &ParamSpec, scopes: &[&BTreeMap<String, Setting>], who: &str| {
            scopes
                .iter()
                .find_map(|s| s.get(spec.name).and_then(|v| v.evaluate(tensor, t)))
                .or(spec.default)
                .ok_or_else(|| {
                    MergeError::Parameter(format!("tensor '{tensor}': no value for parameter '{}'{who}", spec.name))
                })
        };
        let mut shared = BTreeMap::new();
        for s in specs.iter().filter(|s| !s.per_model) {
            shared.insert(s.name, lookup(s, &[global], "")?);
        }
        let mut models = Vec::new();
        for (name, settings) in per_model {
            let mut m = BTreeMap::new();
            for s in specs.iter().filter(|s| s.per_model) {
                m.insert(s.name, lookup(s, &[settings, global], &format!(" of model '{name}'"))?);
            }
            models.push(m);
        }
        Ok(Self { shared, models })
    }

    /// A shared number.
    pub fn number(&self, name: &str) -> f64 {
        as_number(self.shared[name])
    }

    /// A shared flag.
    pub fn flag(&self, name: &str) -> bool {
        as_flag(self.shared[name])
    }

    /// Model `i`'s number.
    pub fn model_number(&self, i: usize, name: &str) -> f64 {
        as_number(self.models[i][name])
    }

    /// Number of models with per-model values.
    pub fn num_models(&self) -> usize {
        self.models.len()
    }
}

fn as_number(v: Value) -> f64 {
    match v {
        Value::Number(x) => x,
        Value::Bool(b) => b as u8 as f64,
    }
}

fn as_flag(v: Value) -> bool {
    match v {
        Value::Bool(b) => b,
        Value::Number(x) => x != 0.0,
    }
}
