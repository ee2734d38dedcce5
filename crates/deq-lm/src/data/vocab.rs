//! The vocabulary of a corpus, kept as a `tokenizers` tokenizer so that `tokenizer.json`
//! loads unchanged in Python's `tokenizers`:
//! - word level (the zoo's, for WikiText and PTB): a `WordLevel` model behind a whitespace
//!   split; ids follow the zoo: `<eos>` first, then the training words by decreasing count
//!   (ties in order of first appearance); `<unk>` is an ordinary word when the corpus has it,
//!   and is added otherwise to stand for words outside the training split;
//! - byte-level BPE (for raw text): trained on the training lines with `<eos>` as its special
//!   token; every string has an encoding, so there is no `<unk>`.

use super::corpus::EOS;
use crate::error::{LmError, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

/// The unknown-word token.
pub const UNK: &str = "<unk>";

/// What kind of tokenizer a vocabulary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// Whitespace-separated words.
    Word,
    /// Byte-level BPE.
    Bpe,
}

/// A vocabulary: word level or byte-level BPE.
pub struct Vocab {
    tokenizer: Tokenizer,
    ids: HashMap<String, u32>,
    words: Vec<String>,
    kind: VocabKind,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            VocabKind::Word => write!(f, "Vocab({} words)", self.words.len()),
            VocabKind::Bpe => write!(f, "Vocab({} BPE tokens)", self.words.len()),
        }
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
        Ok(Self { tokenizer, ids, words, kind: VocabKind::Word })
    }

    /// A byte-level BPE of at most `vocab_size` tokens (`<eos>` included, id 0) trained on
    /// `lines` (the training split's lines, without `<eos>`).
    pub fn train_bpe(lines: &[String], vocab_size: usize) -> Result<Self> {
        let origin = Path::new("<bpe training>");
        if vocab_size < 257 {
            return Err(LmError::data(origin, format!("a byte-level BPE needs at least 257 tokens (256 bytes and <eos>), not {vocab_size}")));
        }
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tokenizer = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.train(&mut trainer, lines.iter()).map_err(|e| tok_err(origin, e))?;
        Self::from_tokenizer(tokenizer, origin)
    }

    /// Wraps a loaded or trained tokenizer: word level (needs `<eos>` and `<unk>`) or BPE
    /// (needs `<eos>`); ids must be `0..n`.
    fn from_tokenizer(tokenizer: Tokenizer, path: &Path) -> Result<Self> {
        let kind = match tokenizer.get_model() {
            ModelWrapper::WordLevel(_) => VocabKind::Word,
            ModelWrapper::BPE(_) => VocabKind::Bpe,
            _ => return Err(LmError::data(path, "not a word-level or BPE tokenizer")),
        };
        let mut pairs: Vec<(String, u32)> = tokenizer.get_vocab(true).into_iter().collect();
        pairs.sort_by_key(|p| p.1);
        if pairs.iter().enumerate().any(|(i, p)| p.1 as usize != i) {
            return Err(LmError::data(path, "the vocabulary's ids are not 0..n"));
        }
        let words: Vec<String> = pairs.into_iter().map(|p| p.0).collect();
        let needed: &[&str] = if kind == VocabKind::Word { &[EOS, UNK] } else { &[EOS] };
        for needed in needed {
            if !words.iter().any(|w| w == needed) {
                return Err(LmError::data(path, format!("the vocabulary has no `{needed}`")));
            }
        }
        match kind {
            VocabKind::Word => Self::from_words(words, path),
            VocabKind::Bpe => {
                let ids = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
                Ok(Self { tokenizer, ids, words, kind })
            }
        }
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn json(&self) -> Result<String> {
        self.tokenizer.to_string(false).map_err(|e| tok_err(Path::new("<tokenizer>"), e))
    }

    /// Word level or BPE.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// The id of `<eos>`.
    pub fn eos(&self) -> u32 {
        self.ids[EOS]
    }

    /// The ids of `lines` (text without line ends), `<eos>` after each line: the stream a
    /// corpus split becomes.
    pub fn encode_lines(&self, lines: &[String]) -> Result<Vec<u32>> {
        let eos = self.eos();
        let mut out = Vec::new();
        match self.kind {
            VocabKind::Word => {
                let unk = self.ids[UNK];
                for line in lines {
                    out.extend(line.split_whitespace().map(|w| self.ids.get(w).copied().unwrap_or(unk)));
                    out.push(eos);
                }
            }
            VocabKind::Bpe => {
                for chunk in lines.chunks(4096) {
                    let enc = self.tokenizer.encode_batch(chunk.to_vec(), false).map_err(|e| tok_err(Path::new("<text>"), e))?;
                    for e in enc {
                        out.extend_from_slice(e.get_ids());
                        out.push(eos);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The text of `ids`: `<eos>` becomes a line end; words are joined by spaces (word level)
    /// or bytes decoded (BPE).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        let eos = self.eos();
        let mut lines = Vec::new();
        for (i, part) in ids.split(|&t| t == eos).enumerate() {
            if i > 0 {
                lines.push("\n".to_string());
            }
            let text = match self.kind {
                VocabKind::Word => self.decode(part)?.join(" "),
                VocabKind::Bpe => {
                    self.decode(part)?;
                    self.tokenizer.decode(part, false).map_err(|e| tok_err(Path::new("<ids>"), e))?
                }
            };
            lines.push(text);
        }
        Ok(lines.concat())
    }

    /// Writes `tokenizer.json` (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        self.tokenizer.save(&tmp, false).map_err(|e| tok_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| LmError::data(path, e))
    }

    /// Reads a `tokenizer.json` written by [`Vocab::save`] (or any word-level tokenizer with
    /// `<eos>` and `<unk>`, or byte-level BPE with `<eos>`); a missing or malformed file is an
    /// error naming it.
    ///
    /// The text is checked to be JSON before the tokenizers crate sees it, and a panic inside
    /// that crate (tokenizers 0.23 unwraps some parse errors of its decoders) is caught and
    /// reported as a malformed file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LmError::data(path, e))?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| LmError::data(path, format!("not a tokenizer JSON file: {e}")))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes))
            .map_err(|p| {
                let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                LmError::data(path, format!("malformed tokenizer file (the tokenizers crate failed on it: {what})"))
            })?;
        let tokenizer = parsed.map_err(|e| tok_err(path, e))?;
        Self::from_tokenizer(tokenizer, path)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether it is empty (never: `<eos>` and `<unk>` are always there).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of each word (`<unk>`'s for words outside a word-level vocabulary; for BPE,
    /// words that are not single tokens are an error: use [`Vocab::encode_lines`]).
    pub fn encode(&self, words: &[String]) -> Result<Vec<u32>> {
        match self.ids.get(UNK) {
            Some(&unk) if self.kind == VocabKind::Word => Ok(words.iter().map(|w| self.ids.get(w).copied().unwrap_or(unk)).collect()),
            _ => words.iter().map(|w| self.ids.get(w).copied().ok_or_else(|| LmError::data(Path::new("<words>"), format!("`{w}` is not one token of the BPE vocabulary")))).collect(),
        }
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
        assert_eq!(v.encode(&words("a zebra c <eos>")).unwrap(), [1, 4, 3, 0]);
        assert_eq!(v.encode_lines(&["a zebra".into(), "".into(), " c  b".into()]).unwrap(), [1, 4, 0, 0, 3, 2, 0]);
        assert_eq!(v.decode_text(&[1, 4, 0, 0, 3, 2, 0]).unwrap(), "a <unk>\n\nc b\n");
        assert_eq!(v.kind(), VocabKind::Word);
        let path = std::env::temp_dir().join(format!("deq-lm-vocab-{}.json", std::process::id()));
        v.save(&path).unwrap();
        let back = Vocab::load(&path).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.encode(&train).unwrap(), v.encode(&train).unwrap());
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

    #[test]
    fn a_byte_level_bpe_trains_round_trips_and_reloads() {
        let lines: Vec<String> = (0..200).map(|i| format!("the quick brown fox {} jumps over the lazy dog, naïvely: {}", i % 7, "ab".repeat(i % 5))).collect();
        let v = Vocab::train_bpe(&lines, 300).unwrap();
        assert_eq!((v.kind(), v.eos()), (VocabKind::Bpe, 0));
        assert!(v.len() > 257 && v.len() <= 300, "{}", v.len());
        let text = vec!["the lazy fox".to_string(), String::new(), "unseen wörds €".to_string()];
        let ids = v.encode_lines(&text).unwrap();
        // Merges make common text shorter than its bytes; unseen text still encodes (bytes).
        assert!(ids.len() < "the lazy fox".len() + 2 + "unseen wörds €".len() + 1, "{ids:?}");
        assert_eq!(ids.iter().filter(|&&t| t == 0).count(), 3);
        assert_eq!(v.decode_text(&ids).unwrap(), "the lazy fox\n\nunseen wörds €\n");
        let path = std::env::temp_dir().join(format!("deq-lm-bpe-{}.json", std::process::id()));
        v.save(&path).unwrap();
        let back = Vocab::load(&path).unwrap();
        assert_eq!((back.kind(), back.len()), (VocabKind::Bpe, v.len()));
        assert_eq!(back.encode_lines(&text).unwrap(), ids);
        let _ = std::fs::remove_file(&path);
        assert!(Vocab::train_bpe(&lines, 100).unwrap_err().to_string().contains("at least 257"));
        assert!(v.encode(&["the quick brown".to_string()]).is_err());
    }
}
