//! Corpus readers. Every line becomes its whitespace-separated words followed by `<eos>` (a
//! blank line is a lone `<eos>`), as the zoo's and Transformer-XL's readers do.

use crate::error::{LmError, Result};
use std::path::{Path, PathBuf};

/// The end-of-line token.
pub const EOS: &str = "<eos>";

/// The three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training text (the vocabulary is built from it).
    Train,
    /// Validation text.
    Valid,
    /// Test text.
    Test,
}

impl Split {
    /// All three, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// The files of a corpus folder.
#[derive(Debug, Clone)]
pub struct Corpus {
    files: [PathBuf; 3],
}

impl Corpus {
    /// Finds the splits in `dir`: WikiText's `wiki.{train,valid,test}.tokens`, PTB's
    /// `ptb.{train,valid,test}.txt`, or plain `{train,valid,test}.txt`. An error names the
    /// folder and the layouts looked for.
    pub fn open(dir: &Path) -> Result<Self> {
        for (prefix, suffix) in [("wiki.", ".tokens"), ("ptb.", ".txt"), ("", ".txt")] {
            let files = Split::ALL.map(|s| dir.join(format!("{prefix}{}{suffix}", s.name())));
            if files.iter().all(|f| f.is_file()) {
                return Ok(Self { files });
            }
        }
        Err(LmError::data(dir, "no corpus here: expected wiki.{train,valid,test}.tokens (WikiText), ptb.{train,valid,test}.txt (PTB) or {train,valid,test}.txt"))
    }

    /// The file of `split`.
    pub fn path(&self, split: Split) -> &Path {
        &self.files[split as usize]
    }

    /// The words of `split`, `<eos>` after every line.
    pub fn words(&self, split: Split) -> Result<Vec<String>> {
        read_words(self.path(split))
    }
}

/// The words of a text file, `<eos>` after every line; a file that is not UTF-8 is an error
/// naming the line.
pub fn read_words(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| LmError::data(path, e))?;
    let mut words = Vec::new();
    if bytes.is_empty() {
        return Ok(words);
    }
    // A final newline ends the last line; it does not start another.
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|e| LmError::data(path, format!("line {}: not UTF-8 ({e})", i + 1)))?;
        words.extend(line.split_whitespace().map(str::to_string));
        words.push(EOS.to_string());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("deq-lm-corpus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_end_in_eos_and_layouts_are_found() {
        let d = dir("ptb");
        for s in ["train", "valid", "test"] {
            std::fs::write(d.join(format!("ptb.{s}.txt")), " the cat  sat\n\n on <unk> mat \n").unwrap();
        }
        let c = Corpus::open(&d).unwrap();
        assert_eq!(c.words(Split::Valid).unwrap(), ["the", "cat", "sat", EOS, EOS, "on", "<unk>", "mat", EOS]);
        // No final newline: the last line still ends in <eos>.
        std::fs::write(d.join("ptb.test.txt"), "a b\nc").unwrap();
        assert_eq!(c.words(Split::Test).unwrap(), ["a", "b", EOS, "c", EOS]);
        std::fs::write(d.join("ptb.train.txt"), b"ok\n\xff\xfe\n").unwrap();
        let e = c.words(Split::Train).unwrap_err().to_string();
        assert!(e.contains("ptb.train.txt") && e.contains("line 2") && e.contains("UTF-8"), "{e}");
        let empty = dir("empty");
        let e = Corpus::open(&empty).unwrap_err().to_string();
        assert!(e.contains("no corpus here") && e.contains("wiki."), "{e}");
        std::fs::write(empty.join("wiki.train.tokens"), "x\n").unwrap();
        assert!(Corpus::open(&empty).is_err(), "one split of three is not a corpus");
        for d in [d, empty] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
