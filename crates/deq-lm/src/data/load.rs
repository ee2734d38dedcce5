//! A corpus made ready for training: its vocabulary (built from the training split, or read
//! from a `tokenizer.json`) and the three token streams, both cached next to the data.

use super::cache::{cache_dir, fingerprint, split_ids};
use super::corpus::{words_of, Corpus, Split};
use super::vocab::{Vocab, VocabKind};
use crate::error::Result;
use std::path::Path;

/// How a corpus is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextOptions {
    /// Word level (WikiText, PTB) or byte-level BPE (raw text).
    pub kind: VocabKind,
    /// BPE vocabulary size (`<eos>` and the 256 bytes included).
    pub bpe_vocab: usize,
    /// Cache the vocabulary and the streams in `<corpus>/deq-lm-cache/`.
    pub cache: bool,
}

/// The vocabulary of `corpus` built from its training split (from the cache when current).
pub fn build_vocab(corpus: &Corpus, opts: &TextOptions) -> Result<Vocab> {
    let tag = match opts.kind {
        VocabKind::Word => "word".to_string(),
        VocabKind::Bpe => format!("bpe{}", opts.bpe_vocab),
    };
    let cached = match opts.cache.then(|| cache_dir(corpus)).flatten() {
        Some(d) => Some(d.join(format!("tokenizer-{tag}-{:016x}.json", fingerprint(&corpus.files(Split::Train), &tag, b"")?))),
        None => None,
    };
    if let Some(p) = cached.as_ref().filter(|p| p.is_file()) {
        match Vocab::load(p) {
            Ok(v) if v.kind() == opts.kind => return Ok(v),
            Ok(_) => tracing::warn!("{}: another kind of tokenizer; building again", p.display()),
            Err(e) => tracing::warn!("{e}; building again"),
        }
    }
    let lines = corpus.lines(Split::Train)?;
    let vocab = match opts.kind {
        VocabKind::Word => Vocab::build(&words_of(&lines))?,
        VocabKind::Bpe => Vocab::train_bpe(&lines, opts.bpe_vocab)?,
    };
    if let Some(p) = cached {
        if let Err(e) = vocab.save(&p) {
            tracing::warn!("tokenizer not cached: {e}");
        }
    }
    Ok(vocab)
}

/// The train, valid and test streams of `corpus` under `vocab`.
pub fn load_ids(corpus: &Corpus, vocab: &Vocab, cache: bool) -> Result<[Vec<u32>; 3]> {
    let mut out: [Vec<u32>; 3] = Default::default();
    for (slot, split) in out.iter_mut().zip(Split::ALL) {
        let (ids, hit) = split_ids(corpus, split, vocab, cache)?;
        tracing::debug!(split = ?split, tokens = ids.len(), cached = hit, "token stream");
        *slot = ids;
    }
    Ok(out)
}

/// The vocabulary saved in `file` if given, else built from `corpus`.
pub fn vocab_for(corpus: &Corpus, file: Option<&Path>, opts: &TextOptions) -> Result<Vocab> {
    match file {
        Some(f) => Vocab::load(f),
        None => build_vocab(corpus, opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_load_reads_the_cache_and_edits_invalidate_it() {
        let d = std::env::temp_dir().join(format!("deq-lm-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (s, text) in [("train", "a b c\nb c\n"), ("valid", "c a\n"), ("test", "zz b\n")] {
            std::fs::write(d.join(format!("ptb.{s}.txt")), text).unwrap();
        }
        let corpus = Corpus::open(&d).unwrap();
        let opts = TextOptions { kind: VocabKind::Word, bpe_vocab: 0, cache: true };
        let v = build_vocab(&corpus, &opts).unwrap();
        let ids = load_ids(&corpus, &v, true).unwrap();
        assert_eq!(ids[2], v.encode_lines(&["zz b".into()]).unwrap());
        let cache = d.join("deq-lm-cache");
        let files = std::fs::read_dir(&cache).unwrap().count();
        assert_eq!(files, 4, "a tokenizer and three streams");
        // The second time every split comes from the cache, equal.
        for split in Split::ALL {
            let (again, hit) = split_ids(&corpus, split, &v, true).unwrap();
            assert!(hit);
            assert_eq!(again, ids[split as usize]);
        }
        assert_eq!(build_vocab(&corpus, &opts).unwrap().json().unwrap(), v.json().unwrap());
        // A damaged cache is rebuilt, not trusted.
        let valid = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("valid")).unwrap();
        std::fs::write(&valid, b"DEQLMTOK").unwrap();
        let (again, hit) = split_ids(&corpus, Split::Valid, &v, true).unwrap();
        assert!(!hit && again == ids[1]);
        // An edited split is tokenized again.
        std::fs::write(d.join("ptb.test.txt"), "a a a a\n").unwrap();
        let (t, hit) = split_ids(&corpus, Split::Test, &v, true).unwrap();
        assert!(!hit && t.len() == 5);
        let _ = std::fs::remove_dir_all(&d);
    }
}
