//! Support for the workspace tests in `tests/`: the `cargo run` commands that the Markdown
//! documentation shows, extracted the way a reader would copy them into a shell.
//!
//! Commands come from fenced code blocks marked `sh`, `bash`, `shell` or `console` (lines
//! joined at a trailing `\`, comments and `$ ` prompts dropped) and from inline code spans
//! that contain `cargo run`. A line may chain commands with `&&` or `;`, set environment
//! variables in front (`DEQ_DATA_DIR=data cargo run ...`) and loop (`for S in 0 1 2; do ...
//! --seed $S; done`: the body is taken with the first value). An optional flag written in
//! brackets (`[--f16]`) gives two commands, without and with it.

use std::fmt;

/// The Rust code blocks of README.md, compiled and run as doctests of this package (with the
/// workspace's features); `tests/external_crate.rs` runs the same example against crates.io
/// candle from outside the workspace.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// One `cargo run` command of the documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct DocCommand {
    /// `file:line` where it is written.
    pub origin: String,
    /// Environment assignments written in front of it.
    pub env: Vec<(String, String)>,
    /// The words, starting with `cargo`, `run`.
    pub argv: Vec<String>,
}

impl fmt::Display for DocCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        write!(f, "{}", self.argv.join(" "))
    }
}

/// A parsed `cargo run` invocation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CargoRun {
    /// `-p` / `--package`.
    pub package: Option<String>,
    /// `--bin`.
    pub bin: Option<String>,
    /// `--features` / `-F`.
    pub features: Vec<String>,
    /// `--no-default-features`.
    pub no_default_features: bool,
    /// `--release`.
    pub release: bool,
    /// The arguments after `--`.
    pub args: Vec<String>,
}

/// Parses `cargo run [options] [-- args]`; unknown cargo options are errors.
pub fn parse_cargo_run(argv: &[String]) -> Result<CargoRun, String> {
    if argv.len() < 2 || argv[0] != "cargo" || argv[1] != "run" {
        return Err("not a `cargo run` command".into());
    }
    let mut r = CargoRun::default();
    let mut it = argv[2..].iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("`{name}` needs a value"));
        match a.as_str() {
            "--" => {
                r.args = it.cloned().collect();
                break;
            }
            "--release" | "-r" => r.release = true,
            "-q" | "--quiet" => {}
            "-p" | "--package" => r.package = Some(value(a)?),
            "--bin" => r.bin = Some(value(a)?),
            "-F" | "--features" => r.features.push(value(a)?),
            "--no-default-features" => r.no_default_features = true,
            other => return Err(format!("unexpected cargo option `{other}`")),
        }
    }
    Ok(r)
}

/// Splits a shell line into words (single and double quotes, backslash escapes); a word that
/// starts with `#` ends the line.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => break,
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed ' in `{line}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.extend(chars.next()),
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed \" in `{line}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Splits at `&&`, `||` and `;` outside quotes.
fn split_chain(line: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut single, mut double) = (false, false);
    let b: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
        if !single && !double && (c == ';' || ((c == '&' || c == '|') && b.get(i + 1) == Some(&c))) {
            out.push(std::mem::take(&mut cur));
            i += if c == ';' { 1 } else { 2 };
            continue;
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// `for VAR in A B ...; do BODY; done` -> BODY with `$VAR` / `${VAR}` replaced by `A`.
fn unroll_for(line: &str) -> String {
    let t = line.trim();
    let Some(rest) = t.strip_prefix("for ") else { return line.to_string() };
    let Some((head, body)) = rest.split_once("; do ") else { return line.to_string() };
    let Some((var, values)) = head.split_once(" in ") else { return line.to_string() };
    let first = values.split_whitespace().next().unwrap_or("");
    let body = body.trim().trim_end_matches("done").trim().trim_end_matches(';');
    body.replace(&format!("${{{}}}", var.trim()), first).replace(&format!("${}", var.trim()), first)
}

fn is_env_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((k, _)) => !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit()),
        None => false,
    }
}

/// The `cargo run` commands of one shell line.
fn commands_of_line(line: &str, origin: &str, out: &mut Vec<DocCommand>) -> Result<(), String> {
    for segment in split_chain(&unroll_for(line)) {
        let words = shell_words(&segment)?;
        let n_env = words.iter().take_while(|w| is_env_assignment(w)).count();
        let (env, argv) = words.split_at(n_env);
        if argv.len() < 2 || argv[0] != "cargo" || argv[1] != "run" {
            continue;
        }
        let env: Vec<(String, String)> = env.iter().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // Optional bracketed flags: every combination is a command.
        let optional: Vec<usize> = argv.iter().enumerate().filter(|(_, w)| w.starts_with('[') && w.ends_with(']')).map(|(i, _)| i).collect();
        for mask in 0..(1usize << optional.len()) {
            let argv: Vec<String> = argv
                .iter()
                .enumerate()
                .filter_map(|(i, w)| match optional.iter().position(|&o| o == i) {
                    Some(k) if mask & (1 << k) == 0 => None,
                    Some(_) => Some(w[1..w.len() - 1].to_string()),
                    None => Some(w.clone()),
                })
                .collect();
            out.push(DocCommand { origin: origin.to_string(), env: env.clone(), argv });
        }
    }
    Ok(())
}

/// Every `cargo run` command of a Markdown document (see the crate docs), in order.
pub fn doc_commands(markdown: &str, file: &str) -> Result<Vec<DocCommand>, String> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, raw) in markdown.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_string()),
            };
            continue;
        }
        match &fence {
            Some(lang) => {
                if !["sh", "bash", "shell", "console"].contains(&lang.as_str()) {
                    continue;
                }
                let l = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                if pending.is_empty() {
                    if l.starts_with('#') {
                        continue;
                    }
                    pending_line = line_no;
                }
                match l.strip_suffix('\\') {
                    Some(head) => {
                        pending.push_str(head);
                        pending.push(' ');
                    }
                    None => {
                        pending.push_str(l);
                        let full = std::mem::take(&mut pending);
                        commands_of_line(&full, &format!("{file}:{pending_line}"), &mut out)?;
                    }
                }
            }
            None => {
                // Inline code spans.
                let parts: Vec<&str> = raw.split('`').collect();
                for (k, span) in parts.iter().enumerate() {
                    // A bare `cargo run` in prose names the tool, not a command to run.
                    if k % 2 == 1 && span.contains("cargo run") && span.split_whitespace().count() > 2 {
                        commands_of_line(span, &format!("{file}:{line_no}"), &mut out)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_blocks_inline_spans_env_loops_and_optional_flags() {
        let md = "# T\n\n```sh\n# a comment\ncargo run --release -p mdeq -- train\nDEQ_DATA_DIR=data cargo run -p x -- fit \\\n  audio --set 'a.b=c d'\nfor S in 3 4; do cargo run -p ignn -- train --seed $S; done\n```\n\n```rust\ncargo run -p nope\n```\n\nText `cargo run -p deq-inr -- render [--f16]`, `cargo test` and `cargo run`.\n";
        let c = doc_commands(md, "R.md").unwrap();
        let shown: Vec<String> = c.iter().map(|c| format!("{} @ {}", c, c.origin)).collect();
        assert_eq!(
            shown,
            [
                "cargo run --release -p mdeq -- train @ R.md:5",
                "DEQ_DATA_DIR=data cargo run -p x -- fit audio --set a.b=c d @ R.md:6",
                "cargo run -p ignn -- train --seed 3 @ R.md:8",
                "cargo run -p deq-inr -- render @ R.md:15",
                "cargo run -p deq-inr -- render --f16 @ R.md:15",
            ]
        );
        let r = parse_cargo_run(&c[0].argv).unwrap();
        assert_eq!((r.package.as_deref(), r.release, r.args.as_slice()), (Some("mdeq"), true, ["train".to_string()].as_slice()));
        assert!(parse_cargo_run(&shell_words("cargo run --frobnicate -- x").unwrap()).is_err());
        assert_eq!(shell_words("a \"b c\" d\\ e # x").unwrap(), ["a", "b c", "d e"]);
    }
}
