//! Evaluates a CRD's CEL validation rule against a value, with the pieces
//! of the Kubernetes CEL environment the pinned CRDs use: the standard
//! library and macros (has, all, exists, filter), the strings extension
//! (`split`), and Kubernetes' regex library (`find`).

use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Value as Cel};
use serde_json::Value;

/// Rules that read `oldSelf` run only on updates (transition rules).
pub fn is_transition_rule(rule: &str) -> bool {
    rule.contains("oldSelf")
}

pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, Cel> = m
                .iter()
                .map(|(k, v)| (Key::from(k.clone()), to_cel(v)))
                .collect();
            Cel::Map(map.into())
        }
    }
}

fn env() -> Arc<Env> {
    thread_local! {
        static ENV: Arc<Env> = {
            let mut env = Env::stdlib();
            env.add_extension(cel::extensions::strings)
                .expect("strings extension");
            Arc::new(env)
        };
    }
    ENV.with(Arc::clone)
}

/// Kubernetes' `<string>.find(<regex>)`: the first match, or "".
fn find(This(s): This<Arc<String>>, re: Arc<String>) -> Result<Arc<String>, ExecutionError> {
    let re = regex::Regex::new(&re)
        .map_err(|e| ExecutionError::function_error("find", e.to_string()))?;
    Ok(Arc::new(
        re.find(&s)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
    ))
}

/// Ok when the rule evaluates to true for `self_value`.
pub fn evaluate(rule: &str, self_value: &Value) -> Result<(), String> {
    let env = env();
    let program = env
        .compile(rule)
        .map_err(|e| format!("does not compile: {e:?}"))?;
    let mut ctx = Context::with_env(env);
    ctx.add_function("find", find)
        .map_err(|e| format!("cannot register find: {e:?}"))?;
    ctx.add_variable_from_value("self", to_cel(self_value));
    match program.execute(&ctx) {
        Ok(Cel::Bool(true)) => Ok(()),
        Ok(other) => Err(format!("evaluated to {other:?}")),
        Err(e) => Err(format!("error: {e:?}")),
    }
}
