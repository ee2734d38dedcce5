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

/// Where a corpus's splits come from.
#[derive(Debug, Clone)]
enum Source {
    /// One file per split.
    Splits([PathBuf; 3]),
    /// A folder of plain-text files (`*.txt`, sorted by name) read as one text, whose
    /// lines are split 90% / 5% / 5% into train, valid and test (contiguous blocks, in order).
    Folder(Vec<PathBuf>),
}

/// The files of a corpus folder.
#[derive(Debug, Clone)]
pub struct Corpus {
    dir: PathBuf,
    source: Source,
}

impl Corpus {
    /// Finds the splits in `dir`: WikiText's `wiki.{train,valid,test}.tokens`, PTB's
    /// `ptb.{train,valid,test}.txt`, plain `{train,valid,test}.txt`, or else any `*.txt`
    /// files (one text split by lines 90/5/5). An error names the folder and the layouts
    /// looked for.
    pub fn open(dir: &Path) -> Result<Self> {
        for (prefix, suffix) in [("wiki.", ".tokens"), ("ptb.", ".txt"), ("", ".txt")] {
            let files = Split::ALL.map(|s| dir.join(format!("{prefix}{}{suffix}", s.name())));
            if files.iter().all(|f| f.is_file()) {
                return Ok(Self { dir: dir.to_path_buf(), source: Source::Splits(files) });
            }
        }
        let mut texts: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt")).collect(),
            Err(e) => return Err(LmError::data(dir, format!("cannot read the corpus folder: {e}"))),
        };
        texts.sort();
        if !texts.is_empty() {
            return Ok(Self { dir: dir.to_path_buf(), source: Source::Folder(texts) });
        }
        Err(LmError::data(dir, "no corpus here: expected wiki.{train,valid,test}.tokens (WikiText), ptb.{train,valid,test}.txt (PTB), {train,valid,test}.txt or any *.txt files"))
    }

    /// The corpus folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files `split` is read from (every file of a folder corpus).
    pub fn files(&self, split: Split) -> Vec<&Path> {
        match &self.source {
            Source::Splits(f) => vec![f[split as usize].as_path()],
            Source::Folder(f) => f.iter().map(PathBuf::as_path).collect(),
        }
    }

    /// The lines of `split`, without line ends.
    pub fn lines(&self, split: Split) -> Result<Vec<String>> {
        match &self.source {
            Source::Splits(f) => read_lines(&f[split as usize]),
            Source::Folder(files) => {
                let mut all = Vec::new();
                for f in files {
                    all.extend(read_lines(f)?);
                }
                if all.len() < 3 {
                    return Err(LmError::data(&self.dir, format!("{} lines of text in the *.txt files: at least 3 are needed for train, valid and test", all.len())));
                }
                let n = all.len();
                let held = (n / 20).max(1);
                let (valid_from, test_from) = (n - 2 * held, n - held);
                let range = match split {
                    Split::Train => 0..valid_from,
                    Split::Valid => valid_from..test_from,
                    Split::Test => test_from..n,
                };
                Ok(all[range].to_vec())
            }
        }
    }

    /// The words of `split`, `<eos>` after every line.
    pub fn words(&self, split: Split) -> Result<Vec<String>> {
        Ok(words_of(&self.lines(split)?))
    }
}

/// The words of `lines`, `<eos>` after each.
pub fn words_of(lines: &[String]) -> Vec<String> {
    let mut words = Vec::new();
    for line in lines {
        words.extend(line.split_whitespace().map(str::to_string));
        words.push(EOS.to_string());
    }
    words
}

/// The lines of a text file (a final line end ends the last line; `\r\n` counts as one);
/// a file that is not UTF-8 is an error naming the line.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| LmError::data(path, e))?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).map(str::to_string).map_err(|e| LmError::data(path, format!("line {}: not UTF-8 ({e})", i + 1)))
        })
        .collect()
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
        // A folder of other text files: one text, lines split 90/5/5 in order.
        let folder = dir("folder");
        std::fs::write(folder.join("b.txt"), (20..40).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        std::fs::write(folder.join("a.txt"), (0..20).map(|i| format!("line {i}\r\n")).collect::<String>()).unwrap();
        std::fs::write(folder.join("notes.md"), "ignored\n").unwrap();
        let c = Corpus::open(&folder).unwrap();
        assert_eq!(c.files(Split::Test).len(), 2);
        let (tr, va, te) = (c.lines(Split::Train).unwrap(), c.lines(Split::Valid).unwrap(), c.lines(Split::Test).unwrap());
        assert_eq!((tr.len(), va.len(), te.len()), (36, 2, 2));
        assert_eq!((tr[0].as_str(), tr[35].as_str(), va[0].as_str(), te[1].as_str()), ("line 0", "line 35", "line 36", "line 39"));
        std::fs::write(folder.join("a.txt"), "").unwrap();
        std::fs::write(folder.join("b.txt"), "one\ntwo\n").unwrap();
        assert!(c.lines(Split::Train).unwrap_err().to_string().contains("at least 3"));
        for d in [d, empty, folder] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
