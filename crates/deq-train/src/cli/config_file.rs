//! Run configurations as TOML files with `section.key=value` overrides.
//!
//! Every trainer reads its configuration the same way: the file (or a built-in default) is
//! parsed into a TOML table, each `--set section.key=value` replaces one value (written in TOML
//! syntax; a bare word is a string), `--seed` is the `seed` key of the trainer's seed section,
//! and the result is deserialised into the trainer's typed configuration, whose sections deny
//! unknown keys. An unknown section or key therefore fails with an error that names it, and
//! keys that the file leaves at their defaults can be set all the same.

use crate::error::{Result, TrainError};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A parsed `--set` override: `section.key` (dotted, any depth) and its TOML value.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key, e.g. `train.lr` or `deq.f_solver`.
    pub key: String,
    /// The value.
    pub value: toml::Value,
}

impl Override {
    /// Parses `section.key=value`. The value is read as a TOML value (`3e-3`, `true`, `[5, 10]`,
    /// `"text"`); anything that is not one is taken as a bare string (`anderson`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |message: &str| TrainError::Config { key: s.to_string(), message: message.to_string() };
        let (key, value) = s.split_once('=').ok_or_else(|| bad("expected section.key=value"))?;
        let key = key.trim();
        if !key.contains('.') || key.split('.').any(|p| p.is_empty()) {
            return Err(bad("expected section.key=value"));
        }
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        Ok(Self { key: key.to_string(), value: parsed })
    }

    /// Writes the value into `doc`, creating missing tables on the way.
    pub fn apply(&self, doc: &mut toml::Table) -> Result<()> {
        let parts: Vec<&str> = self.key.split('.').collect();
        let mut table = doc;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| TrainError::Config {
                key: self.key.clone(),
                message: format!("`{}` is a value, not a table", parts[..=i].join(".")),
            })?;
        }
        table.insert(parts[parts.len() - 1].to_string(), self.value.clone());
        Ok(())
    }
}

/// Parses TOML `text` (read from `origin`, a file name used in errors), applies `overrides`
/// in order, and deserialises the result. Errors name the origin and the offending key.
pub fn parse_with_overrides<T: DeserializeOwned>(text: &str, origin: &str, overrides: &[Override]) -> Result<T> {
    let fmt = |message: String| TrainError::Format { path: origin.into(), message };
    if overrides.is_empty() {
        // Straight from the text: parse errors keep their line numbers.
        return toml::from_str(text).map_err(|e| fmt(e.to_string()));
    }
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| fmt(e.to_string()))?;
    for o in overrides {
        o.apply(&mut doc)?;
    }
    let keys: Vec<&str> = overrides.iter().map(|o| o.key.as_str()).collect();
    toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| fmt(format!("after the overrides {keys:?}: {e}")))
}

/// Reads the TOML file `path` and calls [`parse_with_overrides`].
pub fn load_with_overrides<T: DeserializeOwned>(path: &Path, overrides: &[Override]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    parse_with_overrides(&text, &path.display().to_string(), overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        train: Train,
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Train {
        lr: f64,
        name: String,
        steps: Vec<usize>,
    }

    #[test]
    fn overrides_parse_values_and_reject_unknown_keys() {
        let o = |s: &str| Override::parse(s).unwrap();
        let c: Cfg = parse_with_overrides("[train]\nlr = 0.1\n", "a.toml", &[o("train.lr=3e-3"), o("train.name=anderson"), o("train.steps=[5, 10]")]).unwrap();
        assert_eq!(c.train, Train { lr: 3e-3, name: "anderson".into(), steps: vec![5, 10] });
        // A key the file does not contain can be set.
        let c: Cfg = parse_with_overrides("", "a.toml", &[o("train.lr=2")]).unwrap();
        assert_eq!(c.train.lr, 2.0);
        let e = parse_with_overrides::<Cfg>("", "a.toml", &[o("train.lrr=2")]).unwrap_err().to_string();
        assert!(e.contains("a.toml") && e.contains("lrr"), "{e}");
        let e = parse_with_overrides::<Cfg>("", "a.toml", &[o("trian.lr=2")]).unwrap_err().to_string();
        assert!(e.contains("trian"), "{e}");
        let e = parse_with_overrides::<Cfg>("[train]\nlr = 1\n", "a.toml", &[o("train.lr.x=2")]).unwrap_err().to_string();
        assert!(e.contains("train.lr") && e.contains("not a table"), "{e}");
        for bad in ["lr=3", "train.lr", ".lr=1", "train.=1"] {
            assert!(Override::parse(bad).is_err(), "{bad}");
        }
    }
}
