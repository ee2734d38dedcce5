//! The word-level vocabulary of a corpus, kept as a `tokenizers` tokenizer (a `WordLevel`
//! model behind a whitespace split) so that `tokenizer.json` loads unchanged in Python's
//! `tokenizers`. Ids follow the zoo: `<eos>` first, then the training words by decreasing
//! count (ties in order of first appearance); `<unk>` is an ordinary word when the corpus has
//! it, and is added otherwise to stand for words outside the training split.

use super::corpus::EOS;
use crate::error::{LmError, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::Tokenizer;

/// The unknown-word token.
pub const UNK: &str = "<unk>";

/// A word-level vocabulary.
pub struct Vocab {
    tokenizer: Tokenizer,
    ids: HashMap<String, u32>,
    words: Vec<String>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vocab({} words)", self.words.len())
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> LmError {
    LmError::data(path, format!("tokenizer: {e}"))
}

impl Vocab {
    /// The vocabulary of the training words.
    pub fn build(train: &[String]) -> Result<Self> {
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, w) in train.iter().enumerate() {
            counts.entry(w.as_str()).or_insert((0, i)).0 += 1;
        }
        let mut order: Vec<(&str, (usize, usize))> = counts.into_iter().filter(|(w, _)| *w != EOS).collect();
        order.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        let mut words = vec![EOS.to_string()];
        words.extend(order.into_iter().map(|(w, _)| w.to_string()));
        if !words.iter().any(|w| w == UNK) {
            words.push(UNK.to_string());
        }
        Self::from_words(words, Path::new("<built>"))
    }

    fn from_words(words: Vec<String>, origin: &Path) -> Result<Self> {
        let ids: HashMap<String, u32> = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        if ids.len() != words.len() {
            return Err(LmError::data(origin, "the vocabulary lists a word twice"));
        }
        let model = WordLevel::builder().vocab(ids.iter().map(|(w, &i)| (w.clone(), i)).collect()).unk_token(UNK.to_string()).build().map_err(|e| tok_err(origin, e))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
        Ok(Self { tokenizer, ids, words })
    }

    /// Writes `tokenizer.json` (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        self.tokenizer.save(&tmp, false).map_err(|e| tok_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| LmError::data(path, e))
    }

    /// Reads a `tokenizer.json` written by [`Vocab::save`] (or any word-level tokenizer with
    /// `<eos>` and `<unk>`); a missing or malformed file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        let mut pairs: Vec<(String, u32)> = tokenizer.get_vocab(false).into_iter().collect();
        pairs.sort_by_key(|p| p.1);
        if pairs.iter().enumerate().any(|(i, p)| p.1 as usize != i) {
            return Err(LmError::data(path, "the vocabulary's ids are not 0..n"));
        }
        let words: Vec<String> = pairs.into_iter().map(|p| p.0).collect();
        for needed in [EOS, UNK] {
            if !words.iter().any(|w| w == needed) {
                return Err(LmError::data(path, format!("the vocabulary has no `{needed}`")));
            }
        }
        Self::from_words(words, path)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether it is empty (never: `<eos>` and `<unk>` are always there).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of each word (`<unk>`'s for words outside the vocabulary).
    pub fn encode(&self, words: &[String]) -> Vec<u32> {
        let unk = self.ids[UNK];
        words.iter().map(|w| self.ids.get(w).copied().unwrap_or(unk)).collect()
    }

    /// The words of `ids` (ids outside the vocabulary are an error).
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<&str>> {
        ids.iter().map(|&i| self.words.get(i as usize).map(String::as_str).ok_or_else(|| LmError::data(Path::new("<ids>"), format!("id {i} outside a vocabulary of {}", self.words.len())))).collect()
    }

    /// The underlying tokenizer (its `encode` gives the same ids as [`Vocab::encode`] on a
    /// line's words).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn ids_follow_counts_and_the_file_round_trips() {
        let train = words("b a <eos> c a b a <eos> <unk> <eos>");
        let v = Vocab::build(&train).unwrap();
        // <eos> first; a (3), b (2), then c and <unk> (1 each) in order of first appearance.
        assert_eq!(v.decode(&[0, 1, 2, 3, 4]).unwrap(), ["<eos>", "a", "b", "c", "<unk>"]);
        assert_eq!(v.encode(&words("a zebra c <eos>")), [1, 4, 3, 0]);
        let path = std::env::temp_dir().join(format!("deq-lm-vocab-{}.json", std::process::id()));
        v.save(&path).unwrap();
        let back = Vocab::load(&path).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.encode(&train), v.encode(&train));
        // The tokenizer itself agrees (what Python's `tokenizers` would read).
        let enc = back.tokenizer().encode("a zebra c", false).unwrap();
        assert_eq!(enc.get_ids(), &[1, 4, 3]);
        // Bad files are named.
        std::fs::write(&path, "{ not json").unwrap();
        let e = Vocab::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("tokenizer"), "{e}");
        let missing = path.with_extension("nope");
        assert!(Vocab::load(&missing).unwrap_err().to_string().contains("nope"));
        let _ = std::fs::remove_file(&path);
        // A tokenizer without <eos> is not a vocabulary of this model.
        v.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap().replace("<eos>", "<eol>");
        std::fs::write(&path, text).unwrap();
        let e = Vocab::load(&path).unwrap_err().to_string();
        assert!(e.contains("has no `<eos>`"), "{e}");
        let _ = std::fs::remove_file(&path);
        assert!(!v.is_empty() && format!("{v:?}") == "Vocab(5 words)");
        // A corpus without <unk> gets one.
        assert_eq!(Vocab::build(&words("x y <eos>")).unwrap().decode(&[3]).unwrap(), ["<unk>"]);
        assert!(v.decode(&[5]).is_err());
    }
}
